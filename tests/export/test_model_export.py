"""`facemargin export CHECKPOINT OUT.onnx`: a self-contained file whose embeddings equal the
checkpoint's, with its contract and thresholds measured on the file itself."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.calibration import ValidationData
from export.from_checkpoint import export_checkpoint
from export.onnx_model import read_contract, weights_id
from export.parity import ParityError, aligned_faces, checkpoint_embeddings, compare
from service.cli import main
from service.vision.contract import MIN_FALSE_ACCEPTS, ModelContract
from service.vision.embedder import Embedder, ModelContractError
from tests.conftest import MODELS
from training.data import index_faces, load_rgb
from training.embedder import embed_dataset, load_backbone, read_checkpoint
from training.evaluation import verification_report
from training.protocols import read_pairs_list


def test_graph_takes_raw_aligned_faces_and_returns_embedding_and_norm(exported):
    model = onnx.load(str(exported))
    onnx.checker.check_model(model, full_check=True)
    (graph_input,) = model.graph.input
    assert graph_input.name == "faces"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [112, 112, 3]  # dynamic batch
    assert [o.name for o in model.graph.output] == ["embedding", "norm"]
    # The head is gone: nothing in the file is as wide as the number of training identities.
    assert all(
        64 in t.dims or len(t.dims) != 2 or t.dims[0] < 1000 for t in model.graph.initializer
    )


@pytest.mark.parametrize("batch_size", [1, 8])
def test_onnx_embeddings_equal_the_checkpoints(exported, checkpoint, val_faces, batch_size):
    backbone, _ = load_backbone(checkpoint)
    faces = aligned_faces(val_faces, 24)
    expected = checkpoint_embeddings(backbone, faces)
    with torch.no_grad():
        from training.data import to_tensor

        raw = backbone(torch.stack([to_tensor(f) for f in faces])).numpy()
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    got, norms = [], []
    for start in range(0, len(faces), batch_size):
        vector, norm = session.run(None, {"faces": faces[start : start + batch_size]})
        got.append(vector)
        norms.append(norm)
    got, norms = np.concatenate(got), np.concatenate(norms)
    cosine = np.sum(got * expected, axis=1) / np.linalg.norm(got, axis=1)
    assert cosine.min() >= 0.99999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(norms, np.linalg.norm(raw, axis=1), rtol=1e-4)


def training_ids(checkpoint) -> set[str]:
    return set(read_checkpoint(checkpoint)["identities"])


def test_contract_describes_the_model(exported, checkpoint):
    contract = read_contract(exported)
    assert contract is not None
    _, config = load_backbone(checkpoint)
    assert contract.embedding_dim == config.embedding_dim == 64
    assert contract.backbone == "mobilefacenet"
    assert contract.alignment_template == "arcface-112-5pt"
    assert contract.input.dtype == "uint8" and contract.input.layout == "NHWC"
    assert contract.objective.head == "cosface"
    assert contract.training.identities == 32  # 40 identities, 20% held out
    training = contract.training
    assert training.images == len(index_faces(config.data)) - sum(
        1 for p in index_faces(config.data).paths if p.split("/")[0] not in training_ids(checkpoint)
    )
    assert training.steps == training.epochs * (training.images // 16)  # full batches only
    assert len(contract.model_id) == 16
    assert contract.model_id == weights_id(onnx.load(str(exported)))
    assert contract.parity.min_cosine >= 0.99999 and contract.parity.batch_sizes == [1, 8]
    # The same contract, read the way the service reads it.
    assert Embedder(exported).contract == contract


def test_thresholds_are_calibrated_where_the_data_supports_them(exported, val_pairs):
    calibration = read_contract(exported).calibration
    protocol = read_pairs_list(val_pairs)
    assert calibration.protocol == "pairs"
    assert calibration.n_images_without_face == 1
    # The pair with the missed face is out of the thresholds, not counted as an impostor.
    assert calibration.n_genuine + calibration.n_impostor == len(protocol) - 1
    supported = [p.far for p in calibration.operating_points]
    assert supported == [far for far in (1e-2, 1e-3, 1e-4) if calibration.n_impostor * far >= 10]
    assert supported == [1e-2] and calibration.unsupported_fars == [1e-3, 1e-4]
    assert MIN_FALSE_ACCEPTS == 10
    for point in calibration.operating_points:
        assert point.far_achieved <= point.far
        # nextafter() of the deciding impostor score: may sit one float above 1.0.
        assert -1.0 <= point.threshold <= 1.0 + 1e-6


def test_thresholds_hold_when_the_service_applies_them(exported, val_faces, val_pairs):
    """Recompute the scores through the service's Embedder: the calibrated threshold accepts
    at most the target share of impostor pairs."""
    contract = read_contract(exported)
    threshold = contract.threshold_at(1e-2)
    embedder = Embedder(exported)
    protocol = read_pairs_list(val_pairs)
    paths = [p for p in protocol.images if (val_faces / p).exists()]
    vectors = dict(
        zip(
            paths,
            embedder.embed(np.stack([load_rgb(val_faces / p) for p in paths])).vectors,
            strict=True,
        )
    )
    impostor = [
        float(vectors[a] @ vectors[b])
        for a, b, same in zip(protocol.left, protocol.right, protocol.same, strict=True)
        if not same and a in vectors and b in vectors
    ]
    assert np.mean(np.asarray(impostor) >= threshold) <= 1e-2


def test_validation_accuracy_equals_the_training_evaluation(
    exported, checkpoint, val_faces, val_pairs
):
    """Export and `facemargin evaluate` agree to the pair: the same protocol gives the same
    accuracy through PyTorch and through the exported file."""
    (validation,) = read_contract(exported).validation
    protocol = read_pairs_list(val_pairs)
    backbone, _ = load_backbone(checkpoint)
    images = list(protocol.images)
    rows = dict(zip(images, embed_dataset(backbone, val_faces, images), strict=True))
    scores = np.array(
        [rows[a] @ rows[b] for a, b in zip(protocol.left, protocol.right, strict=True)]
    )
    report = verification_report(scores, protocol.same, protocol.fold)
    assert validation.n_missing == report.n_missing == 1
    assert validation.accuracy == pytest.approx(report.accuracy, abs=1e-3)


def test_weights_id_follows_the_weights_not_the_metadata(exported):
    model = onnx.load(str(exported))
    before = weights_id(model)
    model.metadata_props.add(key="note", value="anything")
    assert weights_id(model) == before
    tensor = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    array = onnx.numpy_helper.to_array(tensor).copy()
    array.flat[0] += 1e-3
    tensor.CopyFrom(onnx.numpy_helper.from_array(array, tensor.name))
    assert weights_id(model) != before


def test_parity_catches_a_colour_swap(exported, checkpoint, val_faces):
    """The classic production bug: a reference fed BGR. The check must not let it through."""
    backbone, _ = load_backbone(checkpoint)
    faces = aligned_faces(val_faces, 8)
    swapped = checkpoint_embeddings(backbone, faces[..., ::-1].copy())
    with pytest.raises(ParityError, match="min per-face cosine"):
        compare(swapped, Embedder(exported), faces, "BGR reference", 0.99999, report=lambda _: None)


def test_a_failed_export_leaves_no_file(checkpoint, tmp_path):
    out = tmp_path / "model.onnx"
    empty = tmp_path / "no-faces"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no aligned faces"):
        export_checkpoint(checkpoint, out, None, parity_root=empty, report=lambda _: None)
    assert list(tmp_path.iterdir()) == [empty]


def test_export_without_calibration_is_still_a_contract_model(checkpoint, val_faces, tmp_path):
    out = tmp_path / "bare.onnx"
    argv = ["export", str(checkpoint), str(out), "--no-calibration"]
    assert main([*argv, "--parity-faces", str(val_faces)]) == 0
    contract = read_contract(out)
    assert contract.calibration is None and contract.threshold_at(1e-3) is None
    assert contract.parity is not None


def test_export_without_validation_data_says_what_to_pass(checkpoint, tmp_path, capsys):
    argv = ["export", str(checkpoint), str(tmp_path / "m.onnx"), "--cfp", str(tmp_path)]
    assert main(argv) == 1
    assert "--no-calibration" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_inspect_prints_the_contract(exported, capsys):
    assert main(["inspect", str(exported)]) == 0
    printed = capsys.readouterr().out
    contract = read_contract(exported)
    assert contract.model_id in printed
    assert f"{contract.threshold_at(1e-2):.4f}" in printed
    assert "not calibrated" in printed
    assert main(["inspect", str(exported), "--json"]) == 0
    assert ModelContract.model_validate(json.loads(capsys.readouterr().out)) == contract


def test_inspect_refuses_files_without_a_contract(tmp_path, capsys):
    assert main(["inspect", str(MODELS / "mtcnn_onet.onnx")]) == 1
    assert "no facemargin contract" in capsys.readouterr().err
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    assert main(["inspect", str(junk)]) == 1
    assert "cannot load" in capsys.readouterr().err


def test_embedder_rejects_what_the_contract_does_not_allow(exported):
    embedder = Embedder(exported, threads=1, batch_size=4)
    with pytest.raises(ValueError, match="uint8"):
        embedder.embed(np.zeros((2, 112, 112, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        embedder.embed(np.zeros((2, 3, 112, 112), np.uint8))
    empty = embedder.embed(np.zeros((0, 112, 112, 3), np.uint8))
    assert empty.vectors.shape == (0, 64)
    many = embedder.embed(np.full((9, 112, 112, 3), 128, np.uint8))  # crosses batch_size
    assert many.vectors.shape == (9, 64) and many.norms.shape == (9,)
    with pytest.raises(ModelContractError, match="export wrap"):
        Embedder(MODELS / "mtcnn_onet.onnx")


def test_export_command_is_the_default_target(capsys):
    with pytest.raises(SystemExit):
        main(["export", "some.pt", "out.onnx", "--help"])
    assert "Checks parity with the checkpoint" in " ".join(capsys.readouterr().out.split())


def test_validation_data_needs_exactly_one_source(val_faces):
    with pytest.raises(ValueError, match="either"):
        ValidationData(aligned_root=val_faces)
