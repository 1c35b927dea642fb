"""`facemargin export ...` subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

# Kept here, not imported from export.mtcnn, so `facemargin --help` never loads torch.
WHEEL_NAME = "facenet_pytorch-2.6.0-py3-none-any.whl"


def add_commands(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export",
        help="write networks to ONNX",
        description="Write networks to ONNX files the torch-free service can run.",
    )
    targets = export.add_subparsers(dest="target", required=True, metavar="TARGET")
    detector = targets.add_parser(
        "detector",
        help="convert the MTCNN weights from the facenet-pytorch wheel to ONNX",
        description="Rebuild MTCNN's PNet/RNet/ONet in PyTorch, load the weights shipped in "
        f"{WHEEL_NAME} (MIT licence) and write mtcnn_{{pnet,rnet,onet}}.onnx. "
        "Get the wheel without its dependencies: "
        "pip download facenet-pytorch==2.6.0 --no-deps -d DIR",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    detector.add_argument(
        "--wheel", type=Path, required=True, help="the wheel file, or its unpacked folder"
    )
    detector.add_argument("--out", type=Path, default=Path("models"), help="output folder")
    detector.add_argument("--opset", type=int, default=18, help="ONNX opset")
    detector.set_defaults(run=_run_detector)


def _run_detector(args: argparse.Namespace) -> int:
    import logging
    import warnings

    # The exporter logs a line for every torchvision operator it could register (we use none)
    # and torch's own pytree code raises a FutureWarning at itself; neither is actionable here.
    warnings.filterwarnings("ignore", category=FutureWarning, module="copyreg")
    from export.detector_check import parity_report
    from export.mtcnn import export_nets, load_nets

    # After the imports: importing torch sets its loggers' levels itself.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)

    nets = load_nets(args.wheel)
    for path in export_nets(nets, args.out, opset=args.opset):
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    for name, max_diff in parity_report(nets, args.out).items():
        print(f"{name}: max |torch - onnxruntime| = {max_diff:.2e}")
    return 0
