"""Objectives compared from a pretrained start: a frozen trunk, its features cached once, and
the last stage plus a fresh embedding layer trained per objective.

Why this protocol (docs/loss-comparison/README.md, "From a pretrained start"): from random
weights at a CPU budget, objectives differ mostly in how fast they start. Here every run gets
the same strong features (the trunk of a pretrained embedder, frozen, so computed once for
every face and its mirror image), the same trainable parameters (the network's last stage
from its pretrained weights, then a fresh linear embedding layer and batch norm, seeded
alike), the same batches, schedule and evaluation; only the objective that shapes the
embedding space differs. Caching the trunk makes a run cost about 2% of a full fine-tune
step per face, so all identities and several epochs fit this machine.

    facemargin compare-stage CONFIG.toml --protocol PROTOCOL.toml --data ALIGNED_TRAIN \\
        --cfp CFP --aligned ALIGNED_CFP --cache CACHE --out RUN

CONFIG is one of docs/loss-comparison/configs (only its objective is read: head, head_params,
loss, loss_params); PROTOCOL names the model, the cut and the schedule. The run folder gets
config.json, metrics.jsonl, checkpoint.pt (per epoch; a rerun resumes) and eval/ as
`facemargin evaluate` writes it, so `python -m training.comparison` tables it.
"""

from __future__ import annotations

import json
import os
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from tqdm import tqdm

from training.config import TrainConfig
from training.data import (
    index_faces,
    pk_batches,
    shuffled_batches,
    split_by_identity,
)
from training.held_out import held_out_accuracy
from training.objective import Objective
from training.onnx_network import OnnxNetwork
from training.protocols import read_cfp
from training.scoring import (
    OpenSetRun,
    ProtocolRun,
    cfp_frontal_open_set,
    images_by_root,
    score_embeddings,
)
from training.trainer import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    learning_rate,
)
from training.trunk import StageNetwork, reference_stage, split_network, trunk_features

OBJECTIVE_KEYS = ("head", "head_params", "loss", "loss_params")
# A config holding `reference = true` evaluates the pretrained network as it is: the row
# every objective is read against.
REFERENCE_KEY = "reference"


class StageProtocol(BaseModel):
    """What every objective shares."""

    model_config = ConfigDict(extra="forbid")

    model: Path = Field(description="A contract ONNX embedder (the shipped 0095).")
    trunk_output: str = Field(description="The tensor where the frozen trunk ends.")
    stage_output: str = Field(description="The tensor the fresh embedding layer reads.")
    embedding_dim: int = Field(256, gt=0)
    epochs: int = Field(3, gt=0)
    batch_size: int = Field(128, gt=1)
    images_per_identity: int = Field(4, ge=2)
    lr: float = Field(0.05, gt=0)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.5
    grad_clip: float = 5.0
    seed: int = 0
    held_out: float = 0.1
    min_images: int = 2
    val_pairs: int = 2000
    log_every: int = 20


def load_protocol(path: Path) -> StageProtocol:
    with path.open("rb") as f:
        values = tomllib.load(f)
    protocol = StageProtocol(**values)
    if not protocol.model.is_absolute():
        # Relative to the repository (the protocol file lives in docs/), as the README runs it.
        protocol = protocol.model_copy(update={"model": Path.cwd() / protocol.model})
    return protocol


def read_objective(config: Path) -> dict[str, Any]:
    """An objective file's head/loss settings, or {"reference": True}."""
    with config.open("rb") as f:
        values = tomllib.load(f)
    unknown = set(values) - {*OBJECTIVE_KEYS, REFERENCE_KEY}
    if unknown:
        raise ValueError(
            f"{config}: only {', '.join(OBJECTIVE_KEYS)} are read, not {sorted(unknown)}"
        )
    if values.get("head") in ("none", ""):
        values["head"] = None
    return values


# -- one run --------------------------------------------------------------------------------
def _embed(network: nn.Module, features: np.ndarray, found: np.ndarray) -> np.ndarray:
    """L2-normalised embeddings, NaN rows where no face was found."""
    network.eval()
    rows = []
    with torch.no_grad():
        for start in range(0, len(features), 256):
            x = torch.from_numpy(np.asarray(features[start : start + 256], dtype=np.float32))
            rows.append(nn.functional.normalize(network(x).flatten(1), dim=1).numpy())
    out = np.concatenate(rows)
    out[~found] = np.nan
    return out


class StageRun:
    """One objective's run: trains the stage on cached trunk features, resumes per epoch,
    evaluates on CFP like `facemargin evaluate`."""

    def __init__(
        self,
        config: Path,
        protocol: StageProtocol,
        data: Path,
        cache: Path,
        out: Path,
        protocols: list[ProtocolRun],
        open_sets: list[OpenSetRun],
    ) -> None:
        self.protocol, self.out, self.name = protocol, out, config.stem
        p = protocol
        objective = read_objective(config)
        self.reference = bool(objective.pop(REFERENCE_KEY, False))
        self.config = TrainConfig(
            data=data,
            out=out,
            backbone="onnx",
            init_from=p.model,
            embedding_dim=p.embedding_dim,
            epochs=p.epochs,
            batch_size=p.batch_size,
            images_per_identity=p.images_per_identity,
            lr=p.lr,
            momentum=p.momentum,
            weight_decay=p.weight_decay,
            warmup_epochs=p.warmup_epochs,
            grad_clip=p.grad_clip,
            seed=p.seed,
            held_out=p.held_out,
            min_images=p.min_images,
            val_pairs=p.val_pairs,
            num_workers=0,
            device="cpu",
            log_every=p.log_every,
            **objective,
        )
        full = index_faces(data, p.min_images)
        self.train_index, self.val_index = split_by_identity(full, p.held_out, p.seed)
        trunk, stage, convention, _ = split_network(p.model, p.trunk_output, p.stage_output)
        self.features = trunk_features(
            trunk, convention, data, list(self.train_index.paths), cache
        )[0]
        self.mirrored = trunk_features(
            trunk, convention, data, list(self.train_index.paths), cache, mirror=True
        )[0]
        self.val_features = trunk_features(
            trunk, convention, data, list(self.val_index.paths), cache
        )[0]
        self.eval_protocols, self.eval_open_sets = protocols, open_sets
        self.eval_features = {
            root: (paths, *trunk_features(trunk, convention, root, paths, cache))
            for root, paths in images_by_root(protocols, open_sets).items()
        }

        torch.manual_seed(p.seed)  # the same fresh layers in every run
        if self.reference:
            self.network: nn.Module = OnnxNetwork(reference_stage(p.model, p.trunk_output))
        else:
            channels = OnnxNetwork(stage)(torch.from_numpy(self.features[:1].astype(np.float32)))
            self.network = StageNetwork(stage, channels.flatten(1).shape[1], p.embedding_dim)
        self.objective = Objective(self.config, self.train_index.num_classes)
        self.optimizer = torch.optim.SGD(
            [*self.network.parameters(), *self.objective.parameters()],
            lr=p.lr,
            momentum=p.momentum,
            weight_decay=p.weight_decay,
        )
        self.epoch, self.step = 0, 0
        self.steps_per_epoch = len(self._batches(0))
        out.mkdir(parents=True, exist_ok=True)
        recorded = self.config.model_dump(mode="json") | {REFERENCE_KEY: self.reference}
        if self.reference:
            recorded |= dict.fromkeys(OBJECTIVE_KEYS)
        (out / "config.json").write_text(json.dumps(recorded, indent=2) + "\n")
        self._resume()

    def _batches(self, epoch: int) -> list[list[int]]:
        c = self.config
        if c.metric_batches:
            return pk_batches(
                self.train_index.labels,
                c.batch_size // c.images_per_identity,
                c.images_per_identity,
                c.seed,
                epoch,
            )
        return shuffled_batches(len(self.train_index), c.batch_size, c.seed, epoch)

    def _resume(self) -> None:
        path = self.out / CHECKPOINT_NAME
        if not path.exists():
            return
        payload = torch.load(path, weights_only=False)
        self.network.load_state_dict(payload["network"])
        self.objective.load_state_dict(payload["objective"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.epoch, self.step = payload["epoch"], payload["step"]

    def _save(self) -> None:
        path = self.out / CHECKPOINT_NAME
        payload = {
            "network": self.network.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
        }
        torch.save(payload, path.with_suffix(".partial"))
        os.replace(path.with_suffix(".partial"), path)

    def _log(self, record: dict[str, Any]) -> None:
        with (self.out / METRICS_NAME).open("a") as f:
            f.write(json.dumps(record) + "\n")

    def _validate(self) -> None:
        features = self.val_features
        mean, std, n = held_out_accuracy(
            lambda used: _embed(self.network, features[used], np.ones(len(used), bool)),
            self.val_index,
            self.protocol.val_pairs,
            self.protocol.seed,
        )
        self._log(
            {
                "kind": "val",
                "epoch": self.epoch,
                "step": self.step,
                "val_accuracy": round(mean, 4),
                "val_accuracy_std": round(std, 4),
                "val_pairs": n,
            }
        )
        tqdm.write(f"{self.name} epoch {self.epoch}: held-out accuracy {mean:.4f} ± {std:.4f}")

    def fit(self) -> None:
        if self.reference:
            if self.epoch == 0:
                self._validate()
                self.epoch = self.config.epochs
            return
        if self.epoch == 0 and self.step == 0:
            self._validate()
        total = self.steps_per_epoch * self.config.epochs
        while self.epoch < self.config.epochs:
            self.network.train()
            self.objective.train()
            mirror_rng = np.random.default_rng([self.config.seed, self.epoch, 3])
            batches = self._batches(self.epoch)
            mirrored = mirror_rng.random(len(self.train_index)) < 0.5
            bar = tqdm(batches, desc=f"{self.name} epoch {self.epoch + 1}", unit="batch")
            tick = time.perf_counter()
            for n, batch in enumerate(bar, start=1):
                rows = np.asarray(batch)
                x = np.where(
                    mirrored[rows, None, None, None], self.mirrored[rows], self.features[rows]
                )
                labels = torch.from_numpy(self.train_index.labels[rows])
                loss, logits = self._step(torch.from_numpy(x.astype(np.float32)), labels, total)
                self.step += 1
                if self.step % self.config.log_every == 0:
                    record = {
                        "kind": "train",
                        "epoch": self.epoch + 1,
                        "step": self.step,
                        "loss": round(loss, 5),
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "images_per_s": round(n * len(batch) / (time.perf_counter() - tick), 1),
                    }
                    if logits is not None:
                        record["accuracy"] = round(
                            float((logits.argmax(1) == labels).float().mean()), 4
                        )
                    self._log(record)
                    bar.set_postfix(loss=f"{loss:.3f}")
            self.epoch += 1
            self._validate()
            self._save()

    def _step(
        self, x: torch.Tensor, labels: torch.Tensor, total: int
    ) -> tuple[float, torch.Tensor | None]:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, self.step, total, self.steps_per_epoch)
        loss, logits = self.objective(self.network(x), labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{self.name}: loss became {loss.item()} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.network.parameters(), self.config.grad_clip)
        self.optimizer.step()
        return float(loss.detach()), logits

    def evaluate(self) -> dict[str, Any]:
        vectors = {
            root: dict(zip(paths, _embed(self.network, features, found), strict=True))
            for root, (paths, features, found) in self.eval_features.items()
        }
        report = {"run": self.name, "flip": False}
        report |= score_embeddings(
            vectors,
            self.eval_protocols,
            self.eval_open_sets,
            self.out / "eval",
            title=f"{self.name}: ROC",
        )
        (self.out / "eval" / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        return report


def cfp_runs(cfp: Path, aligned: Path) -> tuple[list[ProtocolRun], list[OpenSetRun]]:
    """CFP's frontal-frontal and frontal-profile pairs and its frontal open set."""
    return (
        [ProtocolRun(read_cfp(cfp, split), aligned) for split in ("FF", "FP")],
        [cfp_frontal_open_set(cfp, aligned)],
    )
