"""Fine-tuning a foreign embedder (the shipped, converted OMZ 0095) with a margin head on real
faces aligned to its own template: it trains, resumes, and exports as a contract model that
names its parent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from export.calibration import ValidationData
from export.from_checkpoint import checkpoint_template, export_checkpoint
from export.parity import aligned_faces
from service.vision.alignment import OMZ_128
from service.vision.embedder import Embedder
from tests.conftest import MODELS, prepare_subset
from tests.export.conftest import all_pairs
from tests.training.test_trainer import records
from training.config import TrainConfig
from training.onnx_network import ForeignBackbone
from training.protocols import read_pairs_list
from training.trainer import CHECKPOINT_NAME, Trainer

OMZ = MODELS / "face-reidentification-retail-0095.onnx"


@pytest.fixture(scope="module")
def omz_faces(tmp_path_factory) -> Path:
    return prepare_subset(
        tmp_path_factory.mktemp("ft"), 10, 5, offset=500, template_name=OMZ_128.name
    )


def config(faces: Path, out: Path, **changes) -> TrainConfig:
    values = dict(
        data=faces,
        out=out,
        backbone="onnx",
        init_from=OMZ,
        embedding_dim=256,
        head="cosface",
        head_params={"s": 30.0, "m": 0.35},
        batch_size=16,
        epochs=1,
        lr=0.01,
        warmup_epochs=0.1,
        held_out=0.2,
        val_pairs=20,
        num_workers=0,
        device="cpu",
    )
    return TrainConfig(**(values | changes))


def test_the_onnx_backbone_needs_a_file_and_the_files_embedding_size(omz_faces, tmp_path):
    with pytest.raises(ValueError, match="give init_from"):
        config(omz_faces, tmp_path, init_from=None)
    with pytest.raises(ValueError, match="set --embedding-dim 256"):
        Trainer(config(omz_faces, tmp_path / "run", embedding_dim=128))


@pytest.mark.slow
def test_fine_tuning_the_converted_embedder_trains_resumes_and_exports(omz_faces, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(config(omz_faces, run))
    trainer.fit(stop_after_steps=1)
    # A new process resumes from the checkpoint alone (the network's structure travels in it).
    resumed = Trainer(config(omz_faces, run))
    assert resumed.state.global_step == 1
    resumed.fit()
    assert [r["epoch"] for r in records(run) if r["kind"] == "val"] == [0, 1]

    backbone = resumed.backbone
    assert isinstance(backbone, ForeignBackbone)
    before = {t.name: t for t in backbone.graph.graph.initializer}
    after = backbone.trained_graph().graph.initializer
    assert any(
        not np.array_equal(
            onnx.numpy_helper.to_array(t), onnx.numpy_helper.to_array(before[t.name])
        )
        for t in after
    )

    checkpoint = run / CHECKPOINT_NAME
    assert checkpoint_template(checkpoint) == OMZ_128
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(all_pairs(omz_faces)) + "\n")
    out = tmp_path / "fine-tuned.onnx"
    validation = ValidationData(aligned_root=omz_faces, pairs=read_pairs_list(pairs))
    contract = export_checkpoint(checkpoint, out, validation, progress=False)
    parent = Embedder(OMZ).contract
    assert contract.training.initialised_from == parent.model_id
    assert contract.model_id != parent.model_id
    assert contract.template() == OMZ_128 and contract.input.network_color == "BGR"
    assert contract.backbone.endswith("fine-tuned") and contract.objective.head == "cosface"
    assert contract.parity.min_cosine >= 0.99999
    served = Embedder(out).embed(aligned_faces(omz_faces, 4, size=128)).vectors
    assert served.shape == (4, 256) and np.allclose(np.linalg.norm(served, axis=1), 1, atol=1e-5)


def test_l2sp_needs_a_start_to_pull_towards(omz_faces, tmp_path):
    with pytest.raises(ValueError, match="l2sp pulls towards"):
        TrainConfig(data=omz_faces, out=tmp_path, backbone="iresnet18", l2sp=0.1)


@pytest.mark.slow
def test_l2sp_holds_the_network_nearer_its_start_and_resumes_with_the_same_start(
    omz_faces, tmp_path
):
    # Four steps (two epochs of this subset): the pull acts from the second step on, once
    # there is a distance to pull back.
    free = Trainer(config(omz_faces, tmp_path / "free", val_pairs=0, epochs=2))
    assert free.drift() == 0.0
    free.fit(stop_after_steps=4)
    held = Trainer(config(omz_faces, tmp_path / "held", val_pairs=0, epochs=2, l2sp=50.0))
    held.fit(stop_after_steps=4)
    # Same data, seed and steps: only the pull differs, and the backbone's decay towards zero
    # is off under it.
    assert 0 < held.drift() < 0.8 * free.drift()
    assert held.optimizer.param_groups[0]["weight_decay"] == 0.0
    assert free.optimizer.param_groups[0]["weight_decay"] == 5e-4
    logged = [r for r in records(tmp_path / "held") if r["kind"] == "train"]
    assert logged == [] or "drift" in logged[-1]
    # The start comes back from the checkpoint, not from the resumed weights.
    resumed = Trainer(config(omz_faces, tmp_path / "held", val_pairs=0, epochs=2, l2sp=50.0))
    assert resumed.drift() == pytest.approx(held.drift(), rel=1e-6)
