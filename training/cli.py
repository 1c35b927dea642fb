"""`facemargin prepare`, `train`, `evaluate` and `backbones`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import get_args

from service.vision.detection import FacePolicy
from service.vision.preprocess import DetectorConfig, DetectorKind
from training.config import Augmentation


def add_commands(commands: argparse._SubParsersAction) -> None:
    prepare = commands.add_parser(
        "prepare",
        help="detect and align raw face photos into training faces",
        description="Turn SOURCE (one sub-folder per identity, any depth) into aligned faces "
        "under TARGET with the same layout, using the service's own detector and alignment, "
        "onto the template of --model (default: ArcFace 112x112). Resumable: rerun the same "
        "command to continue. Writes "
        "prepare-report.jsonl (one line per image: ok, no_face, multiple_faces, unreadable) "
        "and prepare-summary.json (detection yield per top-level folder). The detector and "
        "its thresholds default to the service's defaults.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    prepare.add_argument("source", type=Path, help="folder of raw photos")
    prepare.add_argument("target", type=Path, help="folder for the aligned faces")
    prepare.add_argument(
        "--policy",
        type=FacePolicy,
        choices=[FacePolicy.central, FacePolicy.largest],
        default=FacePolicy.central,
        help="which face to keep when a photo holds several (loose crops centre the subject)",
    )
    prepare.add_argument(
        "--skip-multiple",
        action="store_true",
        help="skip photos with several faces instead of picking one",
    )
    prepare.add_argument(
        "--format", choices=["png", "jpg"], default="png", help="output image format"
    )
    prepare.add_argument(
        "--model",
        type=Path,
        help="align to this embedding model's template (an ONNX file with a facemargin "
        "contract), so the faces are what that model is served",
    )
    prepare.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="parallel processes"
    )
    prepare.add_argument(
        "--detector", type=DetectorKind, choices=list(DetectorKind), default=DetectorKind.yunet
    )
    prepare.add_argument(
        "--detector-path",
        type=Path,
        help="the detector's file (or folder, for MTCNN); default: the shipped one",
    )
    prepare.add_argument(
        "--detection-threshold", type=float, help="score threshold; default the detector's own"
    )
    prepare.set_defaults(run=_run_prepare)
    _add_train(commands)
    _add_evaluate(commands)
    _add_compare_stage(commands)
    _add_backbones(commands)


def _key_value(text: str) -> tuple[str, float | str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return key, float(value)
    except ValueError:
        return key, value


def _add_train(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train",
        help="train a face-embedding backbone with a margin head or metric loss",
        description="Train on aligned faces (one folder per identity). Settings come from a TOML "
        "file (--config) and/or flags; flags win. Writes OUT/checkpoint.pt (resumes exactly "
        "when the same command is run again), OUT/metrics.jsonl and OUT/curves.png. Runs on "
        "CPU or CUDA (mixed precision); under torchrun it trains data-parallel. "
        "Heads: softmax, wnorm_softmax, lsoftmax, sphereface, fnorm_sphereface, cosface, "
        "arcface, combined (or none). Losses: triplet, contrastive, center.",
    )
    train.add_argument("--config", type=Path, help="TOML file with any TrainConfig fields")
    train.add_argument("--data", type=Path, help="aligned faces (output of facemargin prepare)")
    train.add_argument("--out", type=Path, help="run folder")
    train.add_argument(
        "--backbone",
        help="iresnet18/34/50/100, mobilefacenet, sphereface20, or onnx: the network of "
        "--init-from as it is (for foreign models such as the converted OMZ embedder)",
    )
    train.add_argument("--embedding-dim", type=int)
    train.add_argument(
        "--init-from",
        type=Path,
        help="start from an exported model (e.g. models/embedder.onnx) instead of random weights",
    )
    train.add_argument("--head", help="margin head, or 'none' with a metric loss")
    train.add_argument(
        "--head-param",
        type=_key_value,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="e.g. s=64 m=0.5",
    )
    train.add_argument("--loss", help="triplet, contrastive or center")
    train.add_argument(
        "--loss-param",
        type=_key_value,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="e.g. mining=hard margin=0.2",
    )
    train.add_argument("--optimizer", choices=["sgd", "adamw"])
    train.add_argument("--lr", type=float)
    train.add_argument("--weight-decay", type=float)
    train.add_argument(
        "--l2sp",
        type=float,
        help="L2-SP: decay the backbone towards the --init-from weights with this strength",
    )
    train.add_argument("--warmup-epochs", type=float)
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--images-per-identity", type=int, help="K of P×K batches (metric losses)")
    train.add_argument(
        "--augmentation",
        choices=get_args(Augmentation),
        help="strong adds alignment jitter and random erasing",
    )
    train.add_argument("--seed", type=int)
    train.add_argument("--held-out", type=float, help="fraction of identities kept for validation")
    train.add_argument("--max-identities", type=int, help="use only the first N identities")
    train.add_argument("--min-images", type=int)
    train.add_argument("--val-pairs", type=int)
    train.add_argument("--num-workers", type=int)
    train.add_argument("--device", choices=["auto", "cpu", "cuda"])
    train.add_argument("--checkpoint-every", type=int, help="also checkpoint every N steps")
    train.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from training.config import load_config
    from training.trainer import Trainer

    overrides = {
        key: getattr(args, key)
        for key in (
            "data",
            "out",
            "backbone",
            "embedding_dim",
            "init_from",
            "head",
            "loss",
            "optimizer",
            "lr",
            "weight_decay",
            "l2sp",
            "warmup_epochs",
            "epochs",
            "batch_size",
            "images_per_identity",
            "augmentation",
            "seed",
            "held_out",
            "max_identities",
            "min_images",
            "val_pairs",
            "num_workers",
            "device",
            "checkpoint_every",
        )
    }
    if args.head_param:
        overrides["head_params"] = dict(args.head_param)
    if args.loss_param:
        overrides["loss_params"] = dict(args.loss_param)
    trainer = Trainer(load_config(args.config, overrides))
    (trainer.config.out / "config.json").write_text(trainer.config.model_dump_json(indent=2) + "\n")
    result = trainer.fit()
    if "val_accuracy" in result:
        print(f"held-out verification accuracy: {result['val_accuracy']:.4f}")
    print(f"checkpoint: {trainer.checkpoint_path}")
    return 0


def _add_backbones(commands: argparse._SubParsersAction) -> None:
    backbones = commands.add_parser(
        "backbones",
        help="print parameter counts and multiply-accumulates of every backbone",
        description="Build every backbone (112x112 input, 512-d embedding) and print its "
        "parameters and multiply-accumulates (convolutions and linear layers) beside the "
        "published figures.",
    )
    backbones.set_defaults(run=_run_backbones)


def _run_backbones(args: argparse.Namespace) -> int:
    from training.backbones import complexity_table, format_complexity_table

    print(format_complexity_table(complexity_table()))
    return 0


def _run_prepare(args: argparse.Namespace) -> int:
    from service.vision.alignment import ARCFACE_112
    from training.prepare import PrepareOptions, prepare

    if not args.source.is_dir():
        raise SystemExit(f"facemargin prepare: {args.source} is not a folder")
    template = ARCFACE_112
    if args.model is not None:
        from service.vision.embedder import Embedder, ModelContractError

        if not args.model.is_file():
            raise SystemExit(f"facemargin prepare: --model {args.model}: no such file")
        try:
            template = Embedder(args.model).template
        except (ModelContractError, FileNotFoundError, ValueError) as error:
            raise SystemExit(f"facemargin prepare: --model {args.model}: {error}") from None
    print(f"aligning to {template.name} ({template.size}x{template.size})")
    try:
        summary = prepare(
            PrepareOptions(
                source=args.source,
                target=args.target,
                policy=args.policy,
                skip_multiple=args.skip_multiple,
                image_format=args.format,
                workers=max(args.workers, 1),
                template=template,
                detector=DetectorConfig(
                    kind=args.detector,
                    threshold=args.detection_threshold,
                    **({"path": args.detector_path} if args.detector_path else {}),
                ),
            )
        )
    except ValueError as error:
        raise SystemExit(f"facemargin prepare: {error}") from None
    for group, row in summary.items():
        print(
            f"{group:>10}: {int(row.get('ok', 0)):>6} / {int(row['images']):>6} faces "
            f"(yield {row['yield']:.2%}); no face {int(row.get('no_face', 0))}, "
            f"unreadable {int(row.get('unreadable', 0))}, several faces "
            f"{int(row.get('ok_with_several_faces', 0) + row.get('multiple_faces', 0))}"
        )
    return 0


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="score a checkpoint on face verification and open-set identification",
        description="Embed the aligned faces of a pairs protocol with CHECKPOINT and report "
        "10-fold accuracy (threshold chosen on the other nine folds), ROC AUC, EER and TAR at "
        "FAR 1e-2/1e-3/1e-4 (with the number of impostor pairs behind each), plus open-set "
        "identification (rank-1, DIR at FPIR) on CFP's frontal photos. A face the detector "
        "missed counts as an error, never a dropped pair. Writes OUT/report.json, OUT/roc.png "
        "and score histograms.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    evaluate.add_argument("checkpoint", type=Path, help="checkpoint.pt from facemargin train")
    evaluate.add_argument("--cfp", type=Path, help="the CFP folder (holds Data/ and Protocol/)")
    evaluate.add_argument(
        "--aligned", type=Path, help="CFP aligned by facemargin prepare (same layout)"
    )
    evaluate.add_argument(
        "--split", nargs="+", choices=["FF", "FP"], default=["FF", "FP"], help="CFP protocols"
    )
    evaluate.add_argument(
        "--pairs",
        type=Path,
        action="append",
        default=[],
        help="plain pairs list: lines 'PATH1 PATH2 1|0 [FOLD]', paths relative to the list's "
        "folder (which must hold aligned faces)",
    )
    evaluate.add_argument("--no-open-set", action="store_true", help="skip open-set identification")
    evaluate.add_argument("--flip", action="store_true", help="add mirrored-face embeddings")
    evaluate.add_argument(
        "--out", type=Path, help="report folder (default: CHECKPOINT's folder/eval)"
    )
    evaluate.add_argument("--device", default="cpu", help="cpu or cuda")
    evaluate.set_defaults(run=_run_evaluate)


def _add_compare_stage(commands: argparse._SubParsersAction) -> None:
    compare = commands.add_parser(
        "compare-stage",
        help="train one objective on a pretrained model's frozen trunk (the loss comparison)",
        description="Train the last stage and a fresh embedding layer of a pretrained model "
        "with one objective, on trunk features cached once, then score it on CFP "
        "(docs/loss-comparison, from a pretrained start). A rerun resumes.",
    )
    compare.add_argument("config", type=Path, help="objective TOML (head/loss) or reference")
    compare.add_argument("--protocol", type=Path, required=True, help="the shared protocol TOML")
    compare.add_argument("--data", type=Path, required=True, help="aligned training faces")
    compare.add_argument("--cfp", type=Path, required=True, help="the raw CFP folder")
    compare.add_argument("--aligned", type=Path, required=True, help="CFP aligned by prepare")
    compare.add_argument("--cache", type=Path, required=True, help="trunk feature cache")
    compare.add_argument("--out", type=Path, required=True, help="run folder")
    compare.set_defaults(run=_run_compare_stage)


def _run_compare_stage(args: argparse.Namespace) -> int:
    from training.frozen_trunk import StageRun, cfp_runs, load_protocol

    protocols, open_sets = cfp_runs(args.cfp, args.aligned)
    run = StageRun(
        args.config,
        load_protocol(args.protocol),
        args.data,
        args.cache,
        args.out,
        protocols,
        open_sets,
    )
    run.fit()
    report = run.evaluate()
    print(format_report(report))
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    import json

    from training.protocols import read_cfp, read_pairs_list
    from training.scoring import ProtocolRun, cfp_frontal_open_set, evaluate_checkpoint

    if args.cfp and not args.aligned:
        raise SystemExit(
            "facemargin evaluate: --cfp needs --aligned (run facemargin prepare on it)"
        )
    runs = (
        [ProtocolRun(read_cfp(args.cfp, split), args.aligned) for split in args.split]
        if args.cfp
        else []
    )
    runs += [ProtocolRun(read_pairs_list(path), path.parent) for path in args.pairs]
    open_sets = (
        [cfp_frontal_open_set(args.cfp, args.aligned)] if args.cfp and not args.no_open_set else []
    )
    if not runs and not open_sets:
        raise SystemExit("facemargin evaluate: give --cfp/--aligned and/or --pairs")
    out = args.out or args.checkpoint.parent / "eval"
    report = evaluate_checkpoint(args.checkpoint, runs, open_sets, out, args.flip, args.device)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    print(f"report: {out / 'report.json'}")
    return 0


def _threshold(value: float | str | None) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "unreachable"


def format_report(report: dict) -> str:
    lines = []
    for name, v in report["verification"].items():
        lines.append(
            f"{name}: accuracy {v['accuracy']:.4f} ± {v['accuracy_std']:.4f} (10-fold), "
            f"AUC {v['auc']:.4f}, EER {v['eer']:.4f}, {v['n_pairs']} pairs, "
            f"{v['n_missing']} with a missed face"
        )
        for point in v["tar_at_far"]:
            claim = "" if point["supported"] else "  (not supported by this many impostors)"
            lines.append(
                f"    TAR {point['tar']:.4f} at FAR {point['far']:g} "
                f"(threshold {_threshold(point['threshold'])}, {point['n_impostor']} impostors){claim}"
            )
    for name, o in report["open_set"].items():
        lines.append(f"{name}: rank-1 {o['rank1']:.4f} on {o['n_mated']} mated probes")
        for point in o["dir_at_fpir"]:
            claim = "" if point["supported"] else "  (not supported)"
            lines.append(
                f"    DIR {point['dir']:.4f} at FPIR {point['fpir']:g} "
                f"({point['n_non_mated']} non-mated probes){claim}"
            )
    return "\n".join(lines)
