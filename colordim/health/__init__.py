"""A recording turned into findings and a verdict in words; takes a `Recording` only (no torch, no engine).

- `checks.py`: `diagnose`: the per-layer health figures (dead units, near-zero share, clipping, NaN,
  jitter) and the findings in plain words, with their thresholds (`colordim.data.options.THRESHOLDS`);
- `scale_checks.py`: what large-model research measures of a layer's scale (massive activations,
  heavy tails, growth with depth), read from the histograms;
- `report.py`: the `Report` and each `Finding`, as text and as HTML (the package's one text table and
  one verdict renderer).

Where it sits on one output's path: after it. The engine (`colordim.engine`: hook, routing, plan, buffer
row, move) ends in a `colordim.data.Recording`; `diagnose` reads only that, so a saved run gets the
same verdict as a live one.
"""
