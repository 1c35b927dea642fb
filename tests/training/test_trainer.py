"""The training loop on real aligned faces: every objective trains, resume is exact, logs and
plots are written, bad configurations are refused."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from service.cli import main
from tests.conftest import REPO
from training.config import TrainConfig, load_config
from training.embedder import load_backbone
from training.trainer import CHECKPOINT_NAME, CURVES_NAME, METRICS_NAME, Trainer, learning_rate


def tiny_config(data: Path, out: Path, **changes) -> TrainConfig:
    values = {
        "data": data,
        "out": out,
        "backbone": "mobilefacenet",
        "embedding_dim": 64,
        "head": "cosface",
        "batch_size": 16,
        "epochs": 2,
        "lr": 0.05,
        "warmup_epochs": 0.5,
        "held_out": 0.2,
        "val_pairs": 60,
        "num_workers": 0,
        "device": "cpu",
        "log_every": 2,
    }
    return TrainConfig(**(values | changes))


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / METRICS_NAME).read_text().splitlines()]


@pytest.mark.slow
def test_resume_after_a_kill_matches_an_uninterrupted_run(small_faces, tmp_path):
    straight = Trainer(
        tiny_config(small_faces, tmp_path / "straight", head="sphereface", dropout=0.2)
    )
    straight.fit()

    config = tiny_config(small_faces, tmp_path / "resumed", head="sphereface", dropout=0.2)
    Trainer(config).fit(stop_after_steps=straight.steps_per_epoch + 3)  # killed mid-epoch 2
    resumed = Trainer(config)
    assert (resumed.state.epoch, resumed.state.step_in_epoch) == (1, 3)
    resumed.fit()

    for name, tensor in straight.backbone.state_dict().items():
        assert torch.equal(tensor, resumed.backbone.state_dict()[name]), name
    assert float(straight.objective.head.lambda_) == float(resumed.objective.head.lambda_)
    assert (
        records(tmp_path / "straight")[-1]["val_accuracy"]
        == records(tmp_path / "resumed")[-1]["val_accuracy"]
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("head", "loss", "params"),
    [
        ("softmax", None, {}),
        ("wnorm_softmax", None, {}),
        ("lsoftmax", None, {"head_params": {"m": 2}}),
        ("sphereface", None, {}),
        ("fnorm_sphereface", None, {}),
        ("cosface", None, {}),
        ("arcface", None, {}),
        ("combined", None, {"head_params": {"m1": 1.2, "m2": 0.2, "m3": 0.1}}),
        ("softmax", "center", {}),
        (None, "triplet", {"loss_params": {"mining": "hard"}}),
        (None, "triplet", {"loss_params": {"mining": "semihard"}}),
        (None, "contrastive", {}),
    ],
)
def test_every_objective_trains_a_few_steps(small_faces, tmp_path, head, loss, params):
    trainer = Trainer(tiny_config(small_faces, tmp_path, head=head, loss=loss, epochs=1, **params))
    before = {k: v.clone() for k, v in trainer.backbone.state_dict().items()}
    trainer.fit(stop_after_steps=3)
    logged = [r for r in records(tmp_path) if r["kind"] == "train"]
    assert logged and all(torch.isfinite(torch.tensor(r["loss"])) for r in logged)
    changed = [k for k, v in trainer.backbone.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "no backbone weight moved"
    assert (tmp_path / CHECKPOINT_NAME).exists()


@pytest.mark.slow
def test_epoch_writes_validation_curves_and_annealing(small_faces, tmp_path):
    trainer = Trainer(tiny_config(small_faces, tmp_path, head="sphereface", epochs=1))
    result = trainer.fit()
    assert 0.0 <= result["val_accuracy"] <= 1.0 and result["val_pairs"] > 0
    train = [r for r in records(tmp_path) if r["kind"] == "train"]
    lambdas = [r["lambda"] for r in train]
    assert lambdas == sorted(lambdas, reverse=True) and lambdas[0] > lambdas[-1]
    assert (tmp_path / CURVES_NAME).stat().st_size > 10_000
    backbone, config = load_backbone(tmp_path / CHECKPOINT_NAME)
    assert config.head == "sphereface" and not backbone.training
    assert backbone(torch.zeros(2, 3, 112, 112)).shape == (2, 64)


def test_changed_configuration_refuses_to_resume(small_faces, tmp_path):
    Trainer(tiny_config(small_faces, tmp_path, epochs=1)).fit(stop_after_steps=1)
    # More epochs is a legitimate continuation; another head is not.
    Trainer(tiny_config(small_faces, tmp_path, epochs=3))
    with pytest.raises(ValueError, match="different configuration"):
        Trainer(tiny_config(small_faces, tmp_path, head="arcface"))


def test_warmup_then_cosine_schedule(tmp_path):
    config = TrainConfig(data=tmp_path, out=tmp_path, lr=0.1, warmup_epochs=1, epochs=3)
    lrs = [learning_rate(config, step, total_steps=30, steps_per_epoch=10) for step in range(30)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)
    assert all(a > b for a, b in itertools.pairwise(lrs[10:]))
    assert lrs[-1] < 0.002


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"head": None}, "without a head"),
        ({"head": None, "loss": "center"}, "without a head"),
        ({"head": None, "loss": "triplet", "batch_size": 10, "images_per_identity": 4}, "multiple"),
        ({"lr": -1}, "greater than 0"),
        ({"optimizer": "rmsprop"}, "sgd"),
        ({"unknown_field": 1}, "Extra inputs"),
    ],
)
def test_bad_configurations_are_refused(tmp_path, changes, message):
    with pytest.raises(ValidationError, match=message):
        TrainConfig(**({"data": tmp_path, "out": tmp_path} | changes))


def test_toml_file_and_flags_combine(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'backbone = "iresnet50"\nepochs = 7\nhead = "arcface"\n[head_params]\ns = 32.0\n'
    )
    config = load_config(path, {"data": tmp_path, "out": tmp_path, "epochs": 3, "lr": None})
    assert (config.backbone, config.epochs, config.head_params, config.lr) == (
        "iresnet50",
        3,
        {"s": 32.0},
        0.1,
    )


@pytest.mark.slow
def test_train_command(small_faces, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", str(small_faces), "--out", str(out), "--backbone", "mobilefacenet"]
    argv += ["--embedding-dim", "32", "--head", "arcface", "--head-param", "s=32", "--epochs", "1"]
    argv += ["--batch-size", "16", "--num-workers", "0", "--val-pairs", "40", "--device", "cpu"]
    argv += ["--augmentation", "strong"]
    assert main(argv) == 0
    assert "held-out verification accuracy" in capsys.readouterr().out
    saved = json.loads((out / "config.json").read_text())
    assert saved["head_params"] == {"s": 32.0} and saved["backbone"] == "mobilefacenet"
    assert saved["augmentation"] == "strong"


@pytest.mark.slow
def test_data_parallel_training_under_torchrun(small_faces, tmp_path):
    """Two CPU processes (gloo) train one model; rank 0 writes the checkpoint and log."""
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
    ]
    command += ["-m", "service.cli", "train", "--data", str(small_faces), "--out", str(out)]
    command += ["--backbone", "mobilefacenet", "--embedding-dim", "32", "--head", "cosface"]
    command += ["--epochs", "1", "--batch-size", "8", "--num-workers", "0", "--device", "cpu"]
    command += ["--val-pairs", "40", "--held-out", "0.2"]
    subprocess.run(
        command, check=True, cwd=REPO, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"}
    )
    state = torch.load(out / CHECKPOINT_NAME, weights_only=False)["state"]
    single = Trainer(tiny_config(small_faces, tmp_path / "single", batch_size=8, epochs=1))
    # Each rank trains its half of the epoch's batches: half the steps of a single process.
    assert state["global_step"] == len(single._batches(0)) // 2 and state["epoch"] == 1
    assert [r["epoch"] for r in records(out) if r["kind"] == "val"] == [0, 1]
