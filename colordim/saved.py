"""Saved runs: a Recording as one .npz of arrays and a JSON header, written atomically, read without pickle."""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .recording import Recording

__all__ = ["save", "load", "FORMAT_VERSION"]

FORMAT = "colordim-recording"
FORMAT_VERSION = 1  # of the .npz a Recording is saved as; load() refuses newer ones


def save(recording: Recording, path) -> Path:
    "Write one .npz (arrays and a JSON header); atomically, so an interruption leaves the old file."
    from . import __version__
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"fit": recording.fit, "epoch": recording.epoch, "phase": recording.phase.astype("<U5"),
              "iteration": recording.iteration, "batches": recording.batches}
    for index, name in enumerate(recording.layer_names):
        for table in ("counts", "numel", "moments", "channels", "edges"):
            arrays[f"{table}_{index}"] = getattr(recording, table)[name]
    header = {"format": FORMAT, "version": FORMAT_VERSION, "library": __version__,
              "near_zero_threshold": recording.near_zero_threshold,
              "layers": [{"name": name, "shape": list(recording.shapes[name]),
                          "range": list(recording.range(name)),
                          "linthresh": recording.linthresh[name], "skipped": recording.skipped.get(name)}
                         for name in recording.layer_names]}
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez_compressed(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)  # atomic: readers see the old file or the new one, never half
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load(path) -> Recording:
    "Read a Recording saved by `save` (never unpickles: opening a file cannot run code)."
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(bytes(data["header"]).decode())
            if header.get("format") != FORMAT:
                raise ValueError(f"it is not a colordim recording (format {header.get('format')!r})")
            if header.get("version", 0) > FORMAT_VERSION:
                raise ValueError(f"it was written by a newer colordim ({header.get('library')}, format "
                                 f"{header['version']}); this one reads format {FORMAT_VERSION}: upgrade colordim")
            layers = [layer["name"] for layer in header["layers"]]
            table = lambda kind: {name: data[f"{kind}_{index}"] for index, name in enumerate(layers)}
            return Recording(
                counts=table("counts"), numel=table("numel"), edges=table("edges"),
                shapes={layer["name"]: tuple(layer["shape"]) for layer in header["layers"]},
                fit=data["fit"], epoch=data["epoch"], phase=data["phase"], iteration=data["iteration"],
                moments=table("moments"), channels=table("channels"),
                near_zero_threshold=header["near_zero_threshold"], batches=data["batches"],
                linthresh={layer["name"]: layer["linthresh"] for layer in header["layers"]},
                skipped={layer["name"]: layer["skipped"] for layer in header["layers"] if layer["skipped"]})
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable colordim recording: {error}") from None
