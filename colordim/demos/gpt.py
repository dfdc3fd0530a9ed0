"""The transformer demo: a small character-level GPT trained on the Python standard library's own
sources (text every Python ships), once with a stable learning rate and once with one that spikes.

A plain PyTorch loop around `colordim.record`, no fastai: the other way colordim is used. Each run
records every block's output (the residual stream), each block's attention and MLP, and the head.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["TinyGPT", "stdlib_text", "train_gpt", "run_gpt_demo", "LAYERS"]

SOURCES = ("textwrap.py", "argparse.py", "inspect.py", "typing.py", "dataclasses.py", "functools.py",
           "pathlib.py", "enum.py", "collections/__init__.py", "json/decoder.py")
LAYERS = ["blocks.?", "blocks.?.attn", "blocks.?.mlp", "head"]  # what each run records: outputs of the blocks
# (the residual stream), of their attention and MLP branches, and the logits


def stdlib_text(limit: int = 400_000) -> str:
    "Up to `limit` characters of the standard library's sources that every Python has (ASCII only)."
    folder, parts = Path(os.__file__).parent, []
    for name in SOURCES:
        path = folder / name
        if path.exists():
            parts.append(path.read_text(encoding="utf-8", errors="replace"))
    text = "".join(parts).encode("ascii", "replace").decode("ascii")
    if len(text) < 10_000:
        raise RuntimeError(f"the standard library's sources were not found next to {os.__file__}")
    return text[:limit]


class Attention(nn.Module):
    "Causal multi-head self-attention."
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads, self.qkv, self.out = heads, nn.Linear(width, 3 * width), nn.Linear(width, width)

    def forward(self, x):
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        mixed = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(mixed.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    "A pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)); its output is the residual stream."
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(width), Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyGPT(nn.Module):
    "A GPT of `depth` blocks over `vocab` characters, `context` at a time."
    def __init__(self, vocab: int, width: int = 64, depth: int = 4, heads: int = 4, context: int = 64):
        super().__init__()
        self.embed, self.position = nn.Embedding(vocab, width), nn.Parameter(torch.zeros(context, width))
        self.blocks = nn.Sequential(*[Block(width, heads) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocab)

    def forward(self, tokens):
        x = self.embed(tokens) + self.position[:tokens.shape[1]]
        return self.head(self.norm(self.blocks(x)))


def learning_rates(steps: int, peak: float, spike: float = None):
    """Per step: a warm-up to `peak` over the first tenth, then a cosine decay; with `spike`, the steps
    from 40% to 50% of the run jump to it (a schedule gone wrong)."""
    rates = []
    for step in range(steps):
        warm = min(1.0, (step + 1) / max(1, steps // 10))
        rate = peak * warm * 0.5 * (1 + math.cos(math.pi * step / steps))
        if spike is not None and 0.4 * steps <= step < 0.5 * steps:
            rate = spike
        rates.append(rate)
    return rates


def train_gpt(spike: float = None, steps: int = 200, lr: float = 3e-3, batch: int = 32, context: int = 64,
              seed: int = 0, **options):
    "Train `TinyGPT` on `stdlib_text` under `colordim.record`; returns (model, recording, losses)."
    import colordim
    torch.manual_seed(seed)
    text = stdlib_text()
    chars = sorted(set(text))
    lookup = torch.zeros(128, dtype=torch.int64)  # ASCII code -> the character's index
    lookup[torch.tensor([ord(char) for char in chars])] = torch.arange(len(chars))
    data = lookup[torch.tensor(bytearray(text.encode("ascii")), dtype=torch.int64)]
    model = TinyGPT(len(chars), context=context)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    options = {"range": "auto", "scale": "symlog", **options}  # symlog: bins that resolve small |x| too
    with colordim.record(model, layers=LAYERS, **options) as recorder:
        for step, rate in enumerate(learning_rates(steps, lr, spike)):
            starts = torch.randint(len(data) - context - 1, (batch,), generator=generator)
            window = torch.stack([data[start:start + context + 1] for start in starts.tolist()])
            logits = model(window[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1))
            for group in optimizer.param_groups:
                group["lr"] = rate
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return model, recorder.recording, losses


def run_gpt_demo(out="out", steps: int = 200, lr: float = 3e-3, spike: float = 0.3) -> list[Path]:
    "Train the GPT with a stable and a spiking learning rate; write each run's pictures and report."
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ..health.checks import diagnose
    from ..views.plot import color_dims
    out, started, written = Path(out), time.perf_counter(), []
    for label, peak in (("stable", None), ("spiking", spike)):
        what = f"lr {lr}" + (f", {peak} from step {int(0.4 * steps)} to {int(0.5 * steps)}" if peak else "")
        print(f"Training the GPT ({label}): {steps} steps, {what}")
        _, recording, losses = train_gpt(spike=peak, steps=steps, lr=lr)
        print(f"  loss {losses[0]:.2f} -> {min(losses):.2f} (lowest) -> {losses[-1]:.2f} (last)")
        print(f"\nHealth report, {label} run:")
        print(diagnose(recording), "\n")
        folder = out / f"gpt_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        written.append(folder / "report.html")
        recording.to_html(written[-1], title=f"colordim demo: tiny GPT, {label} learning rate ({what})")
        written.append(folder / "grid.png")
        color_dims(recording, cols=4, fname=written[-1])
        written.append(folder / "recording.npz")
        recording.save(written[-1])
        plt.close("all")
    for path in written:
        print(f"  wrote {path}")
    print(f"Done in {time.perf_counter() - started:.0f} s. Open {written[-3]} first.")
    return written
