"""`facemargin export CHECKPOINT OUT.onnx`: the embedding network, its contract, its parity
proof and its calibrated thresholds, in one file that appears only when all of them hold."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import onnx

from export.calibration import ValidationData, measure
from export.onnx_model import (
    DEFAULT_OPSET,
    export_embedding_network,
    file_sha256,
    weights_id,
    write_contract,
)
from export.parity import FP32_MIN_COSINE, checkpoint_embeddings, compare, parity_faces
from service.alignment import TEMPLATE_NAME
from service.contract import ModelContract, Objective, TrainingSummary
from service.embedder import Embedder
from training.backbones import count_macs, count_parameters
from training.config import TrainConfig
from training.data import index_faces
from training.embedder import backbone_from_payload, read_checkpoint


def exporter_name() -> str:
    try:
        return f"facemargin {version('facemargin')}"
    except PackageNotFoundError:
        return "facemargin (source tree)"


def training_summary(
    payload: dict, config: TrainConfig, checkpoint: Path, data_name: str | None
) -> TrainingSummary:
    state = payload.get("state", {})
    images = None
    if config.data.is_dir():
        trained = set(payload["identities"])
        index = index_faces(config.data, config.min_images, config.max_identities)
        images = sum(1 for label in index.labels if index.identities[label] in trained)
    return TrainingSummary(
        data=data_name or config.data.name,
        identities=len(payload["identities"]),
        images=images,
        epochs=state.get("epoch"),
        steps=state.get("global_step"),
        seed=config.seed,
        checkpoint_sha256=file_sha256(checkpoint),
        initialised_from=payload.get("initialised_from"),
    )


def export_checkpoint(
    checkpoint: Path,
    out: Path,
    validation: ValidationData | None,
    parity_root: Path | None = None,
    data_name: str | None = None,
    opset: int = DEFAULT_OPSET,
    threads: int | None = None,
    progress: bool = True,
    report: Callable[[str], None] = print,
) -> ModelContract:
    payload = read_checkpoint(checkpoint)
    backbone, config = backbone_from_payload(payload)
    partial = out.with_name(out.name + ".partial")
    try:
        export_embedding_network(backbone, partial, opset)
        contract = ModelContract(
            model_id=weights_id(onnx.load(str(partial))),
            embedding_dim=config.embedding_dim,
            alignment_template=TEMPLATE_NAME,
            backbone=config.backbone,
            parameters=count_parameters(backbone),
            macs=count_macs(backbone),
            objective=Objective(
                head=config.head,
                head_params=config.head_params,
                loss=config.loss,
                loss_params=config.loss_params,
            ),
            training=training_summary(payload, config, checkpoint, data_name),
            source=checkpoint.name,
            exported_at=datetime.now(UTC),
            exporter=exporter_name(),
        )
        write_contract(partial, contract)
        embedder = Embedder(partial, threads=threads)
        faces = parity_faces(validation, parity_root)
        parity = compare(
            checkpoint_embeddings(backbone, faces),
            embedder,
            faces,
            "PyTorch checkpoint",
            FP32_MIN_COSINE,
            report=report,
        )
        contract = contract.model_copy(update={"parity": parity})
        if validation is not None:
            measured = measure(embedder, validation, progress)
            contract = contract.model_copy(
                update={"calibration": measured.calibration, "validation": measured.validations}
            )
        write_contract(partial, contract)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return contract
