"""The `colordim` command on saved runs, through a real subprocess; and colordim.compare."""
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn

import colordim

SCRIPT = shutil.which("colordim") or str(Path(sys.executable).parent / "colordim")


def saved_run(path, scale=1.0, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2))
    with colordim.record(model, layers=[0, 1, 2], range=(-4, 4)) as rec:
        for epoch in range(2):
            model.train()
            for _ in range(4):
                model(torch.randn(16, 3) * scale)
            model.eval()
            model(torch.randn(16, 3) * scale)
            rec.epoch()
    return rec.recording.save(path)


def run(*args):
    return subprocess.run([SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=300)


def is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and mpimg.imread(path).std() > 0.01


def test_plot_writes_every_figure_of_a_saved_run(tmp_path):
    saved_run(tmp_path / "a.npz")
    result = run("plot", tmp_path / "a.npz", "-o", tmp_path / "png")
    assert result.returncode == 0, result.stderr
    names = sorted(path.name for path in (tmp_path / "png").iterdir())
    assert names == ["0.png", "1.png", "2.png", "dead_chart.png", "grid.png",
                     "stats_0.png", "stats_1.png", "stats_2.png"]
    assert all(is_png(tmp_path / "png" / name) for name in names)
    assert result.stdout.count("wrote ") == 8


def test_plot_options_select_layers_epoch_and_phase(tmp_path):
    saved_run(tmp_path / "a.npz")
    result = run("plot", tmp_path / "a.npz", "-o", tmp_path / "png", "--layers", "2", "--epoch", "1",
                 "--phase", "valid")
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in (tmp_path / "png").iterdir()) == [
        "2.png", "dead_chart.png", "grid.png", "stats_2.png"]


def test_missing_bad_and_wrong_requests_exit_nonzero_with_one_line(tmp_path):
    result = run("plot", tmp_path / "missing.npz")
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0
    assert "missing.npz: no such file" in result.stderr
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    result = run("plot", tmp_path / "bad.npz")
    assert result.returncode == 1 and "bad.npz: not a colordim recording" in result.stderr
    assert "pickle" not in result.stderr
    saved_run(tmp_path / "a.npz")
    result = run("plot", tmp_path / "a.npz", "--layers", "conv9")
    assert result.returncode == 1 and "'conv9' was not recorded; recorded layers: ['0', '1', '2']" in result.stderr
    result = run("plot", tmp_path / "a.npz", "--epoch", "7", "-o", tmp_path / "png")
    assert result.returncode == 1 and "epoch: 7 was not recorded; recorded: [0, 1]" in result.stderr
    assert not (tmp_path / "png").exists()  # a request that fails writes nothing, not even the folder


def test_help_documents_every_option():
    text = run("plot", "--help").stdout
    assert all(option in text for option in ("RUN.npz", "-o DIR", "--layers", "--epoch", "--phase"))
    text = run("compare", "--help").stdout
    assert all(option in text for option in ("RUN.npz", "--layer", "--epoch", "--phase", "-o FILE"))


def test_compare_two_runs_on_one_scale(tmp_path):
    calm, wild = saved_run(tmp_path / "calm.npz", 0.5), saved_run(tmp_path / "wild.npz", 3.0, seed=1)
    result = run("compare", calm, wild, "--layer", "1", "-o", tmp_path / "cmp.png")
    assert result.returncode == 0, result.stderr and is_png(tmp_path / "cmp.png")
    figure, axes = colordim.compare([colordim.Recording.load(calm), colordim.Recording.load(wild)], "1",
                                    labels=["calm", "wild"])
    assert axes.shape == (2, 1)
    assert [ax.get_title() for ax in axes[:, 0]] == ["calm: 1 ReLU  (16, 6)", "wild: 1 ReLU  (16, 6)"]
    assert len({(ax.images[0].norm.vmin, ax.images[0].norm.vmax) for ax in axes[:, 0]}) == 1
    plt.close(figure)
    with pytest.raises(ValueError, match="labels: got 1 for 2 recordings"):
        colordim.compare([colordim.Recording.load(calm)] * 2, labels=["one"])


def test_version_and_compare_with_one_run(tmp_path):
    import colordim
    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"colordim {colordim.__version__}"
    saved_run(tmp_path / "a.npz")
    result = run("compare", tmp_path / "a.npz")
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0
    assert "compare needs two or more saved runs to draw side by side, got one:" in result.stderr
    assert "use `colordim plot`" in result.stderr
