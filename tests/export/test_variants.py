"""fp16, int8 and bf16 variants: each a model of its own, measured against its fp32 parent."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.onnx_model import read_contract, write_contract
from export.parity import aligned_faces
from service.cli import main
from service.vision.embedder import Embedder, ModelContractError
from service.vision.openvino_runner import PROVIDER_NAME as BF16_PROVIDER
from service.vision.openvino_runner import bf16_capable
from tests.conftest import DATA, MODELS, prepare_subset
from tests.export.conftest import all_pairs, balanced

SHIPPED = MODELS / "embedder.onnx"


def _validation(val_faces, val_pairs) -> list[str]:
    return ["--pairs", str(val_pairs), "--pairs-root", str(val_faces)]


@pytest.mark.slow
def test_fp16_variant(exported, val_faces, val_pairs, tmp_path):
    out = tmp_path / "fp16.onnx"
    assert (
        main(["export", "fp16", str(exported), str(out), *_validation(val_faces, val_pairs)]) == 0
    )
    parent, contract = read_contract(exported), read_contract(out)
    assert contract.variant == "fp16" and contract.parent_model_id == parent.model_id
    assert contract.model_id != parent.model_id
    assert contract.parity.min_cosine >= 0.9995
    assert contract.calibration is not None and contract.calibration.operating_points
    assert out.stat().st_size < 0.6 * exported.stat().st_size
    faces = aligned_faces(val_faces, 16)
    half, full = Embedder(out).embed(faces), Embedder(exported).embed(faces)
    # Normalisation stays in float32: unit vectors, not fp16's 1e-3 approximation of them.
    np.testing.assert_allclose(np.linalg.norm(half.vectors, axis=1), 1.0, atol=1e-5)
    assert np.sum(half.vectors * full.vectors, axis=1).min() >= 0.9995
    # A variant is not re-varied.
    assert (
        main(
            [
                "export",
                "int8",
                str(out),
                str(tmp_path / "x.onnx"),
                "--calibration-faces",
                str(val_faces),
                *_validation(val_faces, val_pairs),
            ]
        )
        == 1
    )


@pytest.mark.slow
def test_int8_variant_reports_its_accuracy_change(
    exported, small_faces, val_faces, balanced_pairs, tmp_path, capsys
):
    out = tmp_path / "int8.onnx"
    argv = ["export", "int8", str(exported), str(out), "--calibration-faces", str(small_faces)]
    # Generous tolerance: this checkpoint has barely trained, and only its measuring matters.
    assert main([*argv, "--tolerance", "20", *_validation(val_faces, balanced_pairs)]) == 0
    printed = capsys.readouterr().out
    assert "int8 balanced-pairs: accuracy" in printed and "cosine to fp32" in printed
    contract = read_contract(out)
    quantization = contract.quantization
    assert contract.variant == "int8"
    assert quantization.calibration_faces > 100
    assert quantization.faces_compared == len({*balanced_pairs.read_text().split()} - {"0", "1"})
    assert 0.5 < quantization.min_cosine_to_fp32 <= quantization.median_cosine_to_fp32 <= 1.0
    (change,) = quantization.accuracy
    assert 0.5 < change.accuracy_fp32 <= 1.0  # the balanced protocol: chance is 0.5
    assert change.change_pp == pytest.approx(100 * (change.accuracy - change.accuracy_fp32))
    assert out.stat().st_size < 0.5 * exported.stat().st_size


@pytest.fixture(scope="module")
def cfp_balanced(tmp_path_factory) -> tuple[Path, Path]:
    """Balanced pairs among CFP frontal faces of 25 people, aligned by prepare."""
    root = prepare_subset(
        tmp_path_factory.mktemp("cfp"),
        25,
        6,
        source=DATA / "val" / "cfp" / "Data" / "Images",
        pattern="frontal/*.jpg",
    )
    path = root.parent / "pairs.txt"
    path.write_text("\n".join(balanced(all_pairs(root))) + "\n")
    return root, path


@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped model in models/")
def test_int8_calibrated_on_blank_images_is_refused(cfp_balanced, tmp_path, capsys):
    """Calibrating on the wrong data is how int8 silently wrecks embeddings; the accuracy
    gate must stop it and write nothing. (Needs a model that is far above chance: ours.)"""
    root, pairs = cfp_balanced
    blank = tmp_path / "blank"
    blank.mkdir()
    for i in range(32):
        Image.fromarray(np.full((112, 112, 3), 4 * i, np.uint8)).save(blank / f"{i:02d}.png")
    out = tmp_path / "int8.onnx"
    argv = ["export", "int8", str(SHIPPED), str(out), "--calibration-faces", str(blank)]
    assert main([*argv, "--tolerance", "0.5", *_validation(root, pairs)]) == 1
    err = capsys.readouterr().err
    assert "not written" in err, err
    assert not out.exists() and not (tmp_path / "int8.onnx.partial").exists()


OMZ = MODELS / "face-reidentification-retail-0095.onnx"


@pytest.fixture(scope="module")
def omz_pairs(tmp_path_factory) -> tuple[Path, Path]:
    """Every pair among CFP frontal faces of 20 people (about 4,700 impostor pairs: enough for
    thresholds down to FAR 1e-3), aligned onto OMZ's template."""
    root = prepare_subset(
        tmp_path_factory.mktemp("cfp-omz"),
        20,
        5,
        source=DATA / "val" / "cfp" / "Data" / "Images",
        pattern="frontal/*.jpg",
        template_name="omz-128-5pt",
    )
    path = root.parent / "pairs.txt"
    path.write_text("\n".join(all_pairs(root)) + "\n")
    return root, path


@pytest.mark.slow
@pytest.mark.skipif(not bf16_capable(), reason="no openvino, or no native bfloat16 on this CPU")
def test_bf16_variant_is_measured_and_served_on_openvino(omz_pairs, tmp_path, capsys):
    root, pairs = omz_pairs
    out = tmp_path / "bf16.onnx"
    assert main(["export", "bf16", str(OMZ), str(out), *_validation(root, pairs)]) == 0
    assert "bf16 pairs: accuracy" in capsys.readouterr().out
    parent, contract = read_contract(OMZ), read_contract(out)
    assert contract.variant == "bf16" and contract.parent_model_id == parent.model_id
    # Same weights, other embeddings: a model id of its own, so no gallery mixes the two.
    assert contract.model_id != parent.model_id
    quantization = contract.quantization
    assert 0.995 < quantization.min_cosine_to_fp32 <= quantization.median_cosine_to_fp32 < 1.0
    (change,) = quantization.accuracy
    assert abs(change.change_pp) <= 0.5
    assert contract.calibration is not None and contract.calibration.operating_points

    served, reference = Embedder(out), Embedder(OMZ)
    assert served.providers == [BF16_PROVIDER]
    faces = aligned_faces(root, 24, 128)
    half, full = served.embed(faces), reference.embed(faces)
    cosine = np.sum(half.vectors * full.vectors, axis=1)
    # bfloat16 really ran (not a silent float32 fallback), and stayed close.
    assert cosine.min() > 0.995 and np.abs(half.vectors - full.vectors).max() > 1e-4
    np.testing.assert_allclose(np.linalg.norm(half.vectors, axis=1), 1.0, atol=1e-5)
    # Threads share one compiled model: concurrent batches give what one thread gives.
    starts = range(0, 24, 6)
    alone = [served.embed(faces[i : i + 6]).vectors for i in starts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda i: served.embed(faces[i : i + 6]).vectors, starts))
    np.testing.assert_allclose(np.concatenate(together), np.concatenate(alone), atol=1e-6)


@pytest.mark.skipif(bf16_capable(), reason="this CPU has native bfloat16")
def test_bf16_variant_is_refused_where_bfloat16_is_not_native(omz_pairs, tmp_path, capsys):
    """Where OpenVINO would quietly compute in float32, neither export nor serving pretends."""
    root, pairs = omz_pairs
    out = tmp_path / "bf16.onnx"
    assert main(["export", "bf16", str(OMZ), str(out), *_validation(root, pairs)]) == 1
    assert "native bfloat16" in capsys.readouterr().err
    assert not out.exists()
    marked = tmp_path / "marked.onnx"
    shutil.copyfile(OMZ, marked)
    write_contract(marked, read_contract(OMZ).model_copy(update={"variant": "bf16"}))
    with pytest.raises(ModelContractError, match=r"bfloat16|openvino"):
        Embedder(marked)


def test_an_empty_pairs_list_is_one_line_not_a_traceback(tmp_path, capsys):
    empty = tmp_path / "pairs.txt"
    empty.write_text("# nothing yet\n")
    out = tmp_path / "fp16.onnx"
    argv = ["export", "fp16", str(OMZ), str(out), "--pairs", str(empty)]
    assert main([*argv, "--pairs-root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("facemargin export fp16: error:") and "no pairs" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
