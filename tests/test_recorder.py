"""The engine: counts against numpy, edge bins, NaN, dtypes, chunks, columns and hook removal."""
import numpy as np
import pytest
import torch
from torch import nn

import colordim.engine.torch_kernels as summaries_module
from colordim.engine.find_layers import find_layers
from colordim.engine.recorder import HistogramRecorder
from colordim.engine.torch_kernels import histogram_counts, _add_counts_by_histc, _counts_by_index
from conftest import taps


def capture(model, layers):
    "Record outputs of `layers` by hand, to compare with the engine."
    outputs = {name: [] for name in layers}
    handles = [module.register_forward_hook(lambda m, i, o, name=name: outputs[name].append(o.detach().clone()))
               for name, module in layers.items()]
    return outputs, handles


def run_batches(engine, model, batches, phase="train", epoch=0):
    for iteration, batch in enumerate(batches):
        engine.begin_column(phase, epoch=epoch, iteration=iteration)
        model(batch)
        engine.end_column()


def test_counts_equal_numpy_histogram_on_captured_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 4))
    layers = find_layers(model, [0, 1, 2])
    outputs, handles = capture(model, layers)
    batches = [torch.randn(32, 5) * 3 for _ in range(4)]
    with HistogramRecorder(layers, bins=25, range=(-2, 3)) as engine:
        run_batches(engine, model, batches)
    for handle in handles: handle.remove()
    recording = engine.recording
    assert len(recording) == 4 and recording.layer_names == ["0", "1", "2"]
    for name in layers:
        for column, output in enumerate(outputs[name]):
            values = output.numpy().ravel()
            expected, edges = np.histogram(values, bins=25, range=(-2, 3))
            np.testing.assert_array_equal(recording.hist[name][column], expected)
            assert recording.underflow[name][column] == (values < -2).sum()
            assert recording.overflow[name][column] == (values > 3).sum()
            assert recording.numel[name][column] == values.size
        np.testing.assert_allclose(recording.edges[name], edges)
    assert recording.shapes["0"] == (32, 16)
    assert recording.hist[0].shape == (4, 25)


def test_every_value_lands_in_a_bin_and_nan_is_counted():
    model = nn.Identity()
    engine = HistogramRecorder({"x": model}, bins=4, range=(-1, 1)).attach()
    nan, inf = float("nan"), float("inf")
    values = torch.tensor([nan, nan, inf, -inf, -1.0, 1.0, -1.5, 2.0, 0.0, 0.49, 0.5])
    run_batches(engine, model, [values])
    engine.detach()
    recording = engine.recording
    # bins [-1,-.5) [-.5,0) [0,.5) [.5,1]: -1 -> first, 1 -> last (right edge closed, as histc)
    assert recording.hist["x"][0].tolist() == [1, 0, 2, 2]
    assert recording.underflow["x"][0] == 2   # -inf, -1.5
    assert recording.overflow["x"][0] == 2    # inf, 2.0
    assert recording.nan["x"][0] == 2
    assert recording.numel["x"][0] == 11


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_are_counted_as_float32(dtype):
    values = ((torch.arange(-50, 50) + 0.5) / 10).to(dtype)   # -4.95 .. 4.95, off the bin edges
    out = torch.zeros(12, dtype=torch.int64)
    histogram_counts(values, 10, -4.0, 4.0, out)
    expected, _ = np.histogram(values.float().numpy(), bins=10, range=(-4, 4))
    assert out[1:-1].tolist() == expected.tolist()
    assert out[0] == 10 and out[-1] == 10         # -4.95..-4.05 below, 4.05..4.95 above
    assert out.sum() == 100


def test_big_outputs_are_counted_in_exact_chunks(monkeypatch):
    values = torch.randn(10_000, generator=torch.Generator().manual_seed(1)) * 4
    whole = torch.zeros(22, dtype=torch.int64)
    histogram_counts(values, 20, -5.0, 5.0, whole)
    monkeypatch.setattr(summaries_module, "CHUNK", 999)   # 11 chunks, the last one short
    chunked = torch.zeros(22, dtype=torch.int64)
    histogram_counts(values, 20, -5.0, 5.0, chunked)
    assert torch.equal(whole, chunked) and chunked.sum() == 10_000


def histc_with_edges(values, bins, low, high):
    "torch.histc plus the under- and overflow counted by hand: the reference for every path."
    inside = torch.histc(values, bins, low, high).long()
    return torch.cat([(values < low).sum().reshape(1), inside, (values > high).sum().reshape(1)])


@pytest.mark.parametrize("low,high,bins", [(0.0, 10.0, 40), (-10.0, 10.0, 100), (-3.0, 3.0, 100), (-1.0, 1.0, 7)])
def test_cpu_bincount_path_matches_histc(low, high, bins):
    values = torch.randn(200_000, generator=torch.Generator().manual_seed(bins)) * high
    values[:50] = high                                     # saturated: the last bin, not overflow
    values[50:60], values[60:70] = float("inf"), -float("inf")
    values[70:80], values[80:90] = float("nan"), low
    counts = torch.zeros(bins + 2, dtype=torch.int64)
    histogram_counts(values, bins, low, high, counts)
    reference = histc_with_edges(values, bins, low, high)
    assert counts[0] == reference[0] and counts[-1] == reference[-1]    # edges exact
    assert (counts - reference).abs().sum() <= 2   # float32 rounding may move a value next to an edge
    assert counts.sum() == 200_000 - 10


def test_gpu_histc_path_counts_exactly_like_the_reference():
    values = torch.cat([torch.randn(5000, generator=torch.Generator().manual_seed(4)) * 3,
                        torch.tensor([-2.0, 2.0, float("nan"), float("inf"), -float("inf")])])
    counts = torch.zeros(18, dtype=torch.int64)
    _add_counts_by_histc(values, 16, -2.0, 2.0, counts)
    assert counts.tolist() == histc_with_edges(values, 16, -2.0, 2.0).tolist()


def test_all_values_at_the_top_edge_go_to_the_last_bin():
    counts = torch.zeros(6, dtype=torch.int64)
    histogram_counts(torch.sigmoid(torch.full((100,), 40.0)), 4, 0.0, 1.0, counts)   # sigmoid saturates at 1.0
    assert counts.tolist() == [0, 0, 0, 0, 100, 0]


def test_index_path_for_deterministic_cuda_matches_histc():
    values = torch.cat([torch.randn(5000, generator=torch.Generator().manual_seed(2)) * 3,
                        torch.tensor([-2.0, 2.0, float("nan"), float("inf"), -float("inf")])])
    by_index = _counts_by_index(values, 16, -2.0, 2.0)
    assert by_index.tolist() == histc_with_edges(values, 16, -2.0, 2.0).tolist()
    assert by_index.sum() == values.numel() - 1   # all but the NaN


def test_hooks_removed_on_exit_and_after_an_exception_leaving_user_hooks():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    user_handle = model[0].register_forward_hook(lambda *args: None)
    before = [dict(module._forward_hooks) for module in model]
    engine = HistogramRecorder(find_layers(model, [0, 1]))
    with pytest.raises(RuntimeError, match="boom"):
        with engine:
            engine.begin_column()
            model(torch.randn(3, 2))
            engine.end_column()
            engine.begin_column()
            model(torch.randn(3, 2))
            raise RuntimeError("boom")  # mid-batch: this column is not complete
    assert [dict(module._forward_hooks) for module in model] == before
    assert not any("forward" in module.__dict__ for module in model)
    assert len(engine.recording) == 1      # the complete column stays, the broken one is dropped
    assert engine.recording.numel["0"].tolist() == [6]
    engine.detach()  # twice is fine
    user_handle.remove()


def test_attach_twice_hooks_once():
    model = nn.Sequential(nn.Linear(2, 2))
    engine = HistogramRecorder(find_layers(model)).attach().attach()
    assert taps(model[0]) == 1
    engine.detach()
    assert taps(model[0]) == 0


def test_nothing_is_recorded_outside_a_column():
    model = nn.Linear(2, 2)
    engine = HistogramRecorder({"fc": model}).attach()
    model(torch.randn(4, 2))                 # no column open: ignored
    run_batches(engine, model, [torch.randn(4, 2)])
    model(torch.randn(4, 2))
    engine.detach()
    assert len(engine.recording) == 1 and engine.recording.numel["fc"].tolist() == [8]


def test_columns_grow_past_any_capacity_and_keep_their_index():
    model = nn.Linear(3, 3)
    engine = HistogramRecorder({"fc": model}, bins=5, range=(-1, 1)).attach()
    engine.reserve(2)   # fewer than we will write: the buffer must grow
    for epoch in range(3):
        run_batches(engine, model, [torch.full((2, 3), 0.1 * epoch)] * 7, epoch=epoch)
        run_batches(engine, model, [torch.zeros(1, 3)] * 2, phase="valid", epoch=epoch)
        if epoch == 1:
            engine.flush()  # an epoch end in the middle
    engine.detach()
    recording = engine.recording
    assert len(recording) == 27
    assert recording.phase.tolist() == (["train"] * 7 + ["valid"] * 2) * 3
    assert recording.epoch.tolist() == [e for e in range(3) for _ in range(9)]
    assert recording.iteration.tolist() == (list(range(7)) + [0, 1]) * 3
    totals = recording.hist["fc"].sum(1)
    assert totals.tolist() == ([6] * 7 + [3] * 2) * 3   # every value of every column, none lost in growth
    assert len(recording.select_phase("valid")) == 6
    assert recording.select_epoch(2).iteration.tolist() == list(range(7)) + [0, 1]


def test_a_module_called_twice_in_a_forward_pass_is_two_layers():
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    engine = HistogramRecorder({"shared": shared}).attach()
    run_batches(engine, model, [torch.randn(5, 2)])
    engine.detach()
    recording = engine.recording
    assert recording.layer_names == ["shared", "shared#2"]
    assert recording.numel == {"shared": [10], "shared#2": [10]}
    for name in recording.layer_names:
        assert recording.counts[name].sum() == 10
    # told the root, two forward passes in one column: each pass's first call is `shared` again
    engine = HistogramRecorder({"shared": shared}).attach(root=model)
    engine.begin_column()
    first, second = torch.randn(5, 2), torch.randn(5, 2)
    model(first), model(second)
    engine.end_column()
    engine.detach()
    recording = engine.recording
    assert recording.numel == {"shared": [20], "shared#2": [20]}
    assert recording.max["shared"][0] == pytest.approx(max(shared(first).max(), shared(second).max()).item())


def test_non_float_and_non_tensor_outputs_are_skipped_with_a_reason():
    class Words(nn.Module):
        def forward(self, x):
            return "not numbers"
    class Argmax(nn.Module):
        def forward(self, x):
            return x.argmax(1)
    words, argmax = Words(), Argmax()
    engine = HistogramRecorder({"words": words, "argmax": argmax}).attach()
    engine.begin_column()
    words(torch.randn(2, 2)), argmax(torch.randn(2, 2))
    engine.end_column()
    engine.detach()
    assert engine.recording.skipped == {"words": "output is a str, not a tensor",
                                        "argmax": "output dtype torch.int64 is not floating point"}
    assert engine.recording.numel["words"].tolist() == [0]


def test_tuple_list_and_dict_outputs_are_recorded_one_layer_per_tensor():
    class Heads(nn.Module):
        def forward(self, x):
            return {"logits": x * 2, "mask": x > 0, "aux": None}
    model = nn.Sequential(nn.Linear(3, 4))
    rnn, heads, after = nn.LSTM(4, 5, batch_first=True), Heads(), nn.Linear(5, 2)
    engine = HistogramRecorder({"0": model[0], "rnn": rnn, "heads": heads, "after": after}, bins=10,
                               range=(-1, 1)).attach()
    for iteration in range(2):
        engine.begin_column(iteration=iteration)
        out, (h, c) = rnn(model[0](torch.randn(2, 7, 3)))
        heads(after(out))
        engine.end_column()
    engine.detach()
    recording = engine.recording
    assert recording.layer_names == ["0", "rnn[0]", "rnn[1][0]", "rnn[1][1]", "heads['logits']",
                                     "heads['mask']", "after"]
    assert recording.numel["rnn[0]"].tolist() == [2 * 7 * 5] * 2
    assert recording.numel["rnn[1][0]"].tolist() == [1 * 2 * 5] * 2        # h: (layers, batch, hidden)
    assert recording.shapes["heads['logits']"] == (2, 7, 2)
    assert recording.skipped == {"heads['mask']": "output dtype torch.bool is not floating point"}
    expected, _ = np.histogram(h.detach().numpy(), bins=10, range=(-1, 1))
    assert recording.hist["rnn[1][0]"][1].tolist() == expected.tolist()


@pytest.mark.parametrize("bins", [0, -3, 2.5, "100", True])
def test_bad_bins(bins):
    with pytest.raises(ValueError, match=r"bins: expected an int >= 1"):
        HistogramRecorder({"fc": nn.Linear(1, 1)}, bins=bins)


@pytest.mark.parametrize("value", [(1, 1), (2, -2), (0, float("inf")), (float("nan"), 1), 5, (1, 2, 3), "ab"])
def test_bad_range(value):
    with pytest.raises(ValueError, match=r"range: expected"):
        HistogramRecorder({"fc": nn.Linear(1, 1)}, range=value)


def test_bad_phase():
    engine = HistogramRecorder({"fc": nn.Linear(1, 1)})
    with pytest.raises(ValueError, match=r"phase: 'test' is not a phase; use one of \('train', 'valid'\)"):
        engine.begin_column("test")


def test_recording_before_any_column_is_empty_but_well_formed():
    recording = HistogramRecorder({"fc": nn.Linear(2, 2)}, bins=3).recording
    assert len(recording) == 0 and recording.hist["fc"].shape == (0, 3) and recording.nan["fc"].shape == (0,)
    assert recording.boundaries() == [] and "0 train, 0 valid" in repr(recording)


def test_a_container_first_seen_after_an_epoch_is_padded_into_the_earlier_columns():
    class Pair(nn.Module):
        def forward(self, x): return x, -x
    pair, linear = Pair(), nn.Linear(2, 2)
    engine = HistogramRecorder({"fc": linear, "pair": pair}, bins=4, range=(-2, 2)).attach()
    for epoch in range(2):
        for iteration in range(2):
            engine.begin_column(epoch=epoch, iteration=iteration)
            output = linear(torch.randn(3, 2))
            if epoch == 1:
                pair(output)                   # only from the second epoch on
            engine.end_column()
        engine.flush()
    engine.detach()
    recording = engine.recording
    assert recording.layer_names == ["fc", "pair[0]", "pair[1]"]
    assert recording.numel["pair[1]"].tolist() == [0, 0, 6, 6]
    assert recording.numel["fc"].tolist() == [6, 6, 6, 6]


def test_gradients_of_tuple_outputs_are_recorded_per_tensor():
    import colordim
    model = nn.LSTM(3, 4, batch_first=True)
    with colordim.record(model, layers=model, grads=True) as rec:
        out, (h, c) = model(torch.randn(2, 5, 3))
        (out.sum() + h.sum()).backward()
    grads = rec.recording.grads
    assert grads.layer_names == ["model[0]", "model[1][0]", "model[1][1]"]
    assert grads.numel["model[0]"].tolist() == [2 * 5 * 4] and grads.numel["model[1][0]"].tolist() == [8]
    assert grads.numel["model[1][1]"].tolist() == [0]                     # c took no part in the loss


def test_a_first_output_under_inference_mode_does_not_break_later_training(cpu_path):
    "Buffers made in a hook under torch.inference_mode are normal tensors: training can update them after."
    from colordim import record
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    with record(model, layers=[0, 1], sample=20) as rec:
        with torch.inference_mode():
            model.eval()
            model(torch.randn(5, 4))
        model.train()
        model(torch.randn(5, 4)).sum().backward()
        rec.epoch()
        model(torch.randn(5, 4))
    recording = rec.recording
    assert recording.phase.tolist() == ["valid", "train", "train"]
    assert recording.numel["0"].tolist() == [40, 40, 40] and recording.counts["1"].sum(1).tolist() == [40] * 3


def test_reset_forgets_flushed_and_unflushed_columns(cpu_path):
    layer = nn.Identity()
    with HistogramRecorder({"x": layer}, bins=4, range=(-2, 2)) as engine:
        run_batches(engine, layer, [torch.full((3,), -1.5)] * 2)
        engine.flush()
        run_batches(engine, layer, [torch.full((5,), -0.5)], epoch=1)   # committed, still on the device
        engine.reset()
        run_batches(engine, layer, [torch.tensor([0.5, 1.5])], epoch=2)
    recording = engine.recording
    assert recording.counts["x"].tolist() == [[0, 0, 0, 1, 1, 0]]
    assert recording.epoch.tolist() == [2] and recording.numel["x"].tolist() == [2]


def test_column_sizes_and_shapes_follow_each_column_when_shapes_alternate(cpu_path):
    layer = nn.Identity()
    shapes = [(4, 3), (4, 3), (2, 3), (4, 3), (5, 3), (5, 3)]
    phases = ["train", "train", "valid", "train", "valid", "train"]
    with HistogramRecorder({"x": layer}, bins=4, range=(-2, 2), sample=8) as engine:
        for iteration, (shape, phase) in enumerate(zip(shapes, phases)):
            engine.begin_column(phase, iteration=iteration)
            layer(torch.zeros(shape))
            engine.end_column()
        assert len({id(part) for part in engine.columns.outputs}) == 4  # repeated plans share one list
    recording = engine.recording
    assert recording.numel["x"].tolist() == [12, 12, 6, 12, 15, 15]
    assert recording.counts["x"].sum(1).tolist() == [12, 12, 6, 12, 15, 15]  # a sample of 8 scaled to the whole
    assert recording.shapes["x"] == (5, 3)                                   # the last training batch's


def test_a_later_validation_only_flush_keeps_the_training_shape():
    layer = nn.Identity()
    with HistogramRecorder({"x": layer}, bins=4, range=(-2, 2)) as engine:
        engine.begin_column("valid")
        layer(torch.zeros(3, 3))      # only a validation shape known so far: it shows
        engine.end_column()
        engine.flush()
        assert engine.recording.shapes["x"] == (3, 3)
        for phase, shape in (("train", (4, 3)), ("valid", (2, 3))):
            engine.begin_column(phase)
            layer(torch.zeros(shape))
            engine.end_column()
            engine.flush()            # one column per flush: the valid one comes after the train one
    assert engine.recording.shapes["x"] == (4, 3)
