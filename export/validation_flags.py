"""The validation data every export target measures thresholds and accuracy on, as the
command line selects it: CFP (aligned once into a cache per template and detector) or a
pairs list."""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

DEFAULT_CFP = Path("../shared/data/val/cfp")


class ExportFailed(RuntimeError):
    """The command cannot run as asked; nothing was written."""


def add_validation_flags(parser: argparse.ArgumentParser, optional: bool = True) -> None:
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


def validation_data(args: argparse.Namespace, template_name: str = "arcface-112-5pt"):
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
        try:
            pairs = read_pairs_list(args.pairs)
        except ValueError as error:  # an empty or malformed list, said in one line
            raise ExportFailed(str(error)) from None
        return ValidationData(aligned_root=args.pairs_root, pairs=pairs)
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
