"""Thin adapters from a trainer's events to the engine; they never compute or draw histograms themselves.

- `fastai.py`: the `ActivationHistogram` callback and `learn.color_dim` & co.;
- `loop.py`: `colordim.record`, around a plain PyTorch loop;
- `tensorboard.py`, `wandb_log.py`: where recordings are also written.
"""
