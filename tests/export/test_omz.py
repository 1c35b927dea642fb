"""`facemargin export omz`: Intel's face-reidentification-retail-0095 (OpenVINO IR) converted
by our code, proved equal to the OpenVINO runtime, and served with its own alignment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.onnx_model import read_contract
from export.parity import aligned_faces
from service.cli import main
from service.vision.alignment import OMZ_128
from service.vision.embedder import Embedder
from tests.conftest import MODELS, SHARED, prepare_subset
from tests.export.conftest import all_pairs

pytest.importorskip("openvino")

OMZ = SHARED / "models" / "third-party" / "omz-face-reidentification-retail-0095"
IR = OMZ / "FP16" / "face-reidentification-retail-0095.xml"
SHIPPED = MODELS / "face-reidentification-retail-0095.onnx"


@pytest.fixture(scope="module")
def omz_faces(tmp_path_factory) -> Path:
    """12 identities aligned onto the OMZ 128 template by our own pipeline."""
    if not IR.is_file():
        pytest.skip(f"OMZ IR not found at {IR}")
    return prepare_subset(
        tmp_path_factory.mktemp("omz_faces"), 12, 5, offset=80, template_name=OMZ_128.name
    )


@pytest.mark.slow
def test_converting_again_gives_the_shipped_network_and_it_recognises_faces(omz_faces, tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(all_pairs(omz_faces)) + "\n")
    out = tmp_path / "omz.onnx"
    argv = ["export", "omz", str(IR), str(out), "--pairs", str(pairs), "--pairs-root"]
    assert main([*argv, str(omz_faces)]) == 0

    contract = read_contract(out)
    shipped = read_contract(SHIPPED)
    # Same weights, bit for bit: the committed file is what this code makes from Intel's IR.
    assert contract.model_id == shipped.model_id
    assert contract.parity.min_cosine >= 0.99999 and "OpenVINO" in contract.parity.reference
    assert contract.template() == OMZ_128
    assert (contract.input.height, contract.input.network_color) == (128, "BGR")
    # Identities it never saw (none of these people are in its training data's known overlap
    # checks) are told apart: a broken conversion or a wrong template would sink this.
    assert contract.validation[0].accuracy > 0.9
    faces = aligned_faces(omz_faces, 16, size=128)
    np.testing.assert_array_equal(
        Embedder(out).embed(faces).vectors, Embedder(SHIPPED).embed(faces).vectors
    )


def test_the_shipped_file_is_calibrated_through_the_service_path():
    embedder = Embedder(SHIPPED)
    assert embedder.template == OMZ_128
    calibration = embedder.contract.calibration
    assert calibration is not None and calibration.protocol.startswith("cfp")
    assert [p.far for p in calibration.operating_points] == [1e-2, 1e-3, 1e-4]
    thresholds = [p.threshold for p in calibration.operating_points]
    assert thresholds == sorted(thresholds)  # a stricter FAR needs a higher cosine
    assert embedder.contract.parity.min_cosine >= 0.99999


def test_an_int8_ir_is_refused_in_one_line(tmp_path, capsys):
    int8 = OMZ / "FP16-INT8" / "face-reidentification-retail-0095.xml"
    if not int8.is_file():
        pytest.skip("INT8 IR not found")
    out = tmp_path / "int8.onnx"
    assert main(["export", "omz", str(int8), str(out), "--no-calibration"]) == 1
    err = capsys.readouterr().err
    assert "FakeQuantize" in err and "Traceback" not in err
    assert not out.exists()
