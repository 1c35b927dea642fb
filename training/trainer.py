"""The training loop: objective, schedule, checkpoints that resume exactly, logs and plots."""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.backbones import build_backbone
from training.config import TrainConfig
from training.data import (
    BatchList,
    FaceDataset,
    index_faces,
    pk_batches,
    shuffled_batches,
    split_by_identity,
)
from training.embedder import embed_dataset
from training.held_out import held_out_accuracy
from training.objective import Objective, TrainStep
from training.onnx_network import ONNX_BACKBONE, ForeignBackbone
from training.plots import plot_curves
from training.warm_start import check_foreign, class_means, load_exported, open_exported

# Faces whose statistics re-express a warm start's folded batch norms (one forward pass).
WARM_START_FACES = 256
# Faces per identity whose mean embedding imprints a warm start's head.
IMPRINT_FACES = 4

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"


def learning_rate(config: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Linear warm-up, then cosine decay to zero, per iteration."""
    warmup = int(config.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(total_steps - warmup, 1)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def pick_device(config: TrainConfig) -> torch.device:
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda was asked for but CUDA is not available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


@dataclass
class RunState:
    epoch: int = 0  # the epoch in progress (or next to start)
    step_in_epoch: int = 0  # batches of that epoch already trained
    global_step: int = 0


class Trainer:
    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.device = pick_device(config)
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.distributed and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.rank = torch.distributed.get_rank() if self.distributed else 0
        self.world = torch.distributed.get_world_size() if self.distributed else 1

        seed_everything(config.seed)
        full = index_faces(config.data, config.min_images, config.max_identities)
        if full.num_classes < 2:
            raise ValueError(
                f"{config.data}: need at least 2 identities with {config.min_images}+ images"
            )
        self.train_index, self.val_index = split_by_identity(full, config.held_out, config.seed)
        self.dataset = FaceDataset(self.train_index, config.augmentation, seed=config.seed)

        self.backbone = self._build_backbone()
        self.objective = Objective(config, self.train_index.num_classes)
        # The model id of the exported model this run started from, if any.
        self.initialised_from: str | None = None
        if config.init_from is not None and not self.checkpoint_path.exists():
            self._warm_start(config.init_from)
        self.backbone.to(self.device)
        # The starting weights, for L2-SP and for the drift every train record reports;
        # a resumed run reads them from its checkpoint.
        self.start: dict[str, torch.Tensor] | None = (
            {n: p.detach().clone() for n, p in self.backbone.named_parameters()}
            if config.init_from is not None
            else None
        )
        self.objective.to(self.device)
        self.amp = config.amp and self.device.type == "cuda"
        self.model: nn.Module = TrainStep(self.backbone, self.objective, self.amp)
        if self.distributed:
            self.model = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
            )
        # L2-SP replaces the backbone's decay towards zero by its pull towards the start.
        backbone_decay = 0.0 if config.l2sp else config.weight_decay
        groups = [
            {
                "params": [p for p in self.backbone.parameters() if p.requires_grad],
                "weight_decay": backbone_decay,
            },
            {"params": [p for p in self.objective.parameters() if p.requires_grad]},
        ]
        groups = [g for g in groups if g["params"]]
        if config.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
            )
        else:
            self.optimizer = torch.optim.AdamW(
                groups, lr=config.lr, weight_decay=config.weight_decay
            )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.state = RunState()
        self.steps_per_epoch = len(self._batches(0))
        self.total_steps = self.steps_per_epoch * config.epochs
        config.out.mkdir(parents=True, exist_ok=True)
        self._resume()

    # -- data -------------------------------------------------------------------------------
    def _batches(self, epoch: int) -> list[list[int]]:
        c = self.config
        if c.metric_batches:
            batches = pk_batches(
                self.train_index.labels,
                c.batch_size // c.images_per_identity,
                c.images_per_identity,
                c.seed,
                epoch,
            )
        else:
            batches = shuffled_batches(len(self.train_index), c.batch_size, c.seed, epoch)
        # Each rank trains its own share of the same epoch plan; equal shares, or the rank
        # with one batch more would wait forever in the gradient all-reduce.
        batches = batches[: len(batches) - len(batches) % self.world]
        return batches[self.rank :: self.world]

    def _loader(self, epoch: int, skip: int) -> DataLoader:
        self.dataset.epoch = epoch
        return DataLoader(
            self.dataset,
            batch_sampler=BatchList(self._batches(epoch)[skip:]),
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
            # A private generator: worker seeding must not consume the global RNG, or a resumed
            # run would draw different dropout masks from an uninterrupted one.
            generator=torch.Generator().manual_seed(self.config.seed),
        )

    def _build_backbone(self) -> nn.Module:
        c = self.config
        if c.backbone != ONNX_BACKBONE:
            return build_backbone(c.backbone, c.embedding_dim, c.dropout)
        assert c.init_from is not None  # the config refuses onnx without it
        return ForeignBackbone.from_file(c.init_from)

    # -- warm start -------------------------------------------------------------------------
    def _warm_start(self, path: Path) -> None:
        """Backbone from an exported model, head imprinted from its class means (see
        training/warm_start.py). Runs before the first checkpoint only: a resumed run takes
        everything from its checkpoint."""
        plain = FaceDataset(self.train_index)
        rng = np.random.default_rng([self.config.seed, 11])
        picked = rng.choice(len(plain), min(WARM_START_FACES, len(plain)), replace=False)
        faces = torch.stack([plain[int(i)][0] for i in picked])
        exported = open_exported(path)
        if isinstance(self.backbone, ForeignBackbone):
            check_foreign(self.backbone, self.config.embedding_dim, exported, faces)
        else:
            load_exported(
                self.backbone, self.config.backbone, self.config.embedding_dim, exported, faces
            )
        contract = exported.contract
        self.initialised_from = contract.model_id
        head = self.objective.head
        if head is not None:
            means = class_means(exported, self.train_index, IMPRINT_FACES)
            with torch.no_grad():
                head.weight.copy_(means.to(head.weight.dtype))
        if self.rank == 0:
            tqdm.write(f"started from {path} (model {contract.model_id}), head imprinted")

    # -- checkpoints ------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.config.out / CHECKPOINT_NAME

    def save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        payload = {
            "format": "facemargin-checkpoint-1",
            "config": self.config.model_dump(mode="json"),
            "identities": list(self.train_index.identities),
            "backbone": self.backbone.state_dict(),
            "objective": self.objective.state_dict(),
            "initialised_from": self.initialised_from,
            # A foreign network's structure lives in its file, not in our code: kept so the
            # checkpoint alone can be resumed, evaluated and exported.
            "init_model": getattr(self.backbone, "source", None),
            "start": self.start,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "state": vars(self.state).copy(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
        }
        partial = self.checkpoint_path.with_suffix(".partial")
        torch.save(payload, partial)
        os.replace(partial, self.checkpoint_path)  # a kill mid-save leaves the previous one intact

    def _resume(self) -> None:
        if not self.checkpoint_path.exists():
            return
        payload = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        saved = TrainConfig(**payload["config"])
        if saved.model_dump(
            exclude={"epochs", "num_workers", "device", "log_every"}
        ) != self.config.model_dump(exclude={"epochs", "num_workers", "device", "log_every"}):
            raise ValueError(
                f"{self.checkpoint_path} was written with a different configuration; use another --out"
            )
        self.backbone.load_state_dict(payload["backbone"])
        self.objective.load_state_dict(payload["objective"])
        if payload.get("start") is not None:
            self.start = {n: t.to(self.device) for n, t in payload["start"].items()}
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scaler.load_state_dict(payload["scaler"])
        self.state = RunState(**payload["state"])
        self.initialised_from = payload.get("initialised_from")
        torch.set_rng_state(payload["rng"]["torch"].cpu())
        if payload["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
        np.random.set_state(payload["rng"]["numpy"])
        random.setstate(payload["rng"]["python"])
        if self.rank == 0:
            tqdm.write(
                f"resuming {self.checkpoint_path}: epoch {self.state.epoch + 1}, "
                f"batch {self.state.step_in_epoch} of {self.steps_per_epoch}"
            )

    # -- logging ----------------------------------------------------------------------------
    def log(self, record: dict[str, Any]) -> None:
        if self.rank == 0:
            with (self.config.out / METRICS_NAME).open("a") as f:
                f.write(json.dumps(record) + "\n")

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, stop_after_steps: int | None = None) -> dict[str, Any]:
        """Train to the configured number of epochs (or stop early after a number of steps, as
        a killed run would) and return the last validation record."""
        last: dict[str, Any] = {}
        steps_run = 0
        if self.state.global_step == 0:
            # The untrained network's score on the same pairs: the baseline the curve rises from.
            self.validate(0, 0.0)
        while self.state.epoch < self.config.epochs:
            epoch = self.state.epoch
            self.backbone.train()
            self.objective.train()
            loader = self._loader(epoch, self.state.step_in_epoch)
            bar = tqdm(
                loader,
                total=self.steps_per_epoch,
                initial=self.state.step_in_epoch,
                desc=f"epoch {epoch + 1}/{self.config.epochs}",
                unit="batch",
                dynamic_ncols=True,
                disable=self.rank != 0,
            )
            tick, seen = time.perf_counter(), 0
            for images, labels in bar:
                loss, correct = self._step(images, labels)
                seen += len(labels)
                self.state.step_in_epoch += 1
                self.state.global_step += 1
                steps_run += 1
                if self.state.global_step % self.config.log_every == 0:
                    rate = seen / (time.perf_counter() - tick)
                    record = self._train_record(loss, correct, len(labels), rate)
                    self.log(record)
                    bar.set_postfix(
                        loss=f"{loss:.3f}", lr=f"{record['lr']:.2e}", img_s=f"{rate:.0f}"
                    )
                if (
                    self.config.checkpoint_every
                    and self.state.global_step % self.config.checkpoint_every == 0
                ):
                    self.save_checkpoint()
                if stop_after_steps is not None and steps_run >= stop_after_steps:
                    self.save_checkpoint()
                    return last
            bar.close()
            self.state = RunState(epoch + 1, 0, self.state.global_step)
            last = self.validate(epoch + 1, time.perf_counter() - tick)
            self.save_checkpoint()
            plot_curves(self.config.out / METRICS_NAME, self.config.out / CURVES_NAME)
        return last

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, int | None]:
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(
                self.config, self.state.global_step, self.total_steps, self.steps_per_epoch
            )
        loss, logits = self.model(images, labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {self.state.global_step}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.backbone.parameters(), self.config.grad_clip)
        self._pull_to_start()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        correct = int((logits.argmax(1) == labels).sum()) if logits is not None else None
        return float(loss.detach()), correct

    def _pull_to_start(self) -> None:
        """The gradient of L2-SP's (l2sp / 2)·||w - w_start||², added after unscaling and
        clipping, as SGD adds its weight decay: clipped with a large loss gradient, the pull
        would vanish exactly when the network moves most."""
        if not self.config.l2sp or self.start is None:
            return
        with torch.no_grad():
            for name, p in self.backbone.named_parameters():
                if p.grad is not None:
                    p.grad.add_(p - self.start[name], alpha=self.config.l2sp)

    @torch.no_grad()
    def drift(self) -> float | None:
        """||w - w_start|| / ||w_start|| over the backbone: how far fine-tuning has moved it."""
        if self.start is None:
            return None
        moved = sum(
            float((p - self.start[n]).pow(2).sum()) for n, p in self.backbone.named_parameters()
        )
        size = sum(float(t.pow(2).sum()) for t in self.start.values())
        return math.sqrt(moved / size)

    def _train_record(
        self, loss: float, correct: int | None, batch: int, rate: float
    ) -> dict[str, Any]:
        record: dict[str, Any] = {
            "kind": "train",
            "epoch": self.state.epoch + 1,
            "step": self.state.global_step,
            "loss": round(loss, 5),
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": round(rate * self.world, 1),
        }
        if correct is not None:
            record["accuracy"] = round(correct / batch, 4)
        drift = self.drift()
        if drift is not None:
            record["drift"] = round(drift, 6)
        head = self.objective.head
        if head is not None and hasattr(head, "lambda_"):
            record["lambda"] = float(head.lambda_)
        return record

    @torch.no_grad()
    def validate(self, epoch: int, seconds: float) -> dict[str, Any]:
        """Verification accuracy (10-fold) on pairs of identities never seen in training."""
        record: dict[str, Any] = {"kind": "val", "epoch": epoch, "step": self.state.global_step}
        record["epoch_seconds"] = round(seconds, 1)
        if self.rank == 0 and self.config.val_pairs and self.val_index.num_classes >= 2:
            index = self.val_index
            mean, std, n_pairs = held_out_accuracy(
                lambda used: embed_dataset(
                    self.backbone, index.root, [index.paths[i] for i in used], self.device
                ),
                index,
                self.config.val_pairs,
                self.config.seed,
            )
            record |= {
                "val_accuracy": round(mean, 4),
                "val_accuracy_std": round(std, 4),
                "val_pairs": n_pairs,
            }
            tqdm.write(f"epoch {epoch}: held-out verification accuracy {mean:.4f} ± {std:.4f}")
        self.log(record)
        return record


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
