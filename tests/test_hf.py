"""The Hugging Face Trainer: the callback on a small GPT-2 built from a config, on token ids made in code."""
import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from colordim.engine.hooks import ours  # noqa: E402
from colordim.hf import ActivationHistogram  # noqa: E402


class Tokens(torch.utils.data.Dataset):
    "`count` sequences of 16 token ids, made in code (a next-token rule to learn)."
    def __init__(self, count: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        start = torch.randint(0, 64, (count, 1), generator=generator)
        self.ids = (start + torch.arange(16) * 3) % 64

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


def gpt2():
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=32,
                                                                vocab_size=64, resid_pdrop=0, embd_pdrop=0,
                                                                attn_pdrop=0))


def train(tmp_path, callback, model=None, epochs=2, **arguments):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, per_device_eval_batch_size=8,
        gradient_accumulation_steps=2, num_train_epochs=epochs, eval_strategy="epoch", logging_strategy="no",
        save_strategy="no", use_cpu=True, disable_tqdm=True, learning_rate=1e-3, **{"report_to": [], **arguments})
    trainer = transformers.Trainer(model=model or gpt2(), args=args, train_dataset=Tokens(64, 0), eval_dataset=Tokens(16, 1),
                                   callbacks=callback if isinstance(callback, list) else [callback])
    trainer.train()
    return trainer


def test_counts_equal_a_taps_steps_are_global_steps_and_layers_have_their_hugging_face_names(tmp_path):
    model = gpt2()
    taps = []
    model.transformer.h[0].mlp.c_fc.register_forward_hook(
        lambda m, i, out: taps.append(("train" if m.training else "valid", out.detach().clone())))
    callback = ActivationHistogram(range=(-6, 6), params=True, updates=True)
    trainer = train(tmp_path, callback, model)
    recording = callback.recording
    assert recording.layer_names[:4] == ["transformer.wte", "transformer.wpe", "transformer.h.0.ln_1",
                                         "transformer.h.0.attn.c_attn"]
    # 8 micro-batches of 8 per epoch, then the epoch's evaluation (2 batches)
    assert recording.phase.tolist() == (["train"] * 8 + ["valid"] * 2) * 2
    assert recording.epoch.tolist() == [0] * 10 + [1] * 10
    assert [phase for phase, _ in taps] == recording.phase.tolist()
    name = "transformer.h.0.mlp.c_fc"
    for column, (_, output) in enumerate(taps):
        inside = output[(output >= -6) & (output <= 6)]
        assert recording.counts[name][column].sum() == output.numel()
        # the kernel bins in float32: a value within an ulp of an edge may fall on its other side
        assert np.abs(recording.hist[name][column] - np.histogram(inside.numpy(), recording.edges[name])[0]).sum() <= 2
    stepped = recording.params.step_columns  # a step every second micro-batch: the Trainer's global steps
    assert stepped.sum() == trainer.state.global_step == 8
    assert stepped.tolist() == ([False, True] * 4 + [False, False]) * 2
    report = callback.recording.to_html(tmp_path / "run.html").read_text()
    assert "transformer.h.1.mlp.c_proj" in report
    assert all(ours(module) == [] for module in model.modules())  # off when training ended


def test_report_to_tensorboard_gets_the_histograms(tmp_path, monkeypatch):
    from test_tensorboard import read_histograms
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "logs"))  # the Trainer's own writer's folder
    callback = ActivationHistogram(layers="lm_head", range=(-6, 6))
    train(tmp_path, callback, report_to=["tensorboard"])
    histograms = read_histograms(tmp_path / "logs")
    counts, phase = callback.recording.counts["lm_head"], callback.recording.phase
    # a histogram per optimizer step (its 2 micro-batches summed) at state.global_step, one per evaluation
    train_events, valid_events = histograms["activation/lm_head/train"], histograms["activation/lm_head/valid"]
    assert [event.step for event in train_events] == list(range(8))
    for event, columns in zip(train_events, np.flatnonzero(phase == "train").reshape(-1, 2)):
        assert list(event.histogram_value.bucket) == counts[columns].sum(0).tolist()
    assert [event.step for event in valid_events] == [4, 8]
    for event, columns in zip(valid_events, np.flatnonzero(phase == "valid").reshape(-1, 2)):
        assert list(event.histogram_value.bucket) == counts[columns].sum(0).tolist()


def test_a_training_that_dies_leaves_no_hook_after_it(tmp_path):
    class Boom(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise RuntimeError("boom")
    model = gpt2()
    callback = ActivationHistogram(layers="lm_head")
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8,
                                          num_train_epochs=1, report_to=[], use_cpu=True, disable_tqdm=True,
                                          save_strategy="no", logging_strategy="no")
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(64, 0), callbacks=[callback, Boom()])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    assert len(callback.recording) == 1  # the second batch's column is still open (its backward could follow)
    model(torch.zeros(1, 16, dtype=torch.int64))  # the model's next use outside the Trainer: the hooks come off
    assert all(ours(module) == [] for module in model.modules())
    recording = callback.recording  # the second batch kept (it was complete), that forward pass not recorded
    assert recording.numel["lm_head"].tolist() == [8 * 16 * 64] * 2


def test_evaluation_batches_can_be_left_out(tmp_path):
    callback = ActivationHistogram(layers="lm_head", valid=False)
    train(tmp_path, callback, epochs=1)
    assert callback.recording.phase.tolist() == ["train"] * 8


def test_a_loop_that_accelerate_prepared_records_with_its_wrapped_optimizer():
    from accelerate import Accelerator
    import colordim
    from torch import nn
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 5, generator=generator), torch.randint(0, 3, (32,), generator=generator))
    model, optimizer, loader = accelerator.prepare(model, optimizer, torch.utils.data.DataLoader(data, batch_size=8))
    assert type(optimizer).__name__ == "AcceleratedOptimizer"
    with colordim.record(model, optimizer=optimizer, params=True, param_grads=True, updates=True) as rec:
        for xb, yb in loader:
            accelerator.backward(nn.functional.cross_entropy(model(xb), yb))
            optimizer.step()
            optimizer.zero_grad()
    recording = rec.recording
    assert recording.layer_names == ["0", "2"] and recording.numel["0"].tolist() == [8 * 6] * 4
    assert recording.param_grads.step_columns.tolist() == [True] * 4
    assert np.isfinite(recording.update_ratio["0.weight"]).all()


def test_two_cpu_processes_under_torchrun_give_the_one_process_histograms(tmp_path):
    """The Trainer under `torch.distributed.run` on 2 CPU processes (gloo), lr 0: every batch's histogram sums
    both ranks' halves (each column holds 8 sequences' values), the epoch's totals equal one process's over the
    same 64 sequences (the Trainer shuffles each way differently), rank 0 alone saves, and the weights, alike
    on both ranks, are not summed."""
    import subprocess
    import sys
    from pathlib import Path
    from colordim import Recording
    worker = Path(__file__).parent / "hf_ddp_worker.py"
    for processes in (2, 1):
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(worker)] \
            if processes == 2 else [sys.executable, str(worker)]
        result = subprocess.run(command + [str(tmp_path), str(processes)], capture_output=True, text=True, timeout=600)
        # As in test_lightning's ddp test: now and then a rank aborts as it exits, after training ("terminate
        # called without an active exception", a C++ thread at interpreter exit). Rank 0 has saved by then,
        # and the comparisons below check the data; any other failure fails here.
        exit_abort = "terminate called without an active exception" in result.stderr \
            and result.stdout.count("colordim worker: trained") == processes
        assert result.returncode == 0 or (exit_abort and (tmp_path / f"run{processes}.npz").exists()), \
            result.stderr[-3000:]
    merged, single = Recording.load(tmp_path / "run2.npz"), Recording.load(tmp_path / "run1.npz")
    assert len(merged) == len(single) == 8
    for name in single.layer_names:
        assert merged.numel[name].tolist() == single.numel[name].tolist()
        assert merged.counts[name].sum(0).tolist() == single.counts[name].sum(0).tolist()
    assert merged.params.layer_names == single.params.layer_names
    for name in single.params.layer_names:
        assert merged.params.counts[name].tolist() == single.params.counts[name].tolist()


def test_report_to_wandb_gets_every_batch_once(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from test_wandb import history
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_PROJECT", "colordim-tests")
    monkeypatch.chdir(tmp_path)  # the Trainer's WandbCallback writes its run folder in the working directory
    callback = ActivationHistogram(layers="lm_head", range=(-6, 6), updates=True)
    runs = []

    class Where(transformers.TrainerCallback):  # the run the Trainer's WandbCallback started
        def on_step_end(self, args, state, control, **kwargs):
            runs.append(wandb.run.dir.rsplit("/files", 1)[0])
    try:
        train(tmp_path, [callback, Where()], report_to=["wandb"])
    finally:
        wandb.finish()
    rows, recording = history(runs[-1]), callback.recording
    logged = [row["colordim/activation/lm_head/train"]["values"] for row in rows
              if "colordim/activation/lm_head/train" in row]
    assert np.sum(logged, axis=0).tolist() == recording.counts["lm_head"][recording.phase == "train"].sum(0)[1:-1].tolist()
    assert [row["colordim/step"] for row in rows if "colordim/step" in row][-1] == 8  # the Trainer's global_step
    assert any("colordim/updates/lm_head.weight" in row or "colordim/updates/transformer.wte.weight" in row for row in rows)
