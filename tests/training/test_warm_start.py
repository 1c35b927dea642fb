"""Training that starts from an exported model (the shipped `models/embedder.onnx`): the rebuilt
backbone is the file's network, batch norm in training mode behaves as before export, the head
starts imprinted, and a resumed run takes nothing from the file again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.vision.embedder import Embedder
from tests.conftest import MODELS
from training.config import TrainConfig
from training.data import FaceDataset, load_rgb
from training.trainer import IMPRINT_FACES, Trainer

SHIPPED = MODELS / "embedder.onnx"


def config(faces: Path, out: Path, **changes) -> TrainConfig:
    values = dict(
        data=faces,
        out=out,
        backbone="mobilefacenet",
        embedding_dim=128,
        init_from=SHIPPED,
        head="cosface",
        head_params={"s": 30, "m": 0.35},
        batch_size=16,
        epochs=1,
        lr=0.01,
        warmup_epochs=0,
        held_out=0.2,
        val_pairs=60,
        num_workers=0,
        device="cpu",
    )
    return TrainConfig(**(values | changes))


def file_embeddings(faces: Path, paths: tuple[str, ...]) -> np.ndarray:
    pixels = np.stack([load_rgb(faces / p) for p in paths])
    return Embedder(SHIPPED).embed(pixels).vectors


@pytest.fixture(scope="module")
def warm(small_faces, tmp_path_factory) -> Trainer:
    return Trainer(config(small_faces, tmp_path_factory.mktemp("warm")))


def test_the_rebuilt_backbone_embeds_as_the_shipped_file_does(warm, small_faces, one_thread):
    paths = warm.train_index.paths[:48]
    faces = torch.stack([FaceDataset(warm.train_index)[i][0] for i in range(48)])
    with torch.no_grad():
        ours = torch.nn.functional.normalize(warm.backbone.eval()(faces), dim=1).numpy()
    cosine = (ours * file_embeddings(small_faces, paths)).sum(axis=1)
    assert cosine.min() > 0.9999
    assert warm.initialised_from == Embedder(SHIPPED).contract.model_id


def test_batch_norm_in_training_mode_keeps_the_files_scale(warm, one_thread):
    """The file holds batch norms folded away; restored as plain identities, training mode
    would re-normalise every layer to unit variance and change what the network computes."""
    faces = torch.stack([FaceDataset(warm.train_index)[i][0] for i in range(0, 96, 2)])
    backbone = warm.backbone
    with torch.no_grad():
        evaluated = torch.nn.functional.normalize(backbone.eval()(faces), dim=1)
        trained = torch.nn.functional.normalize(backbone.train()(faces), dim=1)
    backbone.eval()
    assert (evaluated * trained).sum(dim=1).mean() > 0.98


def test_the_head_starts_at_each_identitys_mean_direction(warm, small_faces):
    index = warm.train_index
    vectors = file_embeddings(small_faces, index.paths)
    weight = torch.nn.functional.normalize(warm.objective.head.weight.detach(), dim=1).numpy()
    for label in range(index.num_classes):
        mean = vectors[index.labels == label][:IMPRINT_FACES].mean(axis=0)
        assert weight[label] @ (mean / np.linalg.norm(mean)) > 0.9999


def test_a_warm_start_begins_with_a_far_lower_loss_than_random_weights(
    warm, small_faces, tmp_path, one_thread
):
    cold = Trainer(config(small_faces, tmp_path / "cold", init_from=None))
    images, labels = next(iter(warm._loader(0, 0)))

    def loss(trainer: Trainer) -> float:
        trainer.backbone.train()
        with torch.no_grad():
            return float(trainer.model(images, labels)[0])

    assert loss(warm) < 0.6 * loss(cold)


def test_a_resumed_warm_run_takes_its_weights_from_the_checkpoint(small_faces, tmp_path):
    run = tmp_path / "run"
    first = Trainer(config(small_faces, run, lr=0.1))
    first.fit(stop_after_steps=2)
    trained = {k: v.clone() for k, v in first.backbone.state_dict().items()}
    resumed = Trainer(config(small_faces, run, lr=0.1))
    assert resumed.state.global_step == 2
    assert resumed.initialised_from == first.initialised_from
    for key, value in resumed.backbone.state_dict().items():
        assert torch.equal(value, trained[key]), key
    # Two steps at lr 0.1 moved the weights off the file's: the resume did not reload it.
    fresh = Trainer(config(small_faces, tmp_path / "fresh", lr=0.1)).backbone.state_dict()
    assert any(not torch.equal(fresh[k], trained[k]) for k in trained)


def test_the_exported_continuation_names_the_model_it_started_from(small_faces, tmp_path):
    from export.from_checkpoint import export_checkpoint
    from export.inspect_model import format_contract

    run = tmp_path / "run"
    trainer = Trainer(config(small_faces, run))
    trainer.fit(stop_after_steps=1)
    contract = export_checkpoint(
        run / "checkpoint.pt", tmp_path / "next.onnx", None, small_faces, report=lambda _: None
    )
    parent = Embedder(SHIPPED).contract.model_id
    assert contract.training.initialised_from == parent
    assert contract.model_id != parent
    assert f"started from model {parent}" in format_contract(contract)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"backbone": "iresnet18"}, "mobilefacenet-128"),
        ({"embedding_dim": 64}, "mobilefacenet-128"),
        ({"init_from": MODELS / "mtcnn_onet.onnx"}, "no facemargin contract"),
    ],
)
def test_a_file_that_is_not_this_network_is_refused(small_faces, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        Trainer(config(small_faces, tmp_path / "run", **change))
