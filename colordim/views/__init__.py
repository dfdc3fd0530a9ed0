"""Pictures of a `Recording`: they take one and import nothing from the engine (`tests/test_layering.py`).

- `plot.py`: the colour-dim images, per-epoch panels, the dead chart, layer statistics, `compare`;
- `html_page.py`: the one-page HTML report (every figure as an embedded PNG, the health report);
- `live.py`: the grid a notebook shows while training.

Where they sit on one output's path: after it. The engine (`colordim.engine`: hook, routing, plan, buffer
row, move) ends in a `colordim.data.Recording`; every figure takes only that.
"""
