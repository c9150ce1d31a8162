"""Depth study: 5, 10 and 20 layers of 64, plain chain against residual against AGT, on MNIST.

For each family (``chain``: tied feedback; ``residual``: the chain plus bidirectional skips
every 3 layers; ``agt``: random links with P = 0.2 and fixed random feedback), depth L and seed,
the study trains EP for a few epochs (synchronous, T/K = 10L/5L, feedback gain 0.1, as in the
paper's Table 2) and tracks the gradient flow after every epoch on the first 64 test images:
the RMS of s^n - s^0 per layer and the cosine of EP's estimate with the implicit gradient per
edge. After training, the same gradient flow is measured on a float64 copy of the network (a
control: float32 cannot resolve the signal at the bottom of deep chains, DESIGN).

Controls (10 layers; the chain's on ``--control-seeds`` seeds, default 1, the residual net's on
seed 0): float64 training of the chain and of the residual net, and gain-compensated EP on the
chain in float32 and in float64 (each edge's update divided by its
product-of-gains factor; only balanced topologies, i.e. the chain, admit it) when the installed
EP learner supports it.

Paper (MNIST, 50 epochs, mean of 5 runs): 5 x 64 97.64 %; 10 x 64 plain 92.49 % against residual
97.49 %; 10 x 64 AGT 96.87 %; 20 x 64 residual 95.95 %.

Example (what produced ``analysis/reports/depth_study``)::

    nice -n 19 python analysis/depth_study.py --data-dir ../shared/data/mnist \
        --epochs 2 --limit 5000 --seeds 2

Runs live under ``--runs`` (default ``runs/depth_study``, git-ignored) and resume from their
checkpoints; a finished run is reused.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from topo_ep.analysis.gradient_flow import gradient_flow
from topo_ep.analysis.run import as_float64
from topo_ep.analysis.tracking import train_with_flow
from topo_ep.data import Dataset, Split, load_dataset
from topo_ep.learn.ep import EquilibriumPropagation
from topo_ep.loader import load_topology
from topo_ep.train import RunSettings, Trainer

REPO = Path(__file__).resolve().parents[1]
FAMILIES = {
    "chain": "topologies/chain_5x64.yaml",
    "residual": "topologies/res_10x64.yaml",
    "agt": "topologies/agt_10x64.yaml",
}
#: Paper, Table 2 (MNIST, EP, %), by (family, depth).
PAPER = {
    ("chain", 5): 97.64,
    ("chain", 10): 92.49,
    ("residual", 10): 97.49,
    ("agt", 10): 96.87,
    ("residual", 20): 95.95,
}


@dataclass(frozen=True)
class RunConfig:
    """One training run of the study."""

    family: str
    depth: int
    seed: int
    variant: str = "float32"  # float32 | float64 | gain_compensated | gain_compensated_float64

    @property
    def name(self) -> str:
        return f"{self.family}_L{self.depth}_{self.variant}_s{self.seed}"

    @property
    def dtype(self) -> str:
        return "float64" if self.variant.endswith("float64") else "float32"

    def overrides(self, extra: tuple[str, ...] = ()) -> list[str]:
        """The ``--set`` overrides of this run: depth, T/K = 10L/5L, the variant, ``extra``."""
        out = [
            f"generate.depth={self.depth}",
            f"dynamics.free_steps={10 * self.depth}",
            f"dynamics.nudged_steps={5 * self.depth}",
        ]
        if self.variant.startswith("gain_compensated"):
            out.append("training.gain_compensated=true")
        return [*out, *extra]


def gain_compensation_available() -> bool:
    """Whether the installed EP learner implements ``training.gain_compensated``."""
    spec = load_topology(REPO / FAMILIES["chain"], ["training.gain_compensated=true"])
    try:
        method = EquilibriumPropagation.from_spec(spec)
    except (ValueError, TypeError):
        return False
    return bool(getattr(method, "gain_compensated", False))


def _flow_json(flow: Any) -> dict[str, Any]:
    return asdict(flow)


def run_one(config: RunConfig, args: argparse.Namespace, data: Dataset, log) -> dict[str, Any]:
    """Train (or resume) one run with gradient flow tracking; returns its summary."""
    run_dir = Path(args.runs) / config.name
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        stored = json.loads(summary_path.read_text(encoding="utf-8"))
        if stored.get("epochs", 0) >= args.epochs:
            log(f"{config.name}: reused")
            return stored
    spec = load_topology(REPO / FAMILIES[config.family], config.overrides(tuple(args.set)))
    settings = RunSettings(
        method="ep",
        epochs=args.epochs,
        seed=config.seed,
        device="cpu",
        dtype=config.dtype,
        dataset=args.dataset,
        data_dir=args.data_dir,
        limit=args.limit,
    )
    trainer = Trainer(spec, data, settings, out_dir=run_dir, progress=False, log=log)
    if (run_dir / "checkpoint.pt").is_file():
        trainer.resume(run_dir)
    x = trainer.dataset.test.x[: args.batch].to(trainer.dtype)
    y = trainer.dataset.test.y[: args.batch]
    log(f"{config.name}: training {args.epochs} epochs")
    metrics, flows = train_with_flow(trainer, x, y)
    control = None
    if trainer.dtype != torch.float64:
        control = _flow_json(gradient_flow(as_float64(trainer.net), x.double(), y))
    summary = {
        **asdict(config),
        "name": config.name,
        "epochs": len(metrics),
        "test_acc": metrics[-1]["test_acc"],
        "best_test_acc": max(m["test_acc"] for m in metrics),
        "val_acc": metrics[-1]["val_acc"],
        "seconds_per_epoch": float(np.median([m["seconds"] for m in metrics])),
        "metrics": metrics,
        "flow_by_epoch": flows,
        "final_flow": flows[-1],
        "final_flow_float64": control,
    }
    summary_path.write_text(json.dumps(summary) + "\n", encoding="utf-8")
    return summary


# ---------------------------------------------------------------------------- report
def select(
    rows: list[dict], family: str, depth: int, variant: str = "float32", seed: int | None = None
) -> list[dict]:
    """The rows of one family, depth and variant (and seed, when given)."""
    return [
        r
        for r in rows
        if r["family"] == family
        and r["depth"] == depth
        and r["variant"] == variant
        and (seed is None or r["seed"] == seed)
    ]


def _signal(flow: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    layers = sorted(flow["layers"], key=lambda r: r["position"])
    return [r["layer"] for r in layers], np.array([r["rms"] for r in layers], dtype=float)


def _cosines(flow: dict[str, Any]) -> np.ndarray:
    return np.array(
        [np.nan if r["cos_implicit"] is None else r["cos_implicit"] for r in flow["edges"]],
        dtype=float,
    )


def _mean_range(values: list[float]) -> str:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "n/a"
    mean = 100 * float(np.mean(finite))
    if len(finite) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} [{100 * min(finite):.2f} .. {100 * max(finite):.2f}]"


def _seed0_flows(rows: list[dict], depth: int) -> Iterator[tuple[str, str, dict, dict | None]]:
    """(colour, family, final flow, float64 control flow or None) of seed 0, per family run."""
    for index, family in enumerate(FAMILIES):
        mine = select(rows, family, depth, seed=0)
        if mine:
            yield f"C{index}", family, mine[0]["final_flow"], mine[0]["final_flow_float64"]


def _save_figure(fig: Figure, ax: Any, title: str, path: Path) -> Path:
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_layer_signal(rows: list[dict], depth: int, out: Path) -> Path:
    """RMS of s^n - s^0 by layer after training, per family, float32 and float64 control."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    for colour, family, flow, control_flow in _seed0_flows(rows, depth):
        _, rms = _signal(flow)
        ax.semilogy(np.arange(1, len(rms) + 1), rms, "o-", color=colour, label=f"{family}")
        if control_flow is not None:
            _, control = _signal(control_flow)
            ax.semilogy(
                np.arange(1, len(control) + 1),
                control,
                "x--",
                color=colour,
                label=f"{family} (float64 control)",
            )
    ax.set_xlabel("hidden layer (1 = bottom)")
    ax.set_ylabel("RMS of s^n - s^0")
    title = f"{depth} x 64 after training: EP signal by layer (seed 0)"
    return _save_figure(fig, ax, title, out / f"layer_signal_L{depth}.png")


def plot_edge_cosines(rows: list[dict], depth: int, out: Path) -> Path:
    """cos(EP, implicit gradient) per edge after training, float32 and float64 control."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    for colour, family, flow, control_flow in _seed0_flows(rows, depth):
        targets = [int(r["target"][1:]) for r in flow["edges"]]
        ax.plot(targets, _cosines(flow), "o", color=colour, label=family)
        if control_flow is not None:
            control = _cosines(control_flow)
            ax.plot(targets, control, "x", color=colour, label=f"{family} (float64)")
    ax.axhline(1.0, color="grey", linewidth=0.6)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xlabel("target layer of the edge")
    ax.set_ylabel("cos(EP estimate, implicit gradient)")
    title = f"{depth} x 64 after training: EP alignment by edge (seed 0)"
    return _save_figure(fig, ax, title, out / f"edge_cosines_L{depth}.png")


def plot_over_epochs(rows: list[dict], out: Path) -> Path:
    """Bottom-over-top signal ratio after each epoch, per family and depth (seed 0)."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    styles = {5: "o-", 10: "s--", 20: "^:"}
    for index, family in enumerate(FAMILIES):
        for depth, style in styles.items():
            mine = select(rows, family, depth, seed=0)
            if not mine:
                continue
            epochs, ratio = [], []
            for record in mine[0]["flow_by_epoch"]:
                _, rms = _signal(record)
                epochs.append(record["epoch"])
                ratio.append(rms[0] / rms[-1] if rms[-1] > 0 else np.nan)
            ax.semilogy(epochs, ratio, style, color=f"C{index}", label=f"{family} L={depth}")
    ax.set_xlabel("epoch (0 = before training)")
    ax.set_ylabel("RMS signal, bottom layer / top layer")
    ax.set_title("EP signal reaching the bottom layer, over training (seed 0)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = out / "signal_over_epochs.png"
    fig.savefig(path, dpi=110)
    return path


def write_report(
    rows: list[dict], args: argparse.Namespace, command: str, notes: list[str]
) -> Path:
    """``report.md`` with the accuracy table, the controls, the flow tables and the plots."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    depths = sorted({r["depth"] for r in rows})
    subset = (
        f"{args.limit} random {args.dataset} training examples"
        if args.limit
        else f"all {args.dataset} training examples"
    )
    lines = [
        f"# Depth study: chain vs residual vs AGT, 5 / 10 / 20 x 64 on {args.dataset}",
        "",
        f"- budget: {args.epochs} epochs of EP on {subset} (per seed), Adam lr 1e-3, batch "
        "500, synchronous T/K = 10L/5L, feedback gain 0.1, nudge 0.1, paper rule; test "
        f"accuracy on the whole {args.dataset} test split",
        f"- validation (monitoring only): first {args.val or 'all'} examples of the fixed "
        "validation split",
        f"- gradient flow: first {args.batch} test images, after every epoch (float32) and after "
        "training on a float64 copy of the network (control)",
        f"- command: `{command}`",
        "",
        "## Test accuracy (%, last epoch; mean [min .. max] over seeds)",
        "",
        "| depth | chain | residual | AGT | paper (50 epochs, full data) |",
        "|---|---|---|---|---|",
    ]
    for depth in depths:
        cells = []
        for family in FAMILIES:
            accs = [r["test_acc"] for r in select(rows, family, depth)]
            cells.append(_mean_range(accs))
        paper = ", ".join(f"{f} {v}" for (f, d), v in PAPER.items() if d == depth) or "-"
        lines.append(f"| {depth} | {' | '.join(cells)} | {paper} |")
    controls = [r for r in rows if r["variant"] != "float32"]
    if controls or notes:
        lines += [
            "",
            "## Controls",
            "",
            "| run | test acc % | same seed, float32, no compensation % |",
            "|---|---|---|",
        ]
        for r in controls:
            base = [b["test_acc"] for b in select(rows, r["family"], r["depth"], seed=r["seed"])]
            lines.append(f"| {r['name']} | {_mean_range([r['test_acc']])} | {_mean_range(base)} |")
        lines += ["", *notes]
    lines += ["", "## Gradient flow after training (seed 0)", ""]
    lines += [
        "Signal ratio: RMS of s^n - s^0 in the bottom layer over the top layer. Cosine: the "
        "worst and the bottom edge's cos(EP estimate, implicit gradient), float32 and float64 "
        "control of the same weights.",
        "",
        "| depth | family | signal bottom/top (f32) | (f64) | worst cos (f32) | (f64) "
        "| bottom-edge cos (f32) | (f64) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for depth in depths:
        for family in FAMILIES:
            mine = select(rows, family, depth, seed=0)
            if not mine:
                continue
            cells = []
            for key in ("final_flow", "final_flow_float64"):
                flow = mine[0][key]
                if flow is None:
                    cells.append(("n/a", "n/a", "n/a"))
                    continue
                _, rms = _signal(flow)
                cos = _cosines(flow)
                ratio = rms[0] / rms[-1] if rms[-1] > 0 else float("nan")
                cells.append((f"{ratio:.3g}", f"{np.nanmin(cos):.4f}", f"{cos[0]:.4f}"))
            lines.append(
                f"| {depth} | {family} | {cells[0][0]} | {cells[1][0]} | {cells[0][1]} | "
                f"{cells[1][1]} | {cells[0][2]} | {cells[1][2]} |"
            )
    lines.append("")
    for depth in depths:
        lines += [
            f"![signal L{depth}](layer_signal_L{depth}.png)",
            "",
            f"![cosines L{depth}](edge_cosines_L{depth}.png)",
            "",
        ]
    lines += ["![over epochs](signal_over_epochs.png)", ""]
    findings = out / "notes.md"
    if findings.is_file():
        lines += ["## Findings", "", findings.read_text(encoding="utf-8").strip(), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    table = [{k: v for k, v in r.items() if k not in ("flow_by_epoch", "metrics")} for r in rows]
    (out / "summary.json").write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    return path


def plan(args: argparse.Namespace, compensated: bool) -> list[RunConfig]:
    """The runs, cheapest first so that partial results arrive early."""
    depths = [int(d) for d in args.depths.split(",")]
    runs = [RunConfig(f, d, s) for d in depths for s in range(args.seeds) for f in FAMILIES]
    if 10 in depths and not args.no_controls:
        variants = ["float64", "gain_compensated", "gain_compensated_float64"]
        if not compensated:
            variants = variants[:1]
        controls = [
            RunConfig("chain", 10, seed, v) for seed in range(args.control_seeds) for v in variants
        ]
        controls.insert(1, RunConfig("residual", 10, 0, "float64"))
        at = len([r for r in runs if r.depth <= 10])
        runs[at:at] = controls
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="../shared/data/mnist")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--set", action="append", default=[], help="extra --set overrides")
    parser.add_argument("--depths", default="5,10,20")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--limit", type=int, default=5000, help="training examples (5000)")
    parser.add_argument("--batch", type=int, default=64, help="test examples for the flow")
    parser.add_argument("--val", type=int, default=1000, help="validation examples (1000)")
    parser.add_argument("--no-controls", action="store_true")
    parser.add_argument("--control-seeds", type=int, default=1, help="seeds of the chain controls")
    parser.add_argument("--out", default=str(REPO / "analysis/reports/depth_study"))
    parser.add_argument("--runs", default=str(REPO / "runs/depth_study"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.time()
    compensated = gain_compensation_available()
    notes = (
        []
        if compensated
        else [
            "Gain-compensated EP is not available in this build (the EP learner rejects "
            "`training.gain_compensated`), so that control was not run."
        ]
    )
    command = "python analysis/depth_study.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    cache: dict[int, Dataset] = {}
    rows: list[dict] = []

    def log(line: str) -> None:
        print(f"[{(time.time() - started) / 60:5.1f} min] {line}", flush=True)

    for config in plan(args, compensated):
        if config.seed not in cache:
            data = load_dataset(args.dataset, args.data_dir, seed=config.seed, limit=args.limit)
            if args.val:  # the validation split only monitors; a subset saves relaxations
                data = replace(data, val=Split(data.val.x[: args.val], data.val.y[: args.val]))
            cache[config.seed] = data
        rows.append(run_one(config, args, cache[config.seed], log))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for depth in sorted({r["depth"] for r in rows}):
            plot_layer_signal(rows, depth, out)
            plot_edge_cosines(rows, depth, out)
        plot_over_epochs(rows, out)
        write_report(rows, args, command, notes)
    log(f"done: {Path(args.out) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
