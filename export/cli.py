"""`facemargin export ...` and `facemargin inspect`: the arguments and what each target
runs. Torch is imported only inside the subcommands that need it, so `facemargin --help` and
`inspect` stay light."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from export.detector_cli import add_detector_targets, quiet_torch
from export.inspect_model import run_inspect
from export.validation_flags import ExportFailed, add_validation_flags, validation_data

TARGETS = ("model", "fp16", "int8", "bf16", "wrap", "omz", "detector", "yunet")


def default_target(argv: Sequence[str]) -> list[str]:
    """`facemargin export CHECKPOINT OUT` means `facemargin export model CHECKPOINT OUT`."""
    argv = list(argv)
    if (
        len(argv) >= 2
        and argv[0] == "export"
        and argv[1] not in TARGETS
        and not argv[1].startswith("-")
    ):
        argv.insert(1, "model")
    return argv


def _reports_failures(run: Callable[[argparse.Namespace], int]):
    """Failures a user can act on (a check failed, a file is not what it should be) print
    one line and exit 1; the output file is never left half-written."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        from export.omz import OpenVinoMissing
        from export.parity import ParityError
        from export.variants import VariantRejected
        from export.wrap import ForeignModelError
        from service.vision.embedder import ModelContractError
        from service.vision.openvino_runner import OpenVinoUnavailable

        try:
            return run(args)
        except (
            ExportFailed,
            ParityError,
            VariantRejected,
            ForeignModelError,
            ModelContractError,
            OpenVinoMissing,
            OpenVinoUnavailable,
            FileNotFoundError,
        ) as error:
            print(f"facemargin export {args.target}: error: {error}", file=sys.stderr)
            return 1

    return wrapper


def add_commands(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export",
        help="write embedding models (and the detector) to ONNX",
        description="facemargin export CHECKPOINT OUT.onnx writes a training checkpoint's "
        "embedding network, with its contract, parity proof and calibrated thresholds. The "
        "other targets make variants of such a file, wrap a foreign model, or convert the "
        "detector.",
    )
    targets = export.add_subparsers(dest="target", required=True, metavar="TARGET")
    _add_model(targets)
    _add_fp16(targets)
    _add_int8(targets)
    _add_bf16(targets)
    _add_wrap(targets)
    _add_omz(targets)
    add_detector_targets(targets)
    inspect = commands.add_parser(
        "inspect",
        help="print the contract inside a model file",
        description="Print a facemargin ONNX model's contract: id, input, alignment, "
        "backbone, objective, training data, thresholds, validation, parity, quantization.",
    )
    inspect.add_argument("model", type=Path)
    inspect.add_argument("--json", action="store_true", help="the raw JSON contract")
    inspect.set_defaults(run=run_inspect)


def _add_model(targets: argparse._SubParsersAction) -> None:
    model = targets.add_parser(
        "model",
        help="(default) a training checkpoint's embedding network, with its contract",
        description="Drop the training head and write the embedding network: input uint8 "
        "(N, S, S, 3) RGB faces aligned to the network's template (S = 112 for our backbones; "
        "a fine-tuned foreign network keeps its own), normalisation inside the graph, outputs "
        "'embedding' (L2-normalised) and 'norm'. Checks parity with the checkpoint on real "
        "faces at batch 1 and 8 (per-face cosine >= 0.99999) and calibrates cosine "
        "thresholds at FAR 1e-2/1e-3/1e-4; the file appears only when every check passed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model.add_argument("checkpoint", type=Path, help="checkpoint.pt from facemargin train")
    model.add_argument("out", type=Path, help="output .onnx")
    model.add_argument("--opset", type=int, default=18)
    model.add_argument("--data-name", help="how the contract names the training data")
    add_validation_flags(model)
    model.set_defaults(run=_run_model)


def _add_fp16(targets: argparse._SubParsersAction) -> None:
    fp16 = targets.add_parser(
        "fp16",
        help="half-precision variant of an exported model (for GPUs)",
        description="Convert weights and convolutions to float16, keeping the uint8 input, "
        "the preprocessing and the final normalisation in float32; checks per-face cosine "
        ">= 0.9995 against the fp32 file and re-measures the thresholds.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    fp16.add_argument("model", type=Path, help="fp32 model from facemargin export")
    fp16.add_argument("out", type=Path)
    add_validation_flags(fp16)
    fp16.set_defaults(run=_run_fp16)


def _add_int8(targets: argparse._SubParsersAction) -> None:
    int8 = targets.add_parser(
        "int8",
        help="int8 static-quantised variant (for CPUs), refused if accuracy drops",
        description="Static QDQ quantisation, per-channel int8 weights and uint8 activations "
        "of Conv/Gemm/MatMul, calibrated on aligned faces (keep them apart from the "
        "validation set). Reports per-face cosine to fp32 and the accuracy change on the "
        "validation protocols, and writes nothing if a drop exceeds --tolerance.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    int8.add_argument("model", type=Path, help="fp32 model from facemargin export")
    int8.add_argument("out", type=Path)
    int8.add_argument(
        "--calibration-faces", type=Path, required=True, help="folder of aligned faces"
    )
    int8.add_argument("--calibration-count", type=int, default=512, help="faces to use")
    int8.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax")
    _add_tolerance(int8)
    add_validation_flags(int8, optional=False)
    int8.set_defaults(run=_run_int8)


def _add_tolerance(parser: argparse.ArgumentParser) -> None:
    # The same gate as export.variants.DEFAULT_TOLERANCE_PP, not imported: that loads onnx.
    parser.add_argument(
        "--tolerance", type=float, default=0.5, help="largest accuracy drop, percentage points"
    )


def _add_bf16(targets: argparse._SubParsersAction) -> None:
    bf16 = targets.add_parser(
        "bf16",
        help="bfloat16 variant run by OpenVINO (for CPUs with AMX or AVX-512 BF16)",
        description="Mark an fp32 model to be served by OpenVINO's CPU plugin at bfloat16 "
        "precision (weights unchanged, a model id of its own), then measure it on that path: "
        "per-face cosine to fp32, the accuracy change on the validation protocols, thresholds. "
        "Writes nothing if a drop exceeds --tolerance. Needs openvino and a CPU with native "
        "bfloat16, here and wherever the file is served.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bf16.add_argument("model", type=Path, help="fp32 model from facemargin export")
    bf16.add_argument("out", type=Path)
    _add_tolerance(bf16)
    add_validation_flags(bf16, optional=False)
    bf16.set_defaults(run=_run_bf16)


def _far_threshold(text: str) -> tuple[float, float]:
    far, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        pair = float(far), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FAR=THRESHOLD, got {text!r}") from None
    if not 0 < pair[0] < 1 or not -1 <= pair[1] <= 1:
        raise argparse.ArgumentTypeError(f"FAR must be in (0, 1), threshold in [-1, 1]: {text}")
    return pair


def _add_wrap(targets: argparse._SubParsersAction) -> None:
    wrap = targets.add_parser(
        "wrap",
        help="give a foreign ArcFace-style ONNX model our contract",
        description="Wrap an InsightFace-convention model (float32 NCHW 1x3x112x112 input, "
        "(x - 127.5) / 127.5, RGB, raw embedding out) so it takes our uint8 aligned faces and "
        "returns our outputs. Checks parity with the file run directly, then measures "
        "thresholds (or takes yours with --threshold).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    wrap.add_argument("foreign", type=Path, help="the foreign .onnx")
    wrap.add_argument("out", type=Path)
    wrap.add_argument("--mean", type=float, default=127.5, help="pixel mean it expects")
    wrap.add_argument("--std", type=float, default=127.5, help="pixel scale it expects")
    wrap.add_argument("--bgr", action="store_true", help="it expects BGR, not RGB")
    wrap.add_argument(
        "--template",
        choices=_template_names(),
        default="arcface-112-5pt",
        help="the alignment it was trained on (sets the input size)",
    )
    wrap.add_argument("--backbone", default="foreign", help="how the contract names it")
    wrap.add_argument(
        "--threshold",
        type=_far_threshold,
        action="append",
        metavar="FAR=COSINE",
        help="use these thresholds instead of measuring (repeatable)",
    )
    add_validation_flags(wrap)
    wrap.set_defaults(run=_run_wrap)


def _template_names() -> list[str]:
    from service.vision.alignment import TEMPLATES

    return list(TEMPLATES)


def _template_of(model: Path) -> str:
    from export.onnx_model import read_contract

    contract = read_contract(model)
    if contract is None:
        raise ExportFailed(f"{model} has no facemargin contract")
    return contract.template().name


def _add_omz(targets: argparse._SubParsersAction) -> None:
    omz = targets.add_parser(
        "omz",
        help="convert an Open Model Zoo face embedder (OpenVINO IR) to a contract model",
        description="Convert an OpenVINO IR v11 face embedder such as Intel's "
        "face-reidentification-retail-0095 (Apache-2.0) to ONNX with facemargin's own code, "
        "give it our input (uint8 RGB faces aligned to the OMZ 128x128 template; the BGR swap "
        "happens inside the graph) and outputs, check per-face cosine >= 0.99999 against the "
        "OpenVINO runtime on real aligned faces (needs `pip install openvino`), and calibrate "
        "thresholds through the service's own detection and alignment.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    omz.add_argument("xml", type=Path, help="the IR's .xml (its .bin beside it)")
    omz.add_argument("out", type=Path, help="output .onnx")
    omz.add_argument(
        "--template", choices=_template_names(), default="omz-128-5pt", help="its alignment"
    )
    omz.add_argument(
        "--training-data",
        default="VGGFace2 (trained by Intel, per its training-extensions repository)",
        help="how the contract names the data the network was trained on",
    )
    add_validation_flags(omz)
    omz.set_defaults(run=_run_omz)


def _print_summary(out: Path) -> None:
    from export.inspect_model import format_contract
    from export.onnx_model import read_contract

    contract = read_contract(out)
    assert contract is not None
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    print(format_contract(contract))


@_reports_failures
def _run_model(args: argparse.Namespace) -> int:
    quiet_torch()
    from export.from_checkpoint import checkpoint_template, export_checkpoint

    export_checkpoint(
        args.checkpoint,
        args.out,
        validation_data(args, checkpoint_template(args.checkpoint).name),
        parity_root=args.parity_faces,
        data_name=args.data_name,
        opset=args.opset,
    )
    _print_summary(args.out)
    return 0


@_reports_failures
def _run_fp16(args: argparse.Namespace) -> int:
    from export.variants import make_fp16

    validation = validation_data(args, _template_of(args.model))
    make_fp16(args.model, args.out, validation, parity_root=args.parity_faces)
    _print_summary(args.out)
    return 0


@_reports_failures
def _run_int8(args: argparse.Namespace) -> int:
    from export.variants import make_int8

    make_int8(
        args.model,
        args.out,
        validation_data(args, _template_of(args.model)),
        args.calibration_faces,
        calibration_faces=args.calibration_count,
        tolerance_pp=args.tolerance,
        method=args.method,
    )
    _print_summary(args.out)
    return 0


@_reports_failures
def _run_bf16(args: argparse.Namespace) -> int:
    from export.variants import BF16_MEASURED_HERE, make_bf16
    from service.vision.openvino_runner import require_bf16

    require_bf16(BF16_MEASURED_HERE)  # before CFP is aligned, which takes minutes
    make_bf16(
        args.model,
        args.out,
        validation_data(args, _template_of(args.model)),
        tolerance_pp=args.tolerance,
    )
    _print_summary(args.out)
    return 0


@_reports_failures
def _run_wrap(args: argparse.Namespace) -> int:
    from export.wrap import ForeignConvention, wrap_model
    from service.vision.alignment import template_named

    wrap_model(
        args.foreign,
        args.out,
        validation_data(args, args.template),
        template=template_named(args.template),
        thresholds=dict(args.threshold) if args.threshold else None,
        convention=ForeignConvention(mean=args.mean, std=args.std, bgr=args.bgr),
        parity_root=args.parity_faces,
        backbone=args.backbone,
    )
    _print_summary(args.out)
    return 0


@_reports_failures
def _run_omz(args: argparse.Namespace) -> int:
    from export.omz import convert_omz
    from service.vision.alignment import template_named

    if not args.xml.is_file():
        raise ExportFailed(f"{args.xml}: no such file")
    try:
        convert_omz(
            args.xml,
            args.out,
            validation_data(args, args.template),
            template=template_named(args.template),
            training_data=args.training_data,
            parity_root=args.parity_faces,
        )
    except ValueError as error:  # an IR the converter cannot express, said in one line
        raise ExportFailed(str(error)) from None
    _print_summary(args.out)
    return 0
