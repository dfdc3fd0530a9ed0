"""Thin adapters from a trainer's events to the engine; they never compute or draw histograms themselves.

- `fastai.py`: the `ActivationHistogram` callback and `learn.color_dim` & co.;
- `loop.py`: `colordim.record`, around a plain PyTorch loop;
- `tensorboard.py`, `wandb_log.py`: where recordings are also written.

Where they sit on one output's path: they open and end the columns around each batch
(`HistogramRecorder.begin_column` / `end_column`) and read the `Recording` the engine's moves build; the
path itself (hook, routing, plan, buffer row, move) is `colordim.engine`'s, whose docstring names the
files in order.
"""
