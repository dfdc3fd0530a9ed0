"""A recording turned into findings and a verdict in words; takes a `Recording` only (no torch, no engine).

- `diagnose.py`: the per-layer health table (dead units, near-zero share, mean and spread), the
  findings in plain words, the `Report` and its text and HTML;
- `scale_checks.py`: what large-model research measures of a layer's scale (massive activations,
  heavy tails, growth with depth), read from the histograms.
"""
