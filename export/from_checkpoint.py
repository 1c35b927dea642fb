"""`facemargin export CHECKPOINT OUT.onnx`: the embedding network, its contract, its parity
proof and its calibrated thresholds, in one file that appears only when all of them hold."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
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
from export.wrap import contract_model
from service.vision.alignment import ARCFACE_112, TEMPLATE_NAME, Template
from service.vision.contract import ModelContract, Objective, TrainingSummary
from service.vision.embedder import Embedder
from training.backbones import count_macs, count_parameters
from training.config import TrainConfig
from training.data import index_faces
from training.embedder import backbone_from_payload, read_checkpoint
from training.onnx_network import ForeignBackbone, source_contract


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


def checkpoint_template(checkpoint: Path) -> Template:
    """The alignment a checkpoint's network was trained on: its source file's template for
    a fine-tuned foreign network, ArcFace 112 for our own backbones."""
    source = read_checkpoint(checkpoint).get("init_model")
    if not source:
        return ARCFACE_112
    return source_contract(source).template()


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
    objective = Objective(
        head=config.head,
        head_params=config.head_params,
        loss=config.loss,
        loss_params=config.loss_params,
    )
    training = training_summary(payload, config, checkpoint, data_name)
    if isinstance(backbone, ForeignBackbone):
        return export_foreign(
            backbone, checkpoint, out, validation, objective, training, parity_root, progress
        )
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
            objective=objective,
            training=training,
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


def export_foreign(
    backbone: ForeignBackbone,
    checkpoint: Path,
    out: Path,
    validation: ValidationData | None,
    objective: Objective,
    training: TrainingSummary,
    parity_root: Path | None,
    progress: bool,
) -> ModelContract:
    """A fine-tuned foreign network: its trained weights written back into the source graph
    (the same operators the source file runs, so the same speed), wrapped with the source's
    template and preprocessing, proved equal to the checkpoint and calibrated."""
    parent = source_contract(backbone.source)

    def reference(faces: np.ndarray) -> np.ndarray:
        return checkpoint_embeddings(backbone, faces)

    return contract_model(
        backbone.trained_graph(),
        out,
        template=parent.template(),
        convention=backbone.convention,
        reference=reference,
        reference_name="PyTorch checkpoint",
        validation=validation,
        source=checkpoint.name,
        exporter=exporter_name(),
        backbone=f"{parent.backbone}, fine-tuned",
        objective=objective,
        training=training,
        parity_root=parity_root,
        progress=progress,
    )
