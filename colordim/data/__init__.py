"""The host side's data, numpy only (no torch: `tests/test_layering.py`): what the engine hands over and
everything else reads.

- `layout.py`: the buffer's layout by name (counts, moments, sizes) and `Binning` (bin edges, symlog);
- `recording.py`: `Recording`, a run's histograms, moments and column index, as numpy arrays;
- `saved.py`: its file format, one `.npz` of arrays with a JSON header, never pickle.
"""
