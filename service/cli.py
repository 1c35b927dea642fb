"""The `facemargin` command. Each package adds its own subcommands, and only the module of
the subcommand asked for is imported: `facemargin serve` loads no training or export code
(the ground floor does not reach up), and heavy imports (torch, onnxruntime sessions)
happen only inside the subcommand that needs them."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

# The packages of the `train` extra: a command that needs one on the default (serving)
# install says which extra to add, in one line.
TRAIN_EXTRA = ("torch", "onnx", "onnxscript", "matplotlib")
# Which module adds which subcommands (tests/test_cli.py checks this against the parser).
COMMANDS: dict[str, tuple[str, ...]] = {
    "service.cli": ("serve", "hash-key"),
    "training.cli": ("prepare", "train", "backbones", "evaluate", "compare-stage"),
    "export.cli": ("export", "inspect"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand, or with only the one module that adds `command`."""
    parser = argparse.ArgumentParser(
        prog="facemargin",
        description="Train face-embedding models with margin losses, export them to ONNX "
        "with their contract, and serve verification and identification over HTTP. The "
        "default install serves (serve, hash-key, inspect, prepare); train, evaluate, "
        "compare-stage, backbones and export need the train extra: "
        "pip install 'facemargin[train]'.",
    )
    parser.add_argument("--version", action="version", version=f"facemargin {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module, names in COMMANDS.items():
        if command is None or command not in _known() or command in names:
            importlib.import_module(module).add_commands(commands)
    return parser


def _known() -> set[str]:
    return {name for names in COMMANDS.values() for name in names}


def add_commands(commands: argparse._SubParsersAction) -> None:
    add_serve_command(commands)
    add_hash_key_command(commands)


def add_serve_command(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the HTTP API",
        description="Run the HTTP API with uvicorn. Settings come from FACEMARGIN_* environment "
        "variables (see README); with none set it serves the models shipped in models/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    serve.add_argument("--port", type=int, default=8000, help="TCP port")
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    serve.add_argument(
        "--data-dir",
        type=Path,
        help="where the gallery lives (FACEMARGIN_DATA_DIR; default ./data, relative to where "
        "serve starts: the start-up log names the absolute folder)",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        # uvicorn's "trace" dumps whole ASGI scopes (query strings included): not offered.
        help="log level for the service and uvicorn",
    )
    serve.set_defaults(run=_run_serve)


def add_hash_key_command(commands: argparse._SubParsersAction) -> None:
    hash_key = commands.add_parser(
        "hash-key",
        help="make an API key and its FACEMARGIN_API_KEYS entry",
        description="Print a new random API key (give it to the client) and the NAME:SHA256 "
        "entry for FACEMARGIN_API_KEYS (give that to the server). With --key, hash an "
        "existing key instead.",
    )
    hash_key.add_argument("name", help="a label for the key, shown in logs and metrics")
    hash_key.add_argument("--key", help="an existing key to hash")
    hash_key.set_defaults(run=_run_hash_key)


def _run_hash_key(args: argparse.Namespace) -> int:
    import secrets

    from service.api.security import hash_key

    key = args.key or secrets.token_urlsafe(32)
    if not args.key:
        print(f"key:   {key}")
    print(f"entry: {args.name}:{hash_key(key)}")
    return 0


def log_config(level: str) -> dict:
    """uvicorn's logging setup plus the service's own loggers on the same handler."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["facemargin"] = {
        "handlers": ["default"],
        "level": level.upper(),
        "propagate": False,
    }
    return config


def _run_serve(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    if args.data_dir is not None:
        # The app factory reads its settings from the environment (in every worker process).
        os.environ["FACEMARGIN_DATA_DIR"] = str(args.data_dir.resolve())
    from service.api.connections import HeaderDeadline
    from service.api.settings import get_settings
    from service.vision.embedder import ModelContractError, check_servable

    try:
        check_servable(get_settings().model_path)
    except ModelContractError as error:
        print(f"facemargin serve: error: {error}", file=sys.stderr)
        return 1
    uvicorn.run(
        "service.api.app:create_app",
        factory=True,
        http=HeaderDeadline,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        access_log=False,
        log_config=log_config(args.log_level),
    )
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("facemargin")
    except PackageNotFoundError:
        return "(source tree)"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        if command == "export":
            from export.cli import default_target

            argv = default_target(argv)
        args = build_parser(command).parse_args(argv)
        return int(args.run(args) or 0)
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in TRAIN_EXTRA:
            raise
        raise SystemExit(
            f"facemargin {command}: needs the train extra ({error.name} is not installed): "
            "pip install 'facemargin[train]' (torch==2.13.0 installs offline here)"
        ) from None


if __name__ == "__main__":
    sys.exit(main())
