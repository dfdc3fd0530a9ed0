"""Saved runs: a Recording as one .npz of arrays and a JSON header, written atomically, read without pickle."""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .recording import KIND_FIELDS, Recording

__all__ = ["save", "load", "write_atomically", "FORMAT_VERSION"]

FORMAT = "colordim-recording"
FORMAT_VERSION = 1  # of the .npz a Recording is saved as; load() refuses newer ones


def save(recording: Recording, path) -> Path:
    "Write one .npz (arrays and a JSON header); atomically, so an interruption leaves the old file."
    from .. import __version__
    arrays, header = _arrays(recording, "")
    for field in KIND_FIELDS.values():  # each other kind under its own prefix: older versions read what they know
        if getattr(recording, field) is not None:
            kind_arrays, header[field] = _arrays(getattr(recording, field), f"{field}.")
            arrays.update(kind_arrays)
    header.update(format=FORMAT, version=FORMAT_VERSION, library=__version__)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    return write_atomically(path, lambda file: np.savez_compressed(file, **arrays))


def write_atomically(path, write) -> Path:
    """Call `write(binary file)` on a temporary file beside `path`, then rename it to `path` (readers see
    the old file or the new one, never half of one). The file gets the usual permissions (umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it private (0600); a saved run is to share
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _arrays(recording: Recording, prefix: str) -> tuple[dict, dict]:
    "The arrays of one recording (names start with `prefix`) and its part of the header."
    arrays = {f"{prefix}{key}": getattr(recording, key) for key in ("fit", "epoch", "iteration", "batches")}
    arrays[f"{prefix}phase"] = recording.phase.astype("<U5")
    for index, name in enumerate(recording.layer_names):
        for table in ("counts", "numel", "moments", "channels", "edges"):
            arrays[f"{prefix}{table}_{index}"] = getattr(recording, table)[name]
    header = {"near_zero_threshold": recording.near_zero_threshold,
              "layers": [{"name": name, "shape": list(recording.shapes[name]),
                          "range": list(recording.range(name)), "linthresh": recording.linthresh[name],
                          "skipped": recording.skipped.get(name), "type": recording.types.get(name, ""),
                          "auto": recording.auto.get(name, False), "units": recording.units.get(name, "channels")}
                         for name in recording.layer_names]}
    return arrays, header


def load(path) -> Recording:
    "Read a Recording saved by `save` (never unpickles: opening a file cannot run code)."
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):  # what np.load would take for a pickle, and refuse as one
        raise ValueError(f"{path}: not a colordim recording (not a complete .npz archive; colordim saves runs "
                         "with `recording.save(path)` or `save_to=`)")
    try:
        with np.load(path, allow_pickle=False) as data:
            header = _header(path, data)
            if header.get("version", 0) > FORMAT_VERSION:
                raise ValueError(f"it was written by a newer colordim ({header.get('library')}, format "
                                 f"{header['version']}); this one reads format {FORMAT_VERSION}: upgrade colordim")
            recording = _read(data, header, "")
            for field in KIND_FIELDS.values():
                if field in header:
                    setattr(recording, field, _read(data, header[field], f"{field}."))
            return recording
    except _NotOurs as error:
        raise ValueError(f"{path}: not a colordim recording ({error})") from None
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: a damaged colordim recording: {error}") from None


class _NotOurs(Exception):
    "An .npz that another program wrote."


def _header(path, data) -> dict:
    "The JSON header of a colordim .npz, or _NotOurs saying what the file holds instead."
    if "header" not in data.files:
        arrays = ", ".join(data.files[:8]) + (", ..." if len(data.files) > 8 else "")
        raise _NotOurs(f"an .npz without colordim's header; its arrays: {arrays or 'none'}")
    try:
        header = json.loads(bytes(data["header"]).decode())
    except (ValueError, UnicodeDecodeError):
        raise _NotOurs("its 'header' array is not colordim's JSON header") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else None
        raise _NotOurs(f"its header's format is {found!r}, not {FORMAT!r}")
    return header


def _read(data, header: dict, prefix: str) -> Recording:
    layers = header["layers"]
    table = lambda kind: {layer["name"]: data[f"{prefix}{kind}_{index}"] for index, layer in enumerate(layers)}
    column = lambda key: data[f"{prefix}{key}"]
    return Recording(
        counts=table("counts"), numel=table("numel"), edges=table("edges"),
        shapes={layer["name"]: tuple(layer["shape"]) for layer in layers},
        fit=column("fit"), epoch=column("epoch"), phase=column("phase"), iteration=column("iteration"),
        moments=table("moments"), channels=table("channels"), batches=column("batches"),
        near_zero_threshold=header["near_zero_threshold"],
        linthresh={layer["name"]: layer["linthresh"] for layer in layers},
        skipped={layer["name"]: layer["skipped"] for layer in layers if layer["skipped"]},
        types={layer["name"]: layer.get("type", "") for layer in layers},  # runs saved before types: ""
        auto={layer["name"]: layer.get("auto", False) for layer in layers},
        units={layer["name"]: layer.get("units", "channels") for layer in layers})  # runs saved before: dim 1
