"""`facemargin export detector` and `export yunet`: the face detectors' conversions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Kept here, not imported from export.mtcnn, so `facemargin --help` never loads torch.
WHEEL_NAME = "facenet_pytorch-2.6.0-py3-none-any.whl"


def add_detector_targets(targets: argparse._SubParsersAction) -> None:
    _add_detector(targets)
    _add_yunet(targets)


def _add_detector(targets: argparse._SubParsersAction) -> None:
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


def _add_yunet(targets: argparse._SubParsersAction) -> None:
    yunet = targets.add_parser(
        "yunet",
        help="make OpenCV Zoo's YuNet face detector run at any input size",
        description="Rewrite face_detection_yunet_2023mar.onnx (MIT licence, OpenCV Zoo) so "
        "its input is (1, 3, height, width) instead of a fixed 640x640; nodes and weights are "
        "unchanged, and the source's name, SHA-256 and licence go into the file's metadata. "
        "Needs the onnx package (the train extra).",
    )
    yunet.add_argument("source", type=Path, help="face_detection_yunet_2023mar.onnx")
    yunet.add_argument("out", type=Path, help="output .onnx (the service reads models/yunet.onnx)")
    yunet.set_defaults(run=_run_yunet)


def quiet_torch() -> None:
    import logging
    import warnings

    # The exporter logs every operator registration and torch's pytree code warns about
    # itself; neither is actionable here.
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)


def _run_detector(args: argparse.Namespace) -> int:
    quiet_torch()
    from export.detector_check import parity_report
    from export.mtcnn import export_nets, load_nets

    quiet_torch()  # importing torch resets its loggers' levels
    nets = load_nets(args.wheel)
    for path in export_nets(nets, args.out, opset=args.opset):
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    for name, max_diff in parity_report(nets, args.out).items():
        print(f"{name}: max |torch - onnxruntime| = {max_diff:.2e}")
    return 0


def _run_yunet(args: argparse.Namespace) -> int:
    # Not @_reports_failures: that imports the torch-based exporters, which this needs not.
    from export.yunet import convert_yunet

    try:
        convert_yunet(args.source, args.out)
    except (ValueError, FileNotFoundError) as error:
        print(f"facemargin export {args.target}: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")
    return 0
