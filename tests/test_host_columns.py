"""The host's columns: arrays made once, filled at each move and merged in place, equal to joining the moves."""
import numpy as np
import pytest
import torch
from torch import nn

import colordim
from colordim.engine.host_columns import HostColumns
from colordim.data.recording import Recording

BINS = 4


def part(columns, layers=("a", "b"), seed=0, grads=False, dtype=np.int64):
    "A move's Recording: `columns` as (fit, epoch, phase, iteration), random counts and moments per layer."
    rng = np.random.default_rng(seed)
    fit, epoch, phase, iteration = (np.array(values) for values in zip(*columns))
    n = len(columns)

    def tables():
        counts = {name: rng.integers(0, 50, (n, BINS + 2)).astype(dtype) for name in layers}
        sums = rng.normal(size=(n, 4))
        extremes = rng.normal(size=(n, 2))
        return dict(counts=counts, numel={name: counts[name].sum(1).astype(np.int64) + 1 for name in layers},
                    moments={name: np.concatenate([sums, extremes], 1) for name in layers},
                    channels={name: np.full(n, 3, np.int64) for name in layers})

    def recording(tables):
        return Recording(**tables, edges={name: np.linspace(-1, 1, BINS + 1) for name in layers},
                         shapes={name: (2, 3) for name in layers}, fit=fit, epoch=epoch,
                         phase=phase.astype("<U5"), iteration=iteration)
    main = recording(tables())
    main.grads = recording(tables()) if grads else None
    return main


def held(host, names=("a", "b"), kinds=("activation",)):
    "The host's columns as a Recording, as the recorder assembles it."
    keys = [(kind, name) for kind in kinds for name in names]
    read, columns = host.read(keys), host.columns()
    recordings = {kind: Recording(counts={name: read[kind, name][0] for name in names},
                                  moments={name: read[kind, name][1] for name in names},
                                  numel={name: read[kind, name][2] for name in names},
                                  channels={name: read[kind, name][3] for name in names},
                                  edges={name: np.linspace(-1, 1, BINS + 1) for name in names},
                                  shapes={name: (2, 3) for name in names}, **columns) for kind in kinds}
    recordings["activation"].grads = recordings.get("grad")
    return recordings["activation"]


def assert_same(got, expected):
    assert got.fit.tolist() == expected.fit.tolist() and got.phase.tolist() == expected.phase.tolist()
    assert got.iteration.tolist() == expected.iteration.tolist() and got.batches.tolist() == expected.batches.tolist()
    for name in expected.layer_names:
        np.testing.assert_array_equal(got.counts[name], expected.counts[name])
        np.testing.assert_array_equal(got.numel[name], expected.numel[name])
        np.testing.assert_array_equal(got.channels[name], expected.channels[name])
        np.testing.assert_allclose(got.moments[name], expected.moments[name], rtol=1e-12)


def a_run(moves=23, per_move=7):
    "Two fits of epochs of 30 training and 5 validation batches, moved every `per_move` batches."
    columns = [(fit, epoch, phase, iteration) for fit in range(2) for epoch in range(3)
               for phase, batches in (("train", 30), ("valid", 5)) for iteration in range(batches)]
    return [part(columns[start:start + per_move], seed=start, grads=True)
            for start in range(0, len(columns), per_move)][:moves]


@pytest.mark.parametrize("capacity", [1000, 100, 37, 13])
def test_merging_in_place_equals_joining_every_move_then_merging_once(capacity):
    parts = a_run(moves=30)
    host = HostColumns(capacity, BINS)
    for one in parts:
        host.append(one)
    assert len(host) <= capacity
    joined = Recording.concat(parts)
    expected = joined.coarsen(host.width) if host.width > 1 else joined
    assert_same(held(host, kinds=("activation", "grad")), expected)
    assert_same(held(host, kinds=("activation", "grad")).grads, expected.grads)
    assert held(host).batches.sum() == len(joined) == 210
    assert host.width == {1000: 1, 100: 4, 37: 8, 13: 32}[capacity]


def test_a_layer_first_seen_later_is_empty_before_and_the_arrays_are_made_once():
    host = HostColumns(16, BINS)
    host.append(part([(0, 0, "train", i) for i in range(3)], layers=("a",)))
    arrays = host.tables["activation", "a"]["counts"]
    host.append(part([(0, 0, "train", i) for i in range(3, 6)], layers=("a", "b"), seed=1))
    got = held(host)
    assert got.counts["b"][:3].sum() == 0 and np.isnan(got.moments["b"][:3]).all() and got.numel["b"][3:].all()
    for start in range(6, 60, 3):  # merged in place: the same arrays all along
        host.append(part([(0, 0, "train", i) for i in range(start, start + 3)], layers=("a", "b"), seed=start))
    assert host.tables["activation", "a"]["counts"] is arrays and len(host) <= 16 and host.width == 4


def test_sampled_counts_turn_the_layers_arrays_to_floats_and_counts_add_up():
    host = HostColumns(8, BINS)
    host.append(part([(0, 0, "train", 0)]))
    host.append(part([(0, 0, "train", 1)], dtype=np.float64, seed=1))
    assert host.tables["activation", "a"]["counts"].dtype == np.float64


def test_a_smaller_capacity_merges_first_and_keeps_every_batch():
    host = HostColumns(100, BINS)
    for one in a_run(moves=10):
        host.append(one)
    before = held(host).counts["a"].sum()
    host.fit_within(12)
    assert len(host) <= 12 and host.capacity == 12 and held(host).counts["a"].sum() == before
    assert held(host).batches.sum() == 70


def test_more_epochs_than_room_grows_rather_than_merging_across_epochs():
    "One column per fit, epoch and phase cannot merge further: the arrays grow by half (past the budget: rare)."
    host = HostColumns(4, BINS)
    for epoch in range(6):
        host.append(part([(0, epoch, "train", 0), (0, epoch, "valid", 0)], seed=epoch))
    assert len(host) == 12 and host.capacity >= 12
    assert held(host).epoch.tolist() == [epoch for epoch in range(6) for _ in range(2)]


def test_a_kept_recording_does_not_change_when_the_columns_merge_later():
    "rec.recording is a copy of its own; merging in place touches only the host's arrays."
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    with torch.no_grad(), colordim.record(model, layers=[0], max_columns=8, move_every=4) as rec:
        for _ in range(8):
            model(torch.randn(2, 3))
        kept = rec.recording
        copy = kept.counts["0"].copy()
        for _ in range(40):
            model(torch.randn(2, 3))
    assert len(kept) == 7 and np.array_equal(kept.counts["0"], copy) and kept.batches.tolist() == [1] * 7  # the 8th: open
    final = rec.recording
    assert len(final) <= 8 and final.batches.sum() == 48 and final.numel["0"].sum() == 48 * 6
