"""The loss comparison from a pretrained start: the shipped OMZ model split at its last stage,
trunk features cached once, the stage trained per objective on real faces aligned to its
template, scored as `facemargin evaluate` scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.wrap import unwrap
from service.vision.alignment import OMZ_128
from service.vision.embedder import Embedder
from tests.conftest import MODELS, REPO, prepare_subset
from tests.export.conftest import all_pairs, balanced
from training.data import index_faces, load_rgb
from training.frozen_trunk import (
    StageProtocol,
    StageRun,
    load_protocol,
    read_objective,
)
from training.onnx_network import OnnxNetwork
from training.protocols import read_pairs_list
from training.scoring import ProtocolRun
from training.trainer import CHECKPOINT_NAME, METRICS_NAME
from training.trunk import split_network, trunk_features

OMZ = MODELS / "face-reidentification-retail-0095.onnx"
PUBLISHED = REPO / "docs" / "loss-comparison" / "pretrained"


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return prepare_subset(
        tmp_path_factory.mktemp("stage"), 12, 5, offset=700, template_name=OMZ_128.name
    )


@pytest.fixture(scope="module")
def pairs(faces) -> ProtocolRun:
    path = faces.parent / "pairs.txt"
    path.write_text("\n".join(balanced(all_pairs(faces))) + "\n")
    return ProtocolRun(read_pairs_list(path), faces)


def protocol(**changes) -> StageProtocol:
    published = load_protocol(PUBLISHED / "protocol.toml")
    return published.model_copy(
        update=dict(epochs=2, batch_size=16, held_out=0.25, val_pairs=20, log_every=1) | changes
    )


def objective_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "objective.toml"
    path.write_text(text)
    return path


def test_the_split_at_the_published_cut_is_the_whole_network(faces):
    p = load_protocol(PUBLISHED / "protocol.toml")
    trunk, stage, convention, _ = split_network(OMZ, p.trunk_output, p.stage_output)
    paths = list(index_faces(faces).paths[:6])
    features, found = trunk_features(trunk, convention, faces, paths, faces.parent / "cache")
    assert found.all() and features.shape == (6, 128, 8, 8)

    # Trunk, then the stage and the network's own embedding layer, as torch runs them, give
    # what the served file gives for the same faces.
    graph, _ = unwrap(onnx.load(OMZ))
    whole = [n for n in graph.graph.node]
    head = next(n for n in whole if p.stage_output in n.input)
    stage_out = OnnxNetwork(stage)(torch.from_numpy(np.asarray(features, np.float32)))
    weight = next(t for t in graph.graph.initializer if t.name == head.input[1])
    embedding = torch.nn.functional.conv2d(
        stage_out, torch.from_numpy(onnx.numpy_helper.to_array(weight).copy())
    ).flatten(1)
    ours = torch.nn.functional.normalize(embedding, dim=1).detach().numpy()
    crops = np.stack([load_rgb(faces / path, 128) for path in paths])
    served = Embedder(OMZ).embed(crops).vectors
    # float16 features: the cache costs at most this much of a cosine.
    assert (ours * served).sum(axis=1).min() > 0.9995


def test_the_feature_cache_is_computed_once_and_mirrors_the_face(faces, tmp_path):
    p = load_protocol(PUBLISHED / "protocol.toml")
    trunk, _, convention, _ = split_network(OMZ, p.trunk_output, p.stage_output)
    paths = [*index_faces(faces).paths[:3], "nobody/01.png"]
    cache = tmp_path / "cache"
    features, found = trunk_features(trunk, convention, faces, paths, cache)
    assert found.tolist() == [True, True, True, False] and not np.any(features[3])
    written = {f: f.stat().st_mtime_ns for f in cache.iterdir()}
    again, _ = trunk_features(trunk, convention, faces, paths, cache)
    assert {f: f.stat().st_mtime_ns for f in cache.iterdir()} == written
    assert np.array_equal(again, features)

    mirrored, _ = trunk_features(trunk, convention, faces, paths, cache, mirror=True)
    session = ort.InferenceSession(trunk.SerializeToString(), providers=["CPUExecutionProvider"])
    flipped = load_rgb(faces / paths[0], 128)[:, ::-1, ::-1].astype(np.float32)  # BGR, mirrored
    expected = session.run(None, {session.get_inputs()[0].name: flipped.transpose(2, 0, 1)[None]})
    assert np.allclose(mirrored[0], expected[0][0], atol=2e-2, rtol=2e-3)
    assert not np.allclose(mirrored[0], features[0], atol=0.5)


def test_objective_files_hold_only_an_objective(tmp_path):
    assert read_objective(objective_file(tmp_path, 'head = "none"\nloss = "triplet"\n')) == {
        "head": None,
        "loss": "triplet",
    }
    with pytest.raises(ValueError, match="only head"):
        read_objective(objective_file(tmp_path, 'head = "cosface"\nlr = 0.1\n'))
    published = sorted((PUBLISHED / "configs").glob("*.toml"))
    assert len(published) == 15  # the reference, the twelve of losses.md, two slow anneals
    for path in published:
        read_objective(path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "objective",
    [
        'head = "cosface"\n[head_params]\ns = 30.0\nm = 0.35\n',
        'head = "none"\nloss = "triplet"\n[loss_params]\nmining = "hard"\nmargin = 0.2\n',
    ],
    ids=["cosface", "triplet"],
)
def test_an_objective_trains_the_stage_resumes_and_is_scored(faces, pairs, tmp_path, objective):
    config = objective_file(tmp_path, objective)
    out, cache = tmp_path / "run", tmp_path / "cache"
    run = StageRun(config, protocol(), faces, cache, out, [pairs], [])
    start = {k: v.clone() for k, v in run.network.state_dict().items()}
    run.fit()
    records = [json.loads(line) for line in (out / METRICS_NAME).read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "val"] == [0, 1, 2]
    assert all(np.isfinite(r["loss"]) for r in records if r["kind"] == "train")
    trained = run.network.state_dict()
    moved = [k for k in start if not torch.equal(start[k], trained[k])]
    assert any(k.startswith("stage.") for k in moved) and "embedding.weight" in moved

    # A new process finds the finished run in its checkpoint and trains nothing more.
    resumed = StageRun(config, protocol(), faces, cache, out, [pairs], [])
    assert (resumed.epoch, resumed.step) == (2, run.step)
    resumed.fit()
    assert len((out / METRICS_NAME).read_text().splitlines()) == len(records)
    assert (out / CHECKPOINT_NAME).exists()

    report = resumed.evaluate()
    name = pairs.protocol.name
    assert report["verification"][name]["n_pairs"] == len(pairs.protocol.same)
    assert json.loads((out / "eval" / "report.json").read_text()) == report
    assert (out / "eval" / f"scores-{name}.npz").exists()
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["reference"] is False and recorded["init_from"].endswith(OMZ.name)


def test_the_reference_run_scores_the_served_model(faces, pairs, tmp_path):
    """The untouched network through the cache gives the served file's pair scores."""
    config = objective_file(tmp_path, "reference = true\n")
    run = StageRun(config, protocol(), faces, tmp_path / "cache", tmp_path / "run", [pairs], [])
    run.fit()
    report = run.evaluate()
    with np.load(tmp_path / "run" / "eval" / f"scores-{pairs.protocol.name}.npz") as saved:
        ours = saved["scores"]
    paths = sorted(set(pairs.protocol.images))
    crops = np.stack([load_rgb(faces / p, 128) for p in paths])
    vectors = dict(zip(paths, Embedder(OMZ).embed(crops).vectors, strict=True))
    served = np.array(
        [
            vectors[a] @ vectors[b]
            for a, b in zip(pairs.protocol.left, pairs.protocol.right, strict=True)
        ]
    )
    assert np.abs(ours - served).max() < 2e-3
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["reference"] is True and recorded["head"] is None
    assert report["verification"][pairs.protocol.name]["accuracy"] > 0.8
