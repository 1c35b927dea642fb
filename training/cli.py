"""`facemargin prepare` (and, later, train and evaluate)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from service.detection import FacePolicy


def add_commands(commands: argparse._SubParsersAction) -> None:
    prepare = commands.add_parser(
        "prepare",
        help="detect and align raw face photos into 112x112 training faces",
        description="Turn SOURCE (one sub-folder per identity, any depth) into aligned 112x112 "
        "faces under TARGET with the same layout, using the service's own detector and "
        "alignment. Resumable: rerun the same command to continue. Writes "
        "prepare-report.jsonl (one line per image: ok, no_face, multiple_faces, unreadable) "
        "and prepare-summary.json (detection yield per top-level folder). The detector is "
        "chosen by FACEMARGIN_DETECTOR / FACEMARGIN_DETECTOR_PATH as for the service.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    prepare.add_argument("source", type=Path, help="folder of raw photos")
    prepare.add_argument("target", type=Path, help="folder for the aligned faces")
    prepare.add_argument(
        "--policy",
        type=FacePolicy,
        choices=[FacePolicy.central, FacePolicy.largest],
        default=FacePolicy.central,
        help="which face to keep when a photo holds several (loose crops centre the subject)",
    )
    prepare.add_argument(
        "--skip-multiple",
        action="store_true",
        help="skip photos with several faces instead of picking one",
    )
    prepare.add_argument(
        "--format", choices=["png", "jpg"], default="png", help="output image format"
    )
    prepare.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="parallel processes"
    )
    prepare.set_defaults(run=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    from training.prepare import PrepareOptions, prepare

    if not args.source.is_dir():
        raise SystemExit(f"facemargin prepare: {args.source} is not a folder")
    summary = prepare(
        PrepareOptions(
            source=args.source,
            target=args.target,
            policy=args.policy,
            skip_multiple=args.skip_multiple,
            image_format=args.format,
            workers=max(args.workers, 1),
        )
    )
    for group, row in summary.items():
        print(
            f"{group:>10}: {int(row.get('ok', 0)):>6} / {int(row['images']):>6} faces "
            f"(yield {row['yield']:.2%}); no face {int(row.get('no_face', 0))}, "
            f"unreadable {int(row.get('unreadable', 0))}, several faces "
            f"{int(row.get('ok_with_several_faces', 0) + row.get('multiple_faces', 0))}"
        )
    return 0
