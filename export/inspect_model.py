"""`facemargin inspect`: a model file's contract, as a person reads it or as JSON."""

from __future__ import annotations

import argparse
import sys


def format_contract(contract) -> str:
    """The contract as a person reads it."""
    lines = [
        f"model        {contract.model_id} ({contract.variant}"
        + (f", from {contract.parent_model_id})" if contract.parent_model_id else ")"),
        f"network      {contract.backbone}, {contract.embedding_dim}-d embedding"
        + (f", {contract.parameters:,} parameters" if contract.parameters else "")
        + (f", {contract.macs / 1e9:.2f} GMAC" if contract.macs else ""),
        f"input        {contract.input.name}: {contract.input.dtype} {contract.input.layout} "
        f"(N, {contract.input.height}, {contract.input.width}, {contract.input.channels}) "
        f"{contract.input.color}, {contract.input.normalisation}",
        f"alignment    {contract.alignment_template} ({contract.template().size} px)",
        f"source       {contract.source}, exported {contract.exported_at:%Y-%m-%d %H:%M} UTC "
        f"by {contract.exporter}",
    ]
    if contract.objective is not None:
        objective = contract.objective
        parts = [f"{objective.head} {objective.head_params}" if objective.head else ""]
        if objective.loss:
            parts.append(f"{objective.loss} {objective.loss_params}")
        lines.append("objective    " + " + ".join(p for p in parts if p))
    if contract.training is not None:
        t = contract.training
        lines.append(
            f"training     {t.data}"
            + (f": {t.identities} identities" if t.identities else "")
            + (f", {t.images:,} images" if t.images else "")
            + (f", {t.epochs:g} epochs ({t.steps} steps)" if t.epochs is not None else "")
            + (f", started from model {t.initialised_from}" if t.initialised_from else "")
        )
    if contract.calibration is None:
        lines.append("thresholds   none: give the service an explicit threshold")
    else:
        c = contract.calibration
        lines.append(
            f"thresholds   {c.protocol}: {c.description}; {c.n_genuine:,} genuine / "
            f"{c.n_impostor:,} impostor pairs, {c.n_images_without_face} of {c.n_images} "
            "images without a face"
        )
        for point in c.operating_points:
            tar = f"TAR {100 * point.tar:.2f}%" if point.tar is not None else "TAR not measured"
            lines.append(f"  FAR {point.far:g}: cosine >= {point.threshold:.4f}  ({tar})")
        for far in c.unsupported_fars:
            lines.append(f"  FAR {far:g}: not calibrated (too few impostor pairs)")
    for v in contract.validation:
        tar = f"{100 * v.tar_at_far_1e3:.2f}%" if v.tar_at_far_1e3 is not None else "n/a"
        lines.append(
            f"validation   {v.protocol}: accuracy {100 * v.accuracy:.2f}% ± "
            f"{100 * v.accuracy_std:.2f}, TAR@FAR1e-3 {tar} ({v.n_missing} of {v.n_pairs} "
            "pairs with a missed face)"
        )
    if contract.parity is not None:
        p = contract.parity
        lines.append(
            f"parity       vs {p.reference}: min cosine {p.min_cosine:.8f}, max |diff| "
            f"{p.max_abs_diff:.2e} ({p.faces} faces, batches {p.batch_sizes})"
        )
    if contract.quantization is not None:
        q = contract.quantization
        lines.append(
            f"quantization {q.method}; {q.calibration_faces} calibration faces; cosine to fp32 "
            f"min {q.min_cosine_to_fp32:.5f}, median {q.median_cosine_to_fp32:.5f}"
        )
        for change in q.accuracy:
            lines.append(
                f"  {change.protocol}: {100 * change.accuracy_fp32:.2f}% -> "
                f"{100 * change.accuracy:.2f}% ({change.change_pp:+.2f} pp, tolerance "
                f"{q.tolerance_pp} pp)"
            )
    return "\n".join(lines)


def run_inspect(args: argparse.Namespace) -> int:
    import onnxruntime as ort

    from service.vision.contract import parse_contract

    try:
        session = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own untyped errors for bad files
        print(f"facemargin inspect: cannot load {args.model}: {error}", file=sys.stderr)
        return 1
    contract = parse_contract(session.get_modelmeta().custom_metadata_map)
    if contract is None:
        print(
            f"facemargin inspect: {args.model} has no facemargin contract "
            "(wrap it with: facemargin export wrap)",
            file=sys.stderr,
        )
        return 1
    print(contract.model_dump_json(indent=2) if args.json else format_contract(contract))
    return 0
