"""The `facemargin` command. Each package adds its own subcommands; heavy imports (torch,
onnxruntime sessions) happen only inside the subcommand that needs them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from export.cli import add_commands as add_export_commands
from training.cli import add_commands as add_training_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facemargin",
        description="Train face-embedding models with margin losses, export them to ONNX "
        "with their contract, and serve verification and identification over HTTP.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_training_commands(commands)
    add_export_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
