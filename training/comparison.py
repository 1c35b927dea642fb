"""The loss-family comparison: runs that differ only in their objective, side by side.

    python -m training.comparison RUNS_DIR --configs docs/loss-comparison/configs --out DOCS

Reads every RUNS_DIR/<name>/ that `scripts/compare-losses` produced (config.json,
metrics.jsonl, eval/report.json and eval/scores-*.npz) and writes into DOCS:
results.md (the table, also copied into DOCS/README.md between its results markers), results.json, roc.png (every run's ROC overlaid, per protocol),
accuracy.png (10-fold accuracy per objective) and training.png (training curves).
Runs that have not finished yet are listed as pending rather than silently left out.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.evaluation import missed_as_rejected, roc_curve, tar_at_far
from training.plots import new_figure, plot_roc

PROTOCOLS = ("cfp-ff", "cfp-fp")  # as training.protocols.read_cfp names them


@dataclass(frozen=True)
class Run:
    name: str
    config: dict
    report: dict | None
    metrics: list[dict]
    folder: Path
    # protocol: (pair scores with a missed face as a rejection, same-person flags)
    pair_scores: dict[str, tuple[np.ndarray, np.ndarray]]

    @property
    def objective(self) -> str:
        if self.config.get("reference"):
            return "pretrained, as shipped"
        head, loss = self.config.get("head"), self.config.get("loss")
        parts = []
        if head:
            params = ", ".join(f"{k}={v:g}" for k, v in self.config.get("head_params", {}).items())
            parts.append(f"{head}({params})" if params else head)
        if loss:
            params = ", ".join(f"{k}={v}" for k, v in self.config.get("loss_params", {}).items())
            parts.append(f"{loss}({params})" if params else loss)
        return " + ".join(parts)

    @property
    def steps(self) -> int:
        train = [m for m in self.metrics if m["kind"] == "train"]
        return train[-1]["step"] if train else 0

    def verification(self, protocol: str) -> dict | None:
        if self.report is None:
            return None
        for name, value in self.report["verification"].items():
            if name == protocol:
                return value
        return None


def load_runs(runs: Path, configs: Path) -> list[Run]:
    """One Run per config file, in config order, whether or not it has finished."""
    loaded = []
    for config_file in sorted(configs.glob("*.toml")):
        folder = runs / config_file.stem
        config_path = folder / "config.json"
        report_path = folder / "eval" / "report.json"
        metrics_path = folder / "metrics.jsonl"
        loaded.append(
            Run(
                name=config_file.stem,
                config=json.loads(config_path.read_text()) if config_path.exists() else {},
                report=json.loads(report_path.read_text()) if report_path.exists() else None,
                metrics=[
                    json.loads(line)
                    for line in (
                        metrics_path.read_text().splitlines() if metrics_path.exists() else []
                    )
                    if line.strip()
                ],
                folder=folder,
                pair_scores=_pair_scores(folder / "eval"),
            )
        )
    return loaded


def _pair_scores(eval_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The raw pair scores `facemargin evaluate` saved, read once per run. A missed face
    counts as a rejection: the report's own TAR counts it as a false accept, and CFP's few
    misses then exhaust a 1e-3 budget of 3,500 impostor pairs."""
    found = {}
    for protocol in PROTOCOLS:
        path = eval_dir / f"scores-{protocol}.npz"
        if path.exists():
            with np.load(path) as data:
                found[protocol] = (missed_as_rejected(data["scores"]), data["same"].astype(bool))
    return found


def _tar_missed_rejected(run: Run, protocol: str, far: float = 1e-3) -> float | None:
    if protocol not in run.pair_scores:
        return None
    scores, same = run.pair_scores[protocol]
    return tar_at_far(scores, same, [far])[0].tar


def table_rows(runs: list[Run]) -> list[dict]:
    rows = []
    for run in runs:
        row: dict = {
            "run": run.name,
            "objective": run.objective or "(not started)",
            "steps": run.steps,
        }
        for protocol in PROTOCOLS:
            v = run.verification(protocol)
            if v is None:
                continue
            row[protocol] = {
                "accuracy": v["accuracy"],
                "accuracy_std": v["accuracy_std"],
                "auc": v["auc"],
                "eer": v["eer"],
                "missed_pairs": v["n_missing"],
                "tar_at_far_1e-3": _tar_missed_rejected(run, protocol),
            }
        if run.report and run.report["open_set"]:
            open_set = next(iter(run.report["open_set"].values()))
            row["open_set"] = {
                "rank1": open_set["rank1"],
                **{f"dir_at_fpir_{p['fpir']:g}": p["dir"] for p in open_set["dir_at_fpir"]},
            }
        val = [m for m in run.metrics if m["kind"] == "val" and "val_accuracy" in m]
        if val:
            row["held_out_accuracy"] = val[-1]["val_accuracy"]
        rows.append(row)
    return rows


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def markdown_table(rows: list[dict]) -> str:
    header = (
        "| run | objective | steps logged | CFP-FF acc % | CFP-FF TAR@1e-3 % | CFP-FF EER % "
        "| CFP-FP acc % | CFP-FP TAR@1e-3 % | open-set rank-1 % | DIR@FPIR 0.1 % "
        "| held-out acc % |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for row in rows:
        ff, fp, op = row.get("cfp-ff"), row.get("cfp-fp"), row.get("open_set")
        if ff is None:
            lines.append(
                f"| {row['run']} | {row['objective']} | {row['steps']} | pending |" + " |" * 7
            )
            continue
        lines.append(
            f"| {row['run']} | {row['objective']} | {row['steps']} "
            f"| {_pct(ff['accuracy'])} ± {_pct(ff['accuracy_std'])} | {_pct(ff['tar_at_far_1e-3'])} "
            f"| {_pct(ff['eer'])} | {_pct(fp['accuracy']) if fp else '–'} "
            f"| {_pct(fp['tar_at_far_1e-3']) if fp else '–'} "
            f"| {_pct(op['rank1']) if op else '–'} | {_pct(op.get('dir_at_fpir_0.1')) if op else '–'} "
            f"| {_pct(row.get('held_out_accuracy'))} |"
        )
    return header + "\n".join(lines) + "\n"


RESULTS_BEGIN, RESULTS_END = "<!-- results: generated -->", "<!-- /results -->"


def _replace_between_markers(readme: Path, table: str) -> Path:
    """The README carries the latest table between markers, so the prose and the numbers it
    discusses are never out of step with results.md."""
    text = readme.read_text()
    head, rest = text.split(RESULTS_BEGIN, 1)
    _, tail = rest.split(RESULTS_END, 1)
    readme.write_text(f"{head}{RESULTS_BEGIN}\n{table}{RESULTS_END}{tail}")
    return readme


def plot_rocs(runs: list[Run], out: Path) -> list[Path]:
    written = []
    for protocol in PROTOCOLS:
        curves = {}
        for run in runs:
            if protocol in run.pair_scores:
                far, tar, _ = roc_curve(*run.pair_scores[protocol])
                curves[run.name] = (far, tar)
        if curves:
            name = f"roc-{protocol.lower()}.png"
            written.append(
                plot_roc(curves, out / name, title=f"{protocol.upper()}: every objective")
            )
    return written


def plot_accuracy(rows: list[dict], path: Path) -> Path:
    done = [r for r in rows if "cfp-ff" in r]
    fig = new_figure(11, 4.5)
    ax = fig.subplots()
    x = np.arange(len(done))
    width = 0.38
    for offset, protocol in ((-width / 2, "cfp-ff"), (width / 2, "cfp-fp")):
        values = [100 * r[protocol]["accuracy"] if protocol in r else np.nan for r in done]
        errors = [100 * r[protocol]["accuracy_std"] if protocol in r else 0 for r in done]
        ax.bar(x + offset, values, width, yerr=errors, capsize=3, label=protocol.upper())
    ax.set_xticks(x, [r["run"] for r in done], rotation=35, ha="right")
    ax.set(ylabel="10-fold accuracy % (± std over folds)", ylim=(50, 100))
    ax.axhline(50, color="black", linewidth=0.5)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Verification accuracy by objective (same backbone, data and schedule)")
    fig.savefig(path, dpi=110)
    return path


def plot_training(runs: list[Run], path: Path) -> Path:
    fig = new_figure(13, 4.5)
    left, right = fig.subplots(1, 2)
    for run in runs:
        train = [m for m in run.metrics if m["kind"] == "train"]
        val = [m for m in run.metrics if m["kind"] == "val" and "val_accuracy" in m]
        if train:
            # Objectives live on different scales; loss relative to its first logged value
            # shows how far each one got down its own curve.
            first = train[0]["loss"] or 1.0
            left.plot(
                [m["step"] for m in train], [m["loss"] / first for m in train], label=run.name
            )
        if val:
            right.plot(
                [m["epoch"] for m in val],
                [100 * m["val_accuracy"] for m in val],
                marker="o",
                label=run.name,
            )
    left.set(xlabel="step", ylabel="loss / first logged loss", title="training loss")
    right.set(xlabel="epoch", ylabel="accuracy %", title="held-out identities, verification")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    right.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=110)
    return path


def write_comparison(runs_dir: Path, configs: Path, out: Path) -> list[Path]:
    runs = load_runs(runs_dir, configs)
    rows = table_rows(runs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = markdown_table(rows)
    (out / "results.md").write_text(table)
    written = [out / "results.json", out / "results.md"]
    readme = out / "README.md"
    if readme.exists() and RESULTS_BEGIN in readme.read_text():
        written.append(_replace_between_markers(readme, table))
    written += plot_rocs(runs, out)
    written.append(plot_accuracy(rows, out / "accuracy.png"))
    written.append(plot_training(runs, out / "training.png"))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--configs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    for path in write_comparison(args.runs, args.configs, args.out):
        print(path)


if __name__ == "__main__":
    main()
