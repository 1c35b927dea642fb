"""The bf16 variant served by a real `facemargin serve`: OpenVINO runs it, its own thresholds
decide, and verification works on real photos. Only where bfloat16 is native (elsewhere the
refusal is tested in tests/export/test_variants.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from export.onnx_model import read_contract
from service.vision.openvino_runner import PROVIDER_NAME, bf16_capable
from tests.conftest import DATA, MODELS
from tests.e2e.conftest import Server, gallery_env, running

BF16 = MODELS / "face-reidentification-retail-0095-bf16.onnx"
CFP = DATA / "val" / "cfp" / "Data" / "Images"
pytestmark = [
    pytest.mark.skipif(not bf16_capable(), reason="no openvino, or no native bfloat16 here"),
    pytest.mark.skipif(not CFP.is_dir(), reason=f"CFP photos not found at {CFP}"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    env = gallery_env(tmp_path_factory.mktemp("data"), FACEMARGIN_MODEL_PATH=str(BF16))
    with running(env) as process:
        yield process


def upload(person: int, k: int, field: str) -> tuple[str, tuple[str, bytes, str]]:
    path: Path = CFP / f"{person:03d}" / "frontal" / f"{k:02d}.jpg"
    return field, (path.name, path.read_bytes(), "image/jpeg")


def test_the_variant_is_served_by_openvino_with_its_own_thresholds(server):
    contract = read_contract(BF16)
    info = httpx.get(f"{server.url}/info", timeout=30).json()
    assert info["providers"] == [PROVIDER_NAME]
    assert info["model"]["model_id"] == contract.model_id and info["model"]["variant"] == "bf16"
    calibrated = {p.far: p.threshold for p in contract.calibration.operating_points}
    parent = read_contract(MODELS / "face-reidentification-retail-0095.onnx").calibration
    assert calibrated[1e-3] != {p.far: p.threshold for p in parent.operating_points}[1e-3]

    same = httpx.post(
        f"{server.url}/verify", files=[upload(1, 1, "image1"), upload(1, 2, "image2")], timeout=60
    ).json()
    other = httpx.post(
        f"{server.url}/verify", files=[upload(1, 1, "image1"), upload(2, 1, "image2")], timeout=60
    ).json()
    assert same["threshold"]["threshold"] == pytest.approx(calibrated[1e-3])
    assert same["match"] is True and other["match"] is False
    assert same["similarity"] > other["similarity"]
