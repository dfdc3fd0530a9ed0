"""Pictures of a `Recording`: they take one and import nothing from the engine (`tests/test_layering.py`).

- `plot.py`: the colour-dim images, per-epoch panels, the dead chart, layer statistics, `compare`;
- `html_page.py`: the one-page HTML report (every figure as an embedded PNG, the health report);
- `live.py`: the grid a notebook shows while training.
"""
