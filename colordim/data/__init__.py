"""The host side's data, numpy only (no torch: `tests/test_layering.py`): what the engine hands over and
everything else reads.

- `layout.py`: the buffer's layout by name (counts, moments, sizes) and `Binning` (bin edges, symlog);
- `recording.py`: `Recording`, a run's histograms, moments and column index, as numpy arrays;
- `saved.py`: its file format, one `.npz` of arrays with a JSON header, never pickle.

Where it sits on one output's path: the engine's hook -> routing -> the layer's plan -> its buffer row
(`colordim.engine`, whose docstring names the files in order) -> a move to the host -> `recording.py`'s
`Recording`, the end of the path, which everything below reads.
"""
