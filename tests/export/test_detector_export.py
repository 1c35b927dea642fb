"""`facemargin export detector`: the conversion is faithful and the committed files are its output."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.detector_check import parity_report
from export.mtcnn import NETS, ONet, load_nets
from service.cli import main
from tests.conftest import MODELS, REPO

WHEEL = Path(
    os.environ.get(
        "FACEMARGIN_FACENET_WHEEL",
        REPO / ".cache" / "wheels" / "facenet_pytorch-2.6.0-py3-none-any.whl",
    )
)
pytestmark = pytest.mark.skipif(
    not WHEEL.exists(),
    reason=f"{WHEEL} absent; get it with: pip download facenet-pytorch==2.6.0 --no-deps -d .cache/wheels",
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mtcnn")
    assert main(["export", "detector", "--wheel", str(WHEEL), "--out", str(out)]) == 0
    return out


def run(path: Path, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )


@pytest.mark.parametrize("name", NETS)
def test_committed_files_match_a_fresh_conversion(exported, name):
    shape = {"pnet": (2, 3, 31, 45), "rnet": (3, 3, 24, 24), "onet": (3, 3, 48, 48)}[name]
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    fresh = run(exported / f"mtcnn_{name}.onnx", x)
    committed = run(MODELS / f"mtcnn_{name}.onnx", x)
    for a, b in zip(fresh, committed, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_parity_with_pytorch(exported):
    report = parity_report(load_nets(WHEEL), exported)
    assert set(report) == set(NETS)
    assert max(report.values()) < 1e-4


def test_parity_check_catches_a_wrong_network(exported):
    nets = load_nets(WHEEL)
    broken = ONet()
    broken.load_state_dict(nets["onet"].state_dict())
    with torch.no_grad():
        broken.dense6_3.bias += 0.05
    with pytest.raises(RuntimeError, match="onet"):
        parity_report({"onet": broken.eval()}, exported)


def test_unpacked_wheel_folder_is_accepted(tmp_path):
    import zipfile

    with zipfile.ZipFile(WHEEL) as archive:
        archive.extractall(tmp_path)
    nets = load_nets(tmp_path)
    assert {name: type(net).__name__ for name, net in nets.items()} == {
        "pnet": "PNet",
        "rnet": "RNet",
        "onet": "ONet",
    }
