"""The device side: everything that runs while the model trains. torch, numpy, numba and triton only:
never matplotlib, fastai or a trainer (`tests/test_layering.py`).

One output's path, file by file, in the order it runs (the hot path is steps 1 to 4):
1. `hooks.py`: the torch forward hook on the module; under `torch.compile`, one opaque op
   (`in_graph.py`) that calls the same hook at run time;
2. `routing.py`: the recorder's hook for that module: is a column open, which layer is this output
   (container parts, a module's second call, recomputation, compiled gradients);
3. `layer.py`: `LayerRecorder.add`: the layer's binning (`ranges.py` for "auto"), its buffer
   (`buffer.py`) and its plan for this shape (`plans.py`);
4. the plan: one call of `cpu_kernel.py` (numba; big outputs in parts on `cpu_threads.py`),
   `gpu_kernel.py` (Triton) or `torch_kernels.py` (torch ops), into the layer's row at the column the
   ledger (`ledger.py`) keeps: no host sync;
5. `transfer.py`: `HistogramRecorder.flush`, every `move_every` batches: the rows go to the host
   (`host_columns.py`), summed across ranks first (`distributed.py`), and come out as a
   `colordim.data.Recording`. The recorder itself (its layers, hooks and columns) is `recorder.py`.

Also here: `find_layers.py` (what `layers=` takes) and `units.py` (where each layer's units are).
"""
