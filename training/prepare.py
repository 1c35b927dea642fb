"""`facemargin prepare`: raw photos, one folder per identity, to faces aligned onto a model's
template (ArcFace 112x112 unless told otherwise).

Runs the service's own decode -> detect -> align path, so training sees exactly the pixels the
service will produce. Resumable: every finished image is appended to a JSON-lines report, and a
rerun skips what the report already holds. Outputs are written atomically, so a killed run never
leaves a half-written face behind.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

import cv2
from tqdm import tqdm

from service.vision.alignment import ARCFACE_112, Template
from service.vision.detection import FacePolicy
from service.vision.errors import FaceMarginError
from service.vision.imaging import read_image
from service.vision.preprocess import DetectorConfig, build_detector, detect_and_align

REPORT_NAME = "prepare-report.jsonl"
TEMPLATE_NAME = "prepare-template.json"
SUMMARY_NAME = "prepare-summary.json"


class Status(StrEnum):
    ok = "ok"
    no_face = "no_face"
    multiple_faces = "multiple_faces"  # only when asked to skip such images
    unreadable = "unreadable"


@dataclass(frozen=True)
class PrepareOptions:
    source: Path
    target: Path
    policy: FacePolicy = FacePolicy.central
    skip_multiple: bool = False
    image_format: str = "png"
    workers: int = max(os.cpu_count() or 1, 1)
    template: Template = ARCFACE_112
    # One single-threaded detector per process: processes scale across cores better than
    # ONNX Runtime's intra-op threads on these small nets.
    detector: DetectorConfig = field(default_factory=lambda: DetectorConfig(threads=1))


@dataclass(frozen=True)
class Record:
    path: str  # relative to the source folder
    status: Status
    faces: int = 0
    score: float | None = None
    reason: str | None = None


def find_images(source: Path) -> list[str]:
    """Every non-hidden file under `source`, relative and sorted; content decides if it is an image."""
    found: list[str] = []
    for root, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(
            str((Path(root) / name).relative_to(source))
            for name in files
            if not name.startswith(".")
        )
    return sorted(found)


def read_report(target: Path) -> dict[str, Record]:
    """Records already written; a torn last line from a killed run is ignored and redone."""
    path = target / REPORT_NAME
    done: dict[str, Record] = {}
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            raw = json.loads(line)
            done[raw["path"]] = Record(**{**raw, "status": Status(raw["status"])})
        except (ValueError, KeyError, TypeError):
            continue
    return done


def output_path(target: Path, relative: str, image_format: str) -> Path:
    return (target / relative).with_suffix(f".{image_format}")


_worker: dict[str, object] = {}


def _init_worker(options: PrepareOptions) -> None:
    _worker["options"] = options
    _worker["detector"] = build_detector(options.detector)


def _process(relative: str) -> Record:
    options: PrepareOptions = _worker["options"]  # type: ignore[assignment]
    try:
        image = read_image(options.source / relative).pixels
    except FaceMarginError as error:
        return Record(relative, Status.unreadable, reason=f"{error.code}: {error.message}")
    faces, seen = detect_and_align(
        image,
        _worker["detector"],  # type: ignore[arg-type]
        options.policy,
        options.template,
    )
    if not faces:
        return Record(relative, Status.no_face)
    if seen > 1 and options.skip_multiple:
        return Record(relative, Status.multiple_faces, faces=seen)
    out = output_path(options.target, relative, options.image_format)
    out.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(
        f".{options.image_format}", cv2.cvtColor(faces[0].pixels, cv2.COLOR_RGB2BGR)
    )
    if not ok:
        raise RuntimeError(f"could not encode {out}")
    partial = out.with_name(f".{out.name}.partial")
    partial.write_bytes(encoded.tobytes())
    os.replace(partial, out)
    return Record(relative, Status.ok, faces=seen, score=round(faces[0].face.score, 4))


def _results(options: PrepareOptions, todo: list[str]) -> Iterator[Record]:
    if options.workers <= 1:
        _init_worker(options)
        yield from map(_process, todo)
        return
    with multiprocessing.get_context("spawn").Pool(
        options.workers, initializer=_init_worker, initargs=(options,)
    ) as pool:
        yield from pool.imap_unordered(_process, todo, chunksize=16)


def source_of(relative: str) -> str:
    """The top-level folder an image belongs to (e.g. `celeba` under train/)."""
    parts = Path(relative).parts
    return parts[0] if len(parts) > 2 else "."


def summarise(records: dict[str, Record]) -> dict[str, dict[str, float]]:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for record in records.values():
        for group in (source_of(record.path), "all"):
            counts[group]["images"] += 1
            counts[group][record.status.value] += 1
            if record.status is Status.ok and record.faces > 1:
                counts[group]["ok_with_several_faces"] += 1
    summary: dict[str, dict[str, float]] = {}
    for group, count in sorted(counts.items()):
        row: dict[str, float] = dict(count)
        row["yield"] = round(count["ok"] / count["images"], 4) if count["images"] else 0.0
        summary[group] = row
    return summary


def _claim_target(options: PrepareOptions) -> None:
    """Record the template in the target; refuse to resume a folder aligned to another one,
    which would mix two kinds of crop in one training set."""
    marker = options.target / TEMPLATE_NAME
    wanted = {"template": options.template.name, "size": options.template.size}
    if marker.exists():
        found = json.loads(marker.read_text())
        if found != wanted:
            raise ValueError(
                f"{options.target} holds faces aligned to {found['template']} "
                f"({found['size']} px); choose another target for {wanted['template']}"
            )
    elif (options.target / REPORT_NAME).exists() and options.template.name != "arcface-112-5pt":
        # Folders from before the marker existed were all aligned to ArcFace 112.
        raise ValueError(f"{options.target} holds faces aligned to arcface-112-5pt")
    marker.write_text(json.dumps(wanted) + "\n")


def prepare(options: PrepareOptions) -> dict[str, dict[str, float]]:
    options.target.mkdir(parents=True, exist_ok=True)
    _claim_target(options)
    done = read_report(options.target)
    todo = [p for p in find_images(options.source) if p not in done]
    report_path = options.target / REPORT_NAME
    # A run killed mid-line leaves a torn last line; end it so the next record starts clean.
    if report_path.exists() and not report_path.read_bytes().endswith(b"\n"):
        with report_path.open("a") as report:
            report.write("\n")
    with (
        report_path.open("a") as report,
        tqdm(total=len(todo), unit="img", desc="prepare", dynamic_ncols=True) as bar,
    ):
        for record in _results(options, todo):
            report.write(
                json.dumps({k: v for k, v in asdict(record).items() if v is not None}) + "\n"
            )
            report.flush()
            done[record.path] = record
            bar.update()
    summary = summarise(done)
    (options.target / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
