"""facemargin against face_recognition (dlib) on the same CFP photos, same machine, one run.

    pip install dlib-bin face-recognition-models && pip install --no-deps face_recognition
    OMP_NUM_THREADS=1 python bench/peer.py --cfp ../shared/data/val/cfp

Each system runs its own whole pipeline on the raw photo, one thread each:
- facemargin: the service's own code path (decode with its limits, the default detector,
  YuNet, 5-point alignment onto the model's template, the model named by --model through
  onnxruntime; default: the service's default model), largest face;
- face_recognition: `load_image_file`, HOG `face_locations` (upsampled once, its default),
  `face_encodings` (dlib's ResNet, 5-point landmarks, its default), largest face. Because CFP
  crops are small and HOG misses faces under ~80 px, it is also scored with a fallback a
  user could add: when HOG finds nothing, encode the whole crop as the face box.

The photos are processed interleaved (ours, then dlib, on the same photo) so machine noise
hits both alike. A face a pipeline misses counts as an error, never a dropped pair.

Accuracy: CFP frontal-frontal and frontal-profile (10-fold accuracy, where a missed face is a
wrong answer either way; TAR at FAR 1e-3 on the protocol's 3,500 impostor pairs), and TAR at
FAR 1e-3 over all pairs of CFP's 5,000 frontal photos (12.5 M impostor pairs). For TAR and FAR
a missed face is a rejection, which is what a deployed system does with it: a lost genuine
pair lowers TAR, a lost impostor pair is not a false accept.
Speed: photos per second per core, end to end from the encoded file.

Per-photo embeddings and timings are cached per system in --cache (derived from the data:
never commit them), so rerunning with a new --model only redoes facemargin's side. Speed
ratios are printed only for systems timed together in one invocation.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from service.api.settings import Settings
from service.vision.detection import FacePolicy
from service.vision.embedder import Embedder
from service.vision.errors import FaceMarginError
from service.vision.faces import read_faces, stack
from service.vision.preprocess import build_detector
from training.evaluation import missed_as_rejected, tar_at_far, verification_report
from training.protocols import PairsProtocol, read_cfp

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
FAR = 1e-3


@dataclass
class Side:
    """One pipeline's vectors for every photo (NaN rows where it found no face) and its
    per-photo seconds."""

    vectors: np.ndarray
    seconds: np.ndarray

    @property
    def found(self) -> np.ndarray:
        return ~np.isnan(self.vectors).any(axis=1)


def facemargin_side(model: Path) -> tuple[str, int, callable]:
    settings = Settings(onnx_threads=1)
    detector = build_detector(settings.detector_config())
    embedder = Embedder(model, threads=1)

    def run(path: Path) -> np.ndarray | None:
        try:
            photo = read_faces(
                path.read_bytes(),
                detector,
                embedder.template,
                FacePolicy.largest,
                settings.photo_limits(),
            )
        except FaceMarginError:
            return None
        return embedder.embed(stack(photo.faces[:1], embedder.template)).vectors[0]

    return embedder.contract.model_id, embedder.contract.embedding_dim, run


def dlib_sides() -> tuple[callable, callable]:
    import face_recognition

    def largest(boxes: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
        # face_recognition boxes are (top, right, bottom, left)
        return [max(boxes, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))] if boxes else []

    def own(path: Path, fallback: bool) -> np.ndarray | None:
        image = face_recognition.load_image_file(str(path))
        boxes = largest(face_recognition.face_locations(image, number_of_times_to_upsample=1))
        if not boxes and fallback:
            boxes = [(0, image.shape[1], image.shape[0], 0)]
        if not boxes:
            return None
        return face_recognition.face_encodings(image, known_face_locations=boxes)[0]

    return (lambda p: own(p, False)), (lambda p: own(p, True))


def load_side(path: Path) -> Side:
    with np.load(path) as cached:
        return Side(cached["vectors"], cached["seconds"])


def embed_all(
    photos: list[Path], runners: dict[str, callable], dims: dict[str, int]
) -> dict[str, Side]:
    vectors = {name: np.full((len(photos), dims[name]), np.nan, np.float32) for name in runners}
    seconds = {name: np.zeros(len(photos)) for name in runners}
    for i, path in enumerate(tqdm(photos, desc="photos", unit="photo")):
        for name, run in runners.items():
            start = time.perf_counter()
            vector = run(path)
            seconds[name][i] = time.perf_counter() - start
            if vector is not None:
                vectors[name][i] = vector
    return {name: Side(vectors[name], seconds[name]) for name in runners}


def scores(vectors: np.ndarray, left: np.ndarray, right: np.ndarray, kind: str) -> np.ndarray:
    a, b = vectors[left], vectors[right]
    if kind == "cosine":
        return (a * b).sum(axis=1)
    # dlib's embedding is compared by Euclidean distance (0.6 is its documented threshold);
    # the negative distance is a similarity with the same ordering.
    return -np.linalg.norm(a - b, axis=1)


def protocol_report(side: Side, kind: str, protocol: PairsProtocol, index: dict[str, int]) -> dict:
    left = np.array([index[p] for p in protocol.left])
    right = np.array([index[p] for p in protocol.right])
    s = scores(side.vectors, left, right, kind)
    report = verification_report(s, protocol.same, protocol.fold, [FAR])
    return {
        "accuracy": report.accuracy,
        "accuracy_std": report.accuracy_std,
        "tar_at_far_1e-3": tar_at_far(missed_as_rejected(s), protocol.same, [FAR])[0].tar,
        "impostors": report.n_impostor,
        "missed_pairs": report.n_missing,
        "scores": s,
    }


def all_frontal_pairs(side: Side, kind: str, frontal: list[int], people: np.ndarray) -> dict:
    """TAR at FAR 1e-3 over every pair of frontal photos (a missed face is a rejection)."""
    v = side.vectors[frontal]
    if kind == "cosine":
        matrix = v @ v.T
    else:
        sq = (v * v).sum(axis=1)
        matrix = -np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * v @ v.T, 0.0))
    i, j = np.triu_indices(len(frontal), k=1)
    same = people[i] == people[j]
    point = tar_at_far(missed_as_rejected(matrix[i, j]), same, [FAR])[0]
    return {
        "tar": point.tar,
        "threshold": point.threshold,
        "genuine": int(same.sum()),
        "impostors": int((~same).sum()),
    }


def plot(results: dict, curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.evaluation import roc_curve

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for axis, split in zip(axes[:2], ("FF", "FP"), strict=True):
        for name, (s, same) in curves[split].items():
            far, tar, _ = roc_curve(s, same)
            acc = results["systems"][name][split]["accuracy"]
            axis.plot(far, tar, label=f"{name} ({acc:.2%})")
        axis.set_xscale("log")
        axis.set_xlim(1e-3, 1)
        axis.set_xlabel("false accept rate")
        axis.set_ylabel("true accept rate")
        axis.set_title(f"CFP-{split} ROC (a missed face is a rejection)")
        axis.legend(fontsize=8, loc="lower right")
        axis.grid(alpha=0.3)
    names = list(results["systems"])
    speed = [results["systems"][n]["photos_per_s_per_core"] for n in names]
    axes[2].barh(names, speed, color="tab:blue")
    for y, value in enumerate(speed):
        axes[2].text(value, y, f" {value:.1f}", va="center")
    axes[2].set_xlabel("photos per second per core, end to end")
    axes[2].set_title("Speed (one thread each)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfp", type=Path, default=ROOT.parent / "shared/data/val/cfp")
    parser.add_argument("--model", type=Path, default=Settings().model_path)
    parser.add_argument("--people", type=int, default=500, help="first N CFP people (max 500)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/facemargin/peer")
    parser.add_argument("--out", type=Path, default=RESULTS / "peer")
    args = parser.parse_args()

    protocols = {split: read_cfp(args.cfp, split) for split in ("FF", "FP")}
    keep = {f"{n:03d}" for n in range(1, args.people + 1)}

    def wanted(path: str) -> bool:
        return Path(path).parts[-3] in keep

    for split, p in protocols.items():
        mask = np.array([wanted(a) and wanted(b) for a, b in zip(p.left, p.right, strict=True)])
        protocols[split] = PairsProtocol(
            p.name,
            tuple(np.array(p.left)[mask]),
            tuple(np.array(p.right)[mask]),
            p.same[mask],
            p.fold[mask],
        )
    frontal_dir = sorted(
        str(q.relative_to(args.cfp)) for q in (args.cfp / "Data/Images").glob("*/frontal/*.jpg")
    )
    photos = sorted(
        {q for p in protocols.values() for q in p.images} | {q for q in frontal_dir if wanted(q)}
    )
    index = {p: i for i, p in enumerate(photos)}

    model_id, dim, ours = facemargin_side(args.model)
    own, fallback = dlib_sides()
    systems = {  # name: (runner, embedding size, cache file)
        f"facemargin {model_id}": (ours, dim, f"facemargin-{model_id}"),
        "face_recognition": (own, 128, "dlib"),
        "face_recognition + whole-crop fallback": (fallback, 128, "dlib-fallback"),
    }
    args.cache.mkdir(parents=True, exist_ok=True)
    cache = {name: args.cache / f"{tag}-{len(photos)}.npz" for name, (_, _, tag) in systems.items()}
    sides = {name: load_side(path) for name, path in cache.items() if path.exists()}
    fresh = [name for name in systems if name not in sides]
    sides |= embed_all(
        [args.cfp / p for p in photos],
        {name: systems[name][0] for name in fresh},
        {name: systems[name][1] for name in fresh},
    )
    for name in fresh:
        np.savez(cache[name], vectors=sides[name].vectors, seconds=sides[name].seconds)

    frontal = [index[q] for q in photos if "/frontal/" in q]
    people = np.array([Path(photos[i]).parts[-3] for i in frontal])
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {platform.node()}",
        "photos": len(photos),
        "people": args.people,
        "timed_together": fresh,
        "systems": {},
    }
    curves: dict = {"FF": {}, "FP": {}}
    for name, side in sides.items():
        kind = "cosine" if name.startswith("facemargin") else "euclidean"
        entry: dict = {
            "photos_per_s_per_core": float(len(side.seconds) / side.seconds.sum()),
            "median_ms_per_photo": float(np.median(side.seconds) * 1000),
            "face_found": float(side.found.mean()),
            "frontal_all_pairs": all_frontal_pairs(side, kind, frontal, people),
        }
        for split, protocol in protocols.items():
            report = protocol_report(side, kind, protocol, index)
            curves[split][name] = (missed_as_rejected(report.pop("scores")), protocol.same)
            entry[split] = report
        results["systems"][name] = entry
        ff, fp = entry["FF"], entry["FP"]
        print(
            f"{name}: {entry['photos_per_s_per_core']:.2f} photos/s/core, "
            f"face found {entry['face_found']:.2%}; "
            f"CFP-FF {ff['accuracy']:.2%} (TAR@1e-3 {ff['tar_at_far_1e-3']:.2%}), "
            f"CFP-FP {fp['accuracy']:.2%} (TAR@1e-3 {fp['tar_at_far_1e-3']:.2%}); "
            f"frontal all-pairs TAR@1e-3 {entry['frontal_all_pairs']['tar']:.2%}"
        )
    ours_name = f"facemargin {model_id}"
    for name in fresh:
        if name != ours_name and ours_name in fresh:
            ratio = (
                results["systems"][ours_name]["photos_per_s_per_core"]
                / results["systems"][name]["photos_per_s_per_core"]
            )
            results["systems"][name]["facemargin_speed_ratio"] = ratio
            print(f"facemargin is {ratio:.2f}x the speed of {name}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, curves, args.out.with_suffix(".png"))
    print(f"results: {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
