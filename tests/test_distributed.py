"""Two processes on the gloo backend, each with half of every batch: rank 0 holds the whole picture."""
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset


def data(rank=None, world=2):
    "48 training and 16 validation rows in batches of 8; a rank gets its half of every batch."
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 5, generator=generator) * 3, torch.randint(0, 3, (64,), generator=generator)
    if rank is not None:
        share = 8 // world
        keep = torch.tensor([i for i in range(64) if (i % 8) // share == rank])
        x, y = x[keep], y[keep]
    return x, y


def learner(rank, save_to, world=2, **options):
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner
    from fastcore.basics import noop
    from colordim import ActivationHistogram
    x, y = data(rank, world)
    split = len(x) * 3 // 4
    bs = 8 if rank is None else 8 // world
    dls = DataLoaders(DataLoader(TensorDataset(x[:split], y[:split]), bs=bs),
                      DataLoader(TensorDataset(x[split:], y[split:]), bs=bs))
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))
    learn = Learner(dls, model, loss_func=nn.functional.cross_entropy, lr=0.0,   # lr 0: the ranks stay equal
                    cbs=ActivationHistogram(layers=[0, 1, 2], bins=12, range=(-6, 6), save_to=save_to, **options))
    learn.remove_cbs([cb for cb in learn.cbs if type(cb).__name__ == "ProgressCallback"])
    learn.logger = noop
    return learn


def worker(rank, world, store, folder):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        learn = learner(rank, f"{folder}/run_rank{rank}.npz")
        learn.fit(2)
        learn.activation_histogram.recording.save(f"{folder}/check_rank{rank}.npy.npz")  # what each rank holds
    finally:
        dist.destroy_process_group()


def test_rank_0_holds_the_histograms_of_the_whole_batches_and_alone_writes(tmp_path):
    from colordim import Recording
    mp.spawn(worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    single = learner(None, tmp_path / "single.npz")
    single.fit(2)
    expected = single.activation_histogram.recording
    assert (tmp_path / "run_rank0.npz").exists() and not (tmp_path / "run_rank1.npz").exists()
    merged = Recording.load(tmp_path / "run_rank0.npz")
    assert merged.phase.tolist() == expected.phase.tolist() and len(merged) == 2 * (6 + 2)
    for name in expected.layer_names:
        np.testing.assert_array_equal(merged.counts[name], expected.counts[name])
        np.testing.assert_array_equal(merged.numel[name], expected.numel[name])
        np.testing.assert_allclose(merged.mean[name], expected.mean[name], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(merged.std[name], expected.std[name], rtol=1e-4)
        # the model itself may differ by an ulp between a half batch and a whole one (oneDNN's conv)
        np.testing.assert_allclose(merged.min[name], expected.min[name], rtol=1e-6, atol=0)
        np.testing.assert_allclose(merged.max[name], expected.max[name], rtol=1e-6, atol=0)
        np.testing.assert_array_equal(merged.near_zero[name], expected.near_zero[name])
        # dead units merged exactly: a unit is dead when it is <= 0 on both ranks' halves
        np.testing.assert_array_equal(merged.channels[name], expected.channels[name])
        np.testing.assert_array_equal(merged.dead_rate[name], expected.dead_rate[name])
    assert Recording.load(tmp_path / "check_rank1.npy.npz") == merged    # all_reduce: rank 1 has it too


def test_not_distributed_means_no_collective(monkeypatch):
    import colordim.engine.distributed as distributed
    calls = []
    monkeypatch.setattr(dist, "all_reduce", lambda *args, **kwargs: calls.append(args))
    learn = learner(None, None)
    learn.fit(1)
    assert calls == [] and not distributed.is_distributed() and distributed.is_main_process()


def auto_values(rank, column):
    "Rank 0 outputs only values >= 0 (a one-sided range), rank 1 ten times wider and signed."
    values = torch.randn(50, generator=torch.Generator().manual_seed(10 * rank + column)) * (column + 1)
    return values.abs() if rank == 0 else values * 10


def auto_worker(rank, world, store, folder):
    from colordim.engine.recorder import HistogramRecorder
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        layer = nn.Identity()
        with HistogramRecorder({"x": layer}, range="auto", bins=16) as engine:
            for column in range(3):
                engine.begin_column(iteration=column)
                layer(auto_values(rank, column))
                engine.end_column()
            engine.flush()   # every rank, as at an epoch end: ranges agreed, then summed
            engine.recording.save(f"{folder}/auto_rank{rank}.npz")
    finally:
        dist.destroy_process_group()


def test_ranks_with_different_auto_ranges_agree_on_the_widest_before_summing(tmp_path):
    from colordim import Recording
    mp.spawn(auto_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    first, second = (Recording.load(tmp_path / f"auto_rank{rank}.npz") for rank in (0, 1))
    np.testing.assert_array_equal(first.edges["x"], second.edges["x"])
    edges = first.edges["x"]
    assert edges[0] < 0 and 0.0 in edges                            # symmetric: rank 1 had negative values
    for column in range(3):
        both = torch.cat([auto_values(rank, column) for rank in (0, 1)]).numpy().astype(np.float64)
        assert first.hist["x"][column].tolist() == np.histogram(both, bins=edges)[0].tolist()
    assert first.underflow["x"].sum() == first.overflow["x"].sum() == 0


def sequence_batch(rank=None):
    "A (4, 6, 8) batch of sequences; rank r gets rows 2r, 2r+1. Features 0-2 never fire, 3 fires on rank 1's rows only."
    values = torch.randn(4, 6, 8, generator=torch.Generator().manual_seed(3)).abs() + 0.1
    values[:, :, :3] = -1.0
    values[:2, :, 3] = -1.0
    return values if rank is None else values[2 * rank:2 * rank + 2]


def features_worker(rank, world, store, folder):
    from colordim.engine.recorder import HistogramRecorder
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        layer = nn.ReLU()
        with HistogramRecorder({"act": layer}, bins=8, range=(-2, 2), units="features") as engine:
            engine.begin_column()
            layer(sequence_batch(rank))
            engine.end_column()
            engine.flush()
            engine.recording.save(f"{folder}/features_rank{rank}.npz")
    finally:
        dist.destroy_process_group()


def test_ranks_merge_dead_features_exactly(tmp_path):
    "A feature is dead when it is <= 0 on every rank's rows: feature 3 fires on rank 1 only, so it is alive."
    from colordim import Recording
    from colordim.engine.recorder import HistogramRecorder
    mp.spawn(features_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    merged = Recording.load(tmp_path / "features_rank0.npz")
    layer = nn.ReLU()
    with HistogramRecorder({"act": layer}, bins=8, range=(-2, 2), units="features") as single:
        single.begin_column()
        layer(sequence_batch())
        single.end_column()
    assert merged.channels["act"].tolist() == [8] and merged.dead_rate["act"].tolist() == [3 / 8]
    assert single.recording.dead_rate["act"].tolist() == [3 / 8] and merged.units == {"act": "features"}


def params_worker(rank, world, store, folder):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        learner(rank, f"{folder}/run_rank{rank}.npz", params=True).fit(2)
    finally:
        dist.destroy_process_group()


def test_the_weights_every_rank_holds_alike_are_not_summed_across_ranks(tmp_path):
    "Each rank has the same weights (lr 0 here, DDP's all-reduced steps in practice): each rank's own counts."
    from colordim import Recording
    mp.spawn(params_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    single = learner(None, tmp_path / "single.npz", params=True)
    single.fit(2)
    expected, merged = single.activation_histogram.recording, Recording.load(tmp_path / "run_rank0.npz")
    assert merged.params.layer_names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for name in merged.params.layer_names:
        np.testing.assert_array_equal(merged.params.numel[name], expected.params.numel[name])  # not twice
        np.testing.assert_array_equal(merged.params.counts[name], expected.params.counts[name])
    np.testing.assert_array_equal(merged.counts["0"], expected.counts["0"])  # the activations: summed


def test_a_ddp_wrapped_model_records_its_inner_modules_under_their_own_names(tmp_path):
    "What `accelerator.prepare` or a hand-made DDP gives: `0`, not `module.0`; the step's streams too."
    import colordim
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        inner = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))
        model = nn.parallel.DistributedDataParallel(inner)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = data()
        with colordim.record(model, optimizer=optimizer, params=True, updates=True) as rec:
            for batch in range(3):
                nn.functional.cross_entropy(model(x[8 * batch:8 * batch + 8]), y[8 * batch:8 * batch + 8]).backward()
                optimizer.step()
                optimizer.zero_grad()
        recording = rec.recording
        assert recording.layer_names == ["0", "2"]
        assert recording.params.layer_names == ["0.weight", "0.bias", "2.weight", "2.bias"]
        assert recording.numel["0"].tolist() == [8 * 6] * 3 and recording.params.step_columns.sum() == 3
    finally:
        dist.destroy_process_group()
