"""`facemargin prepare` on a small real tree: outputs, report, resume, and the same pixels the
service path produces."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from service.cli import main
from service.vision.alignment import OMZ_128
from service.vision.detection import FacePolicy
from service.vision.imaging import read_image
from service.vision.preprocess import DetectorConfig, build_detector, detect_and_align
from tests.conftest import DATA, MODELS, load_rgb
from training.prepare import REPORT_NAME, SUMMARY_NAME, read_report


@pytest.fixture
def source(tmp_path: Path) -> Path:
    identities = sorted((DATA / "train" / "celeba").glob("*"))[:3] if DATA.is_dir() else []
    if not identities:
        pytest.skip(f"face data not found at {DATA}")
    root = tmp_path / "raw"
    for identity in identities:
        (root / "celeba" / identity.name).mkdir(parents=True)
        for photo in sorted(identity.glob("*.jpg"))[:3]:
            shutil.copy(photo, root / "celeba" / identity.name / photo.name)
    odd = root / "odd" / "person"
    odd.mkdir(parents=True)
    (odd / "notes.jpg").write_text("not an image at all")
    cv2.imwrite(str(odd / "blank.png"), np.full((120, 160, 3), 127, np.uint8))
    # The subject centred, a second person small in the corner: the central policy must pick
    # the subject.
    subject = cv2.imread(str(next((root / "celeba").glob("*/*.jpg"))))
    canvas = np.full((300, 300, 3), 60, np.uint8)
    canvas[94:206, 94:206] = subject
    canvas[0:80, 0:80] = cv2.resize(
        cv2.imread(str(sorted((root / "celeba").glob("*/*.jpg"))[-1])), (80, 80)
    )
    cv2.imwrite(str(odd / "two.png"), canvas)
    return root


def lines(target: Path) -> list[dict]:
    return [json.loads(line) for line in (target / REPORT_NAME).read_text().splitlines()]


@pytest.mark.slow
def test_prepare_writes_aligned_faces_and_a_report(source, tmp_path):
    target = tmp_path / "aligned"
    assert main(["prepare", str(source), str(target), "--workers", "2"]) == 0

    records = {r["path"]: r for r in lines(target)}
    assert len(records) == 12
    assert records["odd/person/notes.jpg"]["status"] == "unreadable"
    assert records["odd/person/notes.jpg"]["reason"].startswith("unsupported_media_type")
    assert records["odd/person/blank.png"]["status"] == "no_face"
    assert records["odd/person/two.png"] == {
        "path": "odd/person/two.png",
        "status": "ok",
        "faces": 2,
        "score": pytest.approx(records["odd/person/two.png"]["score"]),
    }
    celeba = [r for p, r in records.items() if p.startswith("celeba/")]
    assert sum(r["status"] == "ok" for r in celeba) >= 8

    summary = json.loads((target / SUMMARY_NAME).read_text())
    assert summary["all"]["images"] == 12
    assert summary["odd"]["ok_with_several_faces"] == 1
    assert summary["celeba"]["yield"] == pytest.approx(summary["celeba"]["ok"] / 9, abs=1e-4)

    # Training pixels are exactly what the service's own path (its default detector) gives
    # for the same file.
    detector = build_detector(DetectorConfig())
    for relative, record in records.items():
        out = (target / relative).with_suffix(".png")
        assert out.exists() == (record["status"] == "ok")
        if record["status"] != "ok":
            continue
        faces, _ = detect_and_align(
            read_image(source / relative).pixels, detector, FacePolicy.central
        )
        np.testing.assert_array_equal(load_rgb(out), faces[0].pixels)
    assert not list(target.rglob("*.partial"))


@pytest.mark.slow
def test_prepare_resumes_after_a_crash(source, tmp_path):
    target = tmp_path / "aligned"
    assert main(["prepare", str(source), str(target), "--workers", "1"]) == 0
    first = lines(target)
    victim = next(r["path"] for r in first if r["status"] == "ok")
    before = (target / victim).with_suffix(".png").read_bytes()

    # A rerun with nothing to do processes nothing.
    assert main(["prepare", str(source), str(target), "--workers", "1"]) == 0
    assert len(lines(target)) == len(first)

    # Simulate a run killed mid-write: the victim's record gone, its output gone, a torn line.
    kept = [json.dumps(r) for r in first if r["path"] != victim]
    (target / REPORT_NAME).write_text("\n".join(kept) + '\n{"path": "celeba/tor')
    (target / victim).with_suffix(".png").unlink()
    assert len(read_report(target)) == len(first) - 1
    assert main(["prepare", str(source), str(target), "--workers", "1"]) == 0
    assert (target / victim).with_suffix(".png").read_bytes() == before
    assert set(read_report(target)) == {r["path"] for r in first}


@pytest.mark.slow
def test_skip_multiple_and_jpeg_output(source, tmp_path):
    target = tmp_path / "aligned"
    assert (
        main(
            [
                "prepare",
                str(source),
                str(target),
                "--workers",
                "1",
                "--skip-multiple",
                "--format",
                "jpg",
            ]
        )
        == 0
    )
    records = {r["path"]: r for r in lines(target)}
    assert records["odd/person/two.png"]["status"] == "multiple_faces"
    assert not (target / "odd/person/two.jpg").exists()
    ok = [p for p, r in records.items() if r["status"] == "ok"]
    assert ok and all((target / p).with_suffix(".jpg").exists() for p in ok)
    assert read_image(target / Path(ok[0]).with_suffix(".jpg")).pixels.shape == (112, 112, 3)


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="is not a folder"):
        main(["prepare", str(tmp_path / "nope"), str(tmp_path / "out")])


@pytest.mark.slow
def test_prepare_aligns_to_the_template_of_the_model_it_is_told(source, tmp_path):
    """--model: the faces are the 128 px OMZ crops the default embedder is served, pixel for
    pixel; a folder aligned to one template is never resumed with another."""
    model = MODELS / "face-reidentification-retail-0095.onnx"
    target = tmp_path / "omz"
    argv = ["prepare", str(source / "celeba"), str(target), "--workers", "1"]
    assert main([*argv, "--model", str(model)]) == 0
    outputs = sorted(target.rglob("*.png"))
    assert outputs
    detector = build_detector(DetectorConfig())
    for out in outputs:
        raw = (source / "celeba" / out.relative_to(target)).with_suffix(".jpg")
        faces, _ = detect_and_align(read_image(raw).pixels, detector, FacePolicy.central, OMZ_128)
        np.testing.assert_array_equal(load_rgb(out), faces[0].pixels)
    with pytest.raises(SystemExit, match="aligned to omz-128-5pt"):
        main(argv)  # the ArcFace default into the OMZ folder
    with pytest.raises(SystemExit, match="no such file"):
        main([*argv, "--model", str(tmp_path / "missing.onnx")])


def test_the_detector_is_chosen_by_flags_not_by_the_services_variables(
    source, tmp_path, monkeypatch
):
    """prepare is configured by its own flags; FACEMARGIN_* service variables do not reach it."""
    monkeypatch.setenv("FACEMARGIN_DETECTOR", "scrfd")
    monkeypatch.setenv("FACEMARGIN_DETECTOR_PATH", str(tmp_path / "absent.onnx"))
    argv = ["prepare", str(source / "celeba"), "--workers", "1"]
    assert main([*argv, str(tmp_path / "yunet")]) == 0
    assert main([*argv, str(tmp_path / "mtcnn"), "--detector", "mtcnn"]) == 0
    yunet = sorted((tmp_path / "yunet").rglob("*.png"))
    mtcnn = sorted((tmp_path / "mtcnn").rglob("*.png"))
    assert [p.relative_to(tmp_path / "yunet") for p in yunet] == [
        p.relative_to(tmp_path / "mtcnn") for p in mtcnn
    ]
    # Two detectors put the landmarks in nearly, not exactly, the same places.
    assert any(
        not np.array_equal(load_rgb(a), load_rgb(b)) for a, b in zip(yunet, mtcnn, strict=True)
    )
    with pytest.raises(FileNotFoundError):
        main([*argv, str(tmp_path / "gone"), "--detector-path", str(tmp_path / "absent.onnx")])
