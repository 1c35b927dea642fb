"""`facemargin export ...` and `facemargin inspect`. Torch is imported only inside the
subcommands that need it, so `facemargin --help` and `inspect` stay light."""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

# Kept here, not imported from export.mtcnn, so `facemargin --help` never loads torch.
WHEEL_NAME = "facenet_pytorch-2.6.0-py3-none-any.whl"
DEFAULT_CFP = Path("../shared/data/val/cfp")
TARGETS = ("model", "fp16", "int8", "wrap", "omz", "detector", "yunet")


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


class ExportFailed(RuntimeError):
    """The command cannot run as asked; nothing was written."""


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

        try:
            return run(args)
        except (
            ExportFailed,
            ParityError,
            VariantRejected,
            ForeignModelError,
            ModelContractError,
            OpenVinoMissing,
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
    _add_wrap(targets)
    _add_omz(targets)
    _add_detector(targets)
    _add_yunet(targets)
    inspect = commands.add_parser(
        "inspect",
        help="print the contract inside a model file",
        description="Print a facemargin ONNX model's contract: id, input, alignment, "
        "backbone, objective, training data, thresholds, validation, parity, quantization.",
    )
    inspect.add_argument("model", type=Path)
    inspect.add_argument("--json", action="store_true", help="the raw JSON contract")
    inspect.set_defaults(run=_run_inspect)


def _add_validation_flags(parser: argparse.ArgumentParser, optional: bool = True) -> None:
    group = parser.add_argument_group(
        "validation data",
        "Thresholds are measured on CFP by default: every pair among its frontal photos for "
        "the thresholds, and the published FF and FP protocols for accuracy. Raw CFP is "
        "aligned once with facemargin prepare into a cache. Or give a pairs list.",
    )
    group.add_argument("--cfp", type=Path, default=DEFAULT_CFP, help="raw CFP root")
    group.add_argument("--aligned-cfp", type=Path, help="CFP already aligned by facemargin prepare")
    group.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "facemargin" / "aligned",
        help="where raw CFP is aligned to",
    )
    group.add_argument("--pairs", type=Path, help="pairs list (PATH1 PATH2 LABEL [FOLD])")
    group.add_argument("--pairs-root", type=Path, help="aligned faces the pairs list names")
    group.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="for prepare")
    if optional:
        group.add_argument(
            "--no-calibration",
            action="store_true",
            help="write no thresholds (the service then needs an explicit threshold)",
        )
    group.add_argument(
        "--parity-faces", type=Path, help="aligned faces for the parity check (default: CFP)"
    )


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
    _add_validation_flags(model)
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
    _add_validation_flags(fp16)
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
    int8.add_argument(
        "--tolerance", type=float, default=0.5, help="largest accuracy drop, percentage points"
    )
    _add_validation_flags(int8, optional=False)
    int8.set_defaults(run=_run_int8)


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
    _add_validation_flags(wrap)
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
    _add_validation_flags(omz)
    omz.set_defaults(run=_run_omz)


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


def _validation(args: argparse.Namespace, template_name: str = "arcface-112-5pt"):
    """The ValidationData the flags describe, aligning raw CFP onto the model's template
    first when needed; None with --no-calibration."""
    from export.calibration import ValidationData, prepared_cfp
    from service.api.settings import get_settings
    from service.vision.alignment import template_named

    if getattr(args, "no_calibration", False):
        return None
    if args.pairs is not None:
        from training.protocols import read_pairs_list

        if args.pairs_root is None:
            raise ExportFailed("--pairs needs --pairs-root (the aligned faces it names)")
        return ValidationData(aligned_root=args.pairs_root, pairs=read_pairs_list(args.pairs))
    if not (args.cfp / "Protocol").is_dir():
        raise ExportFailed(
            f"no CFP protocol under {args.cfp}: pass --cfp, --pairs/--pairs-root"
            + (", or --no-calibration" if hasattr(args, "no_calibration") else "")
        )
    aligned = args.aligned_cfp
    if aligned is None:
        # One cache per data set, template and detector: each makes different crops.
        settings = get_settings()
        detector = settings.detector.value
        origin = (
            f"{args.cfp.resolve()}|{template_name}|{detector}|{settings.detector_path}"
            f"|{settings.detection_threshold}|{settings.detection_fallback_threshold}"
            f"|{settings.min_face_size}"
        )
        key = hashlib.sha256(origin.encode()).hexdigest()[:8]
        cache = args.cache / f"cfp-{template_name}-{detector}-{key}"
        aligned = prepared_cfp(
            args.cfp,
            cache,
            args.workers,
            template_named(template_name),
            settings.detector_config(),
        )
    return ValidationData(aligned_root=aligned, cfp_root=args.cfp)


def _quiet_torch() -> None:
    import logging
    import warnings

    # The exporter logs every operator registration and torch's pytree code warns about
    # itself; neither is actionable here.
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)


def _print_summary(out: Path) -> None:
    from export.onnx_model import read_contract

    contract = read_contract(out)
    assert contract is not None
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    print(format_contract(contract))


@_reports_failures
def _run_model(args: argparse.Namespace) -> int:
    _quiet_torch()
    from export.from_checkpoint import checkpoint_template, export_checkpoint

    export_checkpoint(
        args.checkpoint,
        args.out,
        _validation(args, checkpoint_template(args.checkpoint).name),
        parity_root=args.parity_faces,
        data_name=args.data_name,
        opset=args.opset,
    )
    _print_summary(args.out)
    return 0


@_reports_failures
def _run_fp16(args: argparse.Namespace) -> int:
    from export.variants import make_fp16

    validation = _validation(args, _template_of(args.model))
    make_fp16(args.model, args.out, validation, parity_root=args.parity_faces)
    _print_summary(args.out)
    return 0


@_reports_failures
def _run_int8(args: argparse.Namespace) -> int:
    from export.variants import make_int8

    make_int8(
        args.model,
        args.out,
        _validation(args, _template_of(args.model)),
        args.calibration_faces,
        calibration_faces=args.calibration_count,
        tolerance_pp=args.tolerance,
        method=args.method,
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
        _validation(args, args.template),
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
            _validation(args, args.template),
            template=template_named(args.template),
            training_data=args.training_data,
            parity_root=args.parity_faces,
        )
    except ValueError as error:  # an IR the converter cannot express, said in one line
        raise ExportFailed(str(error)) from None
    _print_summary(args.out)
    return 0


def _run_detector(args: argparse.Namespace) -> int:
    _quiet_torch()
    from export.detector_check import parity_report
    from export.mtcnn import export_nets, load_nets

    _quiet_torch()  # importing torch resets its loggers' levels
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


def format_contract(contract) -> str:
    """The contract as a person reads it."""
    lines = [
        f"model        {contract.model_id} ({contract.variant}"
        + (f", from {contract.parent_model_id})" if contract.parent_model_id else ")"),
        f"network      {contract.backbone}, {contract.embedding_dim}-d embedding"
        + (f", {contract.parameters:,} parameters" if contract.parameters else "")
        + (f", {contract.macs / 1e9:.2f} GMAC" if contract.macs else ""),
        f"input        {contract.input.name}: {contract.input.dtype} {contract.input.layout} "
        f"(N, {contract.input.height}, {contract.input.width}, {contract.input.channels}) "
        f"{contract.input.color}, {contract.input.normalisation}",
        f"alignment    {contract.alignment_template} ({contract.template().size} px)",
        f"source       {contract.source}, exported {contract.exported_at:%Y-%m-%d %H:%M} UTC "
        f"by {contract.exporter}",
    ]
    if contract.objective is not None:
        objective = contract.objective
        parts = [f"{objective.head} {objective.head_params}" if objective.head else ""]
        if objective.loss:
            parts.append(f"{objective.loss} {objective.loss_params}")
        lines.append("objective    " + " + ".join(p for p in parts if p))
    if contract.training is not None:
        t = contract.training
        lines.append(
            f"training     {t.data}"
            + (f": {t.identities} identities" if t.identities else "")
            + (f", {t.images:,} images" if t.images else "")
            + (f", {t.epochs:g} epochs ({t.steps} steps)" if t.epochs is not None else "")
            + (f", started from model {t.initialised_from}" if t.initialised_from else "")
        )
    if contract.calibration is None:
        lines.append("thresholds   none: give the service an explicit threshold")
    else:
        c = contract.calibration
        lines.append(
            f"thresholds   {c.protocol}: {c.description}; {c.n_genuine:,} genuine / "
            f"{c.n_impostor:,} impostor pairs, {c.n_images_without_face} of {c.n_images} "
            "images without a face"
        )
        for point in c.operating_points:
            tar = f"TAR {100 * point.tar:.2f}%" if point.tar is not None else "TAR not measured"
            lines.append(f"  FAR {point.far:g}: cosine >= {point.threshold:.4f}  ({tar})")
        for far in c.unsupported_fars:
            lines.append(f"  FAR {far:g}: not calibrated (too few impostor pairs)")
    for v in contract.validation:
        tar = f"{100 * v.tar_at_far_1e3:.2f}%" if v.tar_at_far_1e3 is not None else "n/a"
        lines.append(
            f"validation   {v.protocol}: accuracy {100 * v.accuracy:.2f}% ± "
            f"{100 * v.accuracy_std:.2f}, TAR@FAR1e-3 {tar} ({v.n_missing} of {v.n_pairs} "
            "pairs with a missed face)"
        )
    if contract.parity is not None:
        p = contract.parity
        lines.append(
            f"parity       vs {p.reference}: min cosine {p.min_cosine:.8f}, max |diff| "
            f"{p.max_abs_diff:.2e} ({p.faces} faces, batches {p.batch_sizes})"
        )
    if contract.quantization is not None:
        q = contract.quantization
        lines.append(
            f"quantization {q.method}; {q.calibration_faces} calibration faces; cosine to fp32 "
            f"min {q.min_cosine_to_fp32:.5f}, median {q.median_cosine_to_fp32:.5f}"
        )
        for change in q.accuracy:
            lines.append(
                f"  {change.protocol}: {100 * change.accuracy_fp32:.2f}% -> "
                f"{100 * change.accuracy:.2f}% ({change.change_pp:+.2f} pp, tolerance "
                f"{q.tolerance_pp} pp)"
            )
    return "\n".join(lines)


def _run_inspect(args: argparse.Namespace) -> int:
    import onnxruntime as ort

    from service.vision.contract import parse_contract

    try:
        session = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own untyped errors for bad files
        print(f"facemargin inspect: cannot load {args.model}: {error}", file=sys.stderr)
        return 1
    contract = parse_contract(session.get_modelmeta().custom_metadata_map)
    if contract is None:
        print(
            f"facemargin inspect: {args.model} has no facemargin contract "
            "(wrap it with: facemargin export wrap)",
            file=sys.stderr,
        )
        return 1
    print(contract.model_dump_json(indent=2) if args.json else format_contract(contract))
    return 0
