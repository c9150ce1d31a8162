"""Correctness of converged phases: which tolerance gives the EP update of full convergence?

For each topology (default fre_2x512, res_10x64, agt_10x64) and each weight condition (``fresh``:
compiled with seed 0; ``trained``: after ``--train-batches`` batches of the topology's own EP
training in float32 with its own dynamics, on its dataset: MNIST unless the topology declares
another), in float64, on one batch of ``--batch`` test examples, the study

1. measures the settling time: the steps of the synchronous free and nudged phases to tolerance
   ``TIGHT`` (checked every step);
2. computes the reference update at full convergence: the topology's EP (its nudge, nudging,
   rule and error mode) with fixed steps ``--reference-factor`` times the settling times
   (tolerance 0, synchronous);
3. for each schedule pair (free, nudged) and tolerance (``--tolerances``), with the nudged
   phase at the same tolerance or at ``NUDGED_TOLERANCES`` (1e-3), runs the converged phases
   (:class:`~topo_ep.learn.ep.EquilibriumPropagation`, ``check_every`` 1, step limits out of
   reach) and compares every learned tensor's update with the reference: cosine and norm
   ratio. Targets: cosine >= 0.999 and norm ratio within 5 % on every edge. With
   ``--fixed-steps``, also the sweep schedule with those fixed step counts and no stopping
   test (tolerance 0), the way to settle further than float32's floor on the stopping test
   (max(tolerance, 16 eps) = 1.9e-6) allows;
4. two controls on the nudged phase's stopping test, with the free phase at ``TIGHT``:
   stopping on the state residual alone (``state``) against the shipped test that also waits
   for every layer's contrast s^n - s^0 (``contrast``), with the contrast of each layer
   relative to its converged value; and the free phase at the tolerance with the nudged phase
   at ``TIGHT``, which shows which phase's tolerance limits the update.

Example (what produced ``analysis/reports/converged_phases``, its ``quickstart/``, its
``chain_10x64_res_20x64/`` and its ``fixed_sweep/``)::

    nice -n 19 python analysis/converged_phases.py --data-dir ../shared/data/mnist
    nice -n 19 python analysis/converged_phases.py --data-dir ../shared/data/mnist \
        --topologies quickstart --out analysis/reports/converged_phases/quickstart
    nice -n 10 python analysis/converged_phases.py --data-dir ../shared/data/mnist \
        --topologies chain_10x64 res_20x64 \
        --tolerances 1e-4 3e-5 1e-5 3e-6 1e-6 1e-7 1e-8 1e-9 1e-10 \
        --out analysis/reports/converged_phases/chain_10x64_res_20x64
    nice -n 10 python analysis/converged_phases.py --data-dir ../shared/data/mnist \
        --topologies chain_10x64 res_20x64 --tolerances 1e-8 \
        --fixed-steps 40+20 50+25 60+30 80+40 100+50 120+60 \
        --out analysis/reports/converged_phases/fixed_sweep

Writes ``report.md`` and ``results.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from topo_ep.analysis.inputs import analysis_batch
from topo_ep.compiler import CompiledNetwork, compile_topology
from topo_ep.data import load_dataset
from topo_ep.engine import contrast_criterion, free_phase, relax, state_criterion
from topo_ep.learn.ep import EPPhases, EquilibriumPropagation
from topo_ep.loader import load_topology
from topo_ep.param_groups import make_optimizer

REPO = Path(__file__).resolve().parents[1]
TOPOLOGIES = ("fre_2x512", "res_10x64", "agt_10x64")
#: Schedule pairs (free, nudged) studied.
SCHEDULE_PAIRS = (
    ("synchronous", "synchronous"),
    ("sweep", "sweep"),
    ("sweep", "top-down-sweep"),
)
TOLERANCES = (1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 1e-6)
#: Nudged-phase tolerances studied besides the free phase's own (``None``).
NUDGED_TOLERANCES = (None, 1e-3)
#: Tolerance of the settling time and of the controls' tight phase.
TIGHT = 1e-12
#: Step limit of every converged phase (out of reach: every phase here converges).
LIMIT = 20_000
MIN_COSINE = 0.999
MAX_NORM_DEVIATION = 0.05


def _train(net: CompiledNetwork, spec: Any, data_dir: str, batches: int, seed: int) -> None:
    """``batches`` optimizer steps of the topology's own EP (float32, its own dynamics) on its
    dataset (``input.dataset``, else MNIST)."""
    dataset = load_dataset(spec.input.dataset or "mnist", data_dir, seed=seed)
    method = EquilibriumPropagation.from_spec(spec)
    optimizer = make_optimizer(net, spec)
    size = spec.training.batch_size
    count = len(dataset.train.y)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    for index in range(batches):
        start = (index * size) % max(1, count - size + 1)
        chosen = order[start : start + size]
        optimizer.zero_grad(set_to_none=True)
        method.gradients(net, dataset.train.x[chosen], dataset.train.y[chosen])
        optimizer.step()


def _network(name: str, condition: str, args: argparse.Namespace) -> CompiledNetwork:
    spec = load_topology(REPO / "topologies" / f"{name}.yaml")
    net = compile_topology(spec, seed=args.seed)
    if condition == "trained":
        torch.manual_seed(args.seed)
        _train(net, spec, args.data_dir, args.train_batches, args.seed)
    return net.to(torch.float64)


def _phases(
    method: EquilibriumPropagation,
    net: CompiledNetwork,
    x: torch.Tensor,
    y: torch.Tensor,
    free_tolerance: float,
    nudged_tolerance: float,
    nudged_test: str,
) -> EPPhases:
    """Free and one-sided nudged phases with their own tolerances and nudged stopping test."""
    with torch.no_grad():
        inputs = net.prepare_input(x)
        drives = net.input_drive(inputs, prepared=True)
        free, free_stats = free_phase(net, drives, method.schedule, LIMIT, free_tolerance, 1)
        logits = net.readout_logits(free[net.top])
        target = torch.nn.functional.one_hot(y, net.spec.readout.size).to(logits.dtype)
        nudged_drives = list(drives)
        nudged_drives[net.top] = net.head.nudge(
            drives[net.top], target - torch.softmax(logits, dim=-1), method.nudge
        )
        criterion = contrast_criterion(free) if nudged_test == "contrast" else state_criterion
        nudged, nudged_stats = relax(
            net,
            free,
            nudged_drives,
            method.nudged_schedule or method.schedule,
            LIMIT,
            nudged_tolerance,
            1,
            criterion=criterion,
        )
    return EPPhases(inputs, free, (nudged,), logits, free_stats, (nudged_stats,))


def _compare(estimate: dict, reference: dict) -> dict[str, dict[str, float]]:
    """Per learned tensor: cosine and norm ratio of ``estimate`` against ``reference``."""
    rows = {}
    for key, ref in reference.items():
        value = estimate[key]
        cosine = float((value * ref).sum() / (value.norm() * ref.norm()))
        rows[str(key)] = {"cosine": cosine, "norm_ratio": float(value.norm() / ref.norm())}
    return rows


def _summary(edges: dict[str, dict[str, float]]) -> dict[str, Any]:
    worst_cos = min(edges.items(), key=lambda item: item[1]["cosine"])
    worst_ratio = max(edges.items(), key=lambda item: abs(item[1]["norm_ratio"] - 1.0))
    return {
        "min_cosine": worst_cos[1]["cosine"],
        "min_cosine_edge": worst_cos[0],
        "worst_norm_ratio": worst_ratio[1]["norm_ratio"],
        "worst_norm_ratio_edge": worst_ratio[0],
        "passes": worst_cos[1]["cosine"] >= MIN_COSINE
        and abs(worst_ratio[1]["norm_ratio"] - 1.0) <= MAX_NORM_DEVIATION,
    }


def _contrast_ratios(phases: EPPhases, reference: EPPhases) -> list[float]:
    """||s^n_k - s^0_k|| / the same at full convergence, per layer k."""
    return [
        float((a - b).norm() / (ra - rb).norm())
        for a, b, ra, rb in zip(
            phases.nudged[0], phases.free, reference.nudged[0], reference.free, strict=True
        )
    ]


def study(name: str, condition: str, args: argparse.Namespace, log) -> dict[str, Any]:
    """Every measurement of one topology under one weight condition."""
    net = _network(name, condition, args)
    dataset = net.spec.input.dataset or "mnist"
    x, y, described = analysis_batch(net, dataset, args.data_dir, args.batch)
    base = EquilibriumPropagation.from_spec(net.spec)
    tight = dataclasses.replace(
        base,
        schedule="synchronous",
        free_steps=LIMIT,
        nudged_steps=LIMIT,
        tolerance=TIGHT,
        check_every=1,
    )
    settle = tight.estimate(net, x, y).result
    free_steps = args.reference_factor * settle.free_steps
    nudged_steps = args.reference_factor * settle.nudged_steps
    reference_method = dataclasses.replace(
        tight, free_steps=free_steps, nudged_steps=nudged_steps, tolerance=0.0
    )
    reference = reference_method.estimate(net, x, y)
    log(f"{name} {condition}: settles in {settle.free_steps} + {settle.nudged_steps} steps")
    shipped = base.estimate(net, x, y)  # the topology's own fixed T/K (tolerance 0)
    fixed = {
        "free_schedule": base.schedule,
        "nudged_schedule": base.nudged_schedule or base.schedule,
        "tolerance": base.tolerance,
        "nudged_tolerance": base.nudged_phase_tolerance,
        "free_steps": shipped.result.free_steps,
        "nudged_steps": shipped.result.nudged_steps,
        **_summary(_compare(shipped.grads, reference.grads)),
    }
    log(f"  shipped fixed steps: min cos {fixed['min_cosine']:.6f}")
    grid = []
    settings = [
        (pair, tolerance, nudged)
        for nudged in NUDGED_TOLERANCES
        for pair in SCHEDULE_PAIRS
        for tolerance in args.tolerances
        if nudged is None or nudged > tolerance
    ]
    for (free_schedule, nudged_schedule), tolerance, nudged_tolerance in settings:
        method = dataclasses.replace(
            base,
            schedule=free_schedule,
            nudged_schedule=nudged_schedule,
            free_steps=LIMIT,
            nudged_steps=LIMIT,
            tolerance=tolerance,
            nudged_tolerance=nudged_tolerance,
            check_every=1,
        )
        estimate = method.estimate(net, x, y)
        edges = _compare(estimate.grads, reference.grads)
        row = {
            "free_schedule": free_schedule,
            "nudged_schedule": nudged_schedule,
            "tolerance": tolerance,
            "nudged_tolerance": method.nudged_phase_tolerance,
            "free_steps": estimate.result.free_steps,
            "nudged_steps": estimate.result.nudged_steps,
            "converged": estimate.result.converged,
            **_summary(edges),
            "edges": edges,
        }
        grid.append(row)
        log(
            f"  {free_schedule}/{nudged_schedule} tol {tolerance:g} / "
            f"{method.nudged_phase_tolerance:g}: "
            f"{row['free_steps']} + {row['nudged_steps']} steps, "
            f"min cos {row['min_cosine']:.6f}, worst ratio {row['worst_norm_ratio']:.4f}"
        )
    fixed_sweep = []
    for free_count, nudged_count in args.fixed_steps:
        method = dataclasses.replace(
            base,
            schedule="sweep",
            nudged_schedule="sweep",
            free_steps=free_count,
            nudged_steps=nudged_count,
            tolerance=0.0,
            nudged_tolerance=None,
        )
        estimate = method.estimate(net, x, y)
        edges = _compare(estimate.grads, reference.grads)
        fixed_sweep.append(
            {
                "free_schedule": "sweep",
                "nudged_schedule": "sweep",
                "free_steps": estimate.result.free_steps,
                "nudged_steps": estimate.result.nudged_steps,
                **_summary(edges),
                "edges": edges,
            }
        )
        row = fixed_sweep[-1]
        log(
            f"  sweep fixed {row['free_steps']} + {row['nudged_steps']} steps: "
            f"min cos {row['min_cosine']:.6f}, worst ratio {row['worst_norm_ratio']:.4f}"
        )
    controls = []
    if base.nudging != "one-sided":  # the controls run one nudged phase
        return _result(name, condition, described, base, settle, reference_method, grid, []) | {
            "shipped": fixed,
            "fixed_sweep": fixed_sweep,
        }
    pair = ("sweep", "sweep")
    method = dataclasses.replace(base, schedule=pair[0], nudged_schedule=pair[1])
    reference_updates = base.updates(net, reference.phases)
    for tolerance in args.tolerances:
        for label, free_tol, nudged_tol, test in (
            ("nudged test: state only", TIGHT, tolerance, "state"),
            ("nudged test: state and contrast", TIGHT, tolerance, "contrast"),
            ("free phase at the tolerance, nudged tight", tolerance, TIGHT, "contrast"),
        ):
            phases = _phases(method, net, x, y, free_tol, nudged_tol, test)
            edges = _compare(method.updates(net, phases), reference_updates)
            controls.append(
                {
                    "control": label,
                    "tolerance": tolerance,
                    "free_steps": phases.free_stats.steps,
                    "nudged_steps": phases.nudged_stats[0].steps,
                    **_summary(edges),
                    "contrast_ratio_per_layer": _contrast_ratios(phases, reference.phases),
                    "edges": edges,
                }
            )
    return _result(name, condition, described, base, settle, reference_method, grid, controls) | {
        "shipped": fixed,
        "fixed_sweep": fixed_sweep,
    }


def _result(name, condition, described, base, settle, reference, grid, controls) -> dict:
    return {
        "topology": name,
        "condition": condition,
        "data": described,
        "rule": {"nudge": base.nudge, "nudging": base.nudging, "rule": base.rule},
        "settling_steps": [settle.free_steps, settle.nudged_steps],
        "reference_steps": [reference.free_steps, reference.nudged_steps],
        "grid": grid,
        "controls": controls,
    }


def _nudged_mode(row: dict) -> str:
    """``same`` when the nudged phase had the free phase's tolerance, else its tolerance."""
    return "same" if row["nudged_tolerance"] == row["tolerance"] else f"{row['nudged_tolerance']:g}"


def _loosest_passing(grid: list[dict], pair: tuple[str, str], mode: str) -> dict | None:
    """The loosest free tolerance of ``pair`` and nudged ``mode`` such that it and every
    tighter one pass."""
    rows = sorted(
        (
            r
            for r in grid
            if (r["free_schedule"], r["nudged_schedule"]) == pair and _nudged_mode(r) == mode
        ),
        key=lambda r: r["tolerance"],
    )
    best = None
    for row in rows:
        if not row["passes"]:
            break
        best = row
    return best


def write_report(results: list[dict], out: Path, command: str) -> Path:
    lines = [
        "# Converged phases: EP updates against full convergence (float64)",
        "",
        f"Command: `{command}`",
        "",
        "Per topology and weight condition: the EP update of every learned tensor with converged",
        "phases (checked every step) against the update with fixed steps "
        f"{results[0]['reference_factor']}x the synchronous settling time (the steps to "
        f"{TIGHT:g}). Targets: cosine >= {MIN_COSINE} and norm ratio within "
        f"{MAX_NORM_DEVIATION:.0%} on every edge. `min cos` and `worst ratio` are over the "
        "edges (the edge named). Steps: free + nudged. The free phase stops when every "
        "example's max-norm step change is <= tol; the nudged phase (at its own tolerance, "
        "the free one's or 1e-3) also waits until every layer's contrast changes by <= its "
        "tolerance times its own norm. The first row is the topology's own dynamics.",
        "",
    ]
    for result in results:
        settle = result["settling_steps"]
        lines += [
            f"## {result['topology']}, {result['condition']} weights",
            "",
            f"Data: {result['data']}. EP: {result['rule']}. Settling time (synchronous, "
            f"{TIGHT:g}): {settle[0]} + {settle[1]} steps; reference: "
            f"{result['reference_steps'][0]} + {result['reference_steps'][1]} steps. "
            f"({result['seconds']:.0f} s on a loaded machine.)",
            "",
            "| free / nudged schedule | tolerance free / nudged | steps | min cos (edge) "
            "| worst ratio (edge) | passes |",
            "|---|---|---|---|---|---|",
        ]
        for row in [result["shipped"], *result["grid"]]:
            shipped = ""
            if row is result["shipped"]:
                shipped = " (shipped, fixed steps)" if row["tolerance"] == 0 else " (shipped)"
            lines.append(
                f"| {row['free_schedule']} / {row['nudged_schedule']} | "
                f"{row['tolerance']:g} / {row['nudged_tolerance']:g}{shipped} | "
                f"{row['free_steps']} + {row['nudged_steps']} | {row['min_cosine']:.6f} "
                f"({row['min_cosine_edge']}) | {row['worst_norm_ratio']:.4f} "
                f"({row['worst_norm_ratio_edge']}) | {'yes' if row['passes'] else 'no'} |"
            )
        if result.get("fixed_sweep"):
            lines += [
                "",
                "Sweep with fixed steps (tolerance 0: no stopping test, so no float32 floor):",
                "",
                "| steps | min cos (edge) | worst ratio (edge) | passes |",
                "|---|---|---|---|",
            ]
            for row in result["fixed_sweep"]:
                lines.append(
                    f"| {row['free_steps']} + {row['nudged_steps']} | {row['min_cosine']:.6f} "
                    f"({row['min_cosine_edge']}) | {row['worst_norm_ratio']:.4f} "
                    f"({row['worst_norm_ratio_edge']}) | {'yes' if row['passes'] else 'no'} |"
                )
        lines += [
            "",
            "Controls (sweep / sweep): the nudged phase's stopping test, and which phase's "
            f"tolerance limits the update (the other phase at {TIGHT:g}). Contrast ratio: "
            "||s^n_k - s^0_k|| over its converged value, per layer, bottom first.",
            "",
            "| control | tolerance | steps | min cos | worst ratio | contrast ratio per layer |",
            "|---|---|---|---|---|---|",
        ]
        for row in result["controls"]:
            layers = " ".join(f"{v:.3f}" for v in row["contrast_ratio_per_layer"])
            lines.append(
                f"| {row['control']} | {row['tolerance']:g} | {row['free_steps']} + "
                f"{row['nudged_steps']} | {row['min_cosine']:.6f} | "
                f"{row['worst_norm_ratio']:.4f} | {layers} |"
            )
        lines.append("")
    lines += ["## Loosest passing tolerance (it and every tighter one pass)", ""]
    lines += [
        "| topology | weights | free / nudged schedule | nudged tolerance | free tolerance "
        "| steps |",
        "|---|---|---|---|---|---|",
    ]
    modes = ["same" if n is None else f"{n:g}" for n in NUDGED_TOLERANCES]
    for result in results:
        for mode in modes:
            for pair in SCHEDULE_PAIRS:
                row = _loosest_passing(result["grid"], pair, mode)
                cell = (
                    "none | -"
                    if row is None
                    else f"{row['tolerance']:g} | {row['free_steps']} + {row['nudged_steps']}"
                )
                lines.append(
                    f"| {result['topology']} | {result['condition']} | {pair[0]} / {pair[1]} | "
                    f"{mode} | {cell} |"
                )
    lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _step_pair(text: str) -> tuple[int, int]:
    """``100+50`` as (100, 50)."""
    free, _, nudged = text.partition("+")
    if not (free.isdigit() and nudged.isdigit()) or int(free) < 1 or int(nudged) < 1:
        raise argparse.ArgumentTypeError(
            f"expected FREE+NUDGED step counts such as 100+50, got {text!r}"
        )
    return int(free), int(nudged)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, help="directory with the MNIST IDX files")
    parser.add_argument("--topologies", nargs="+", default=list(TOPOLOGIES))
    parser.add_argument("--conditions", nargs="+", default=["fresh", "trained"])
    parser.add_argument(
        "--tolerances",
        type=float,
        nargs="+",
        default=list(TOLERANCES),
        help="free-phase tolerances of the grid and the controls (default: "
        + " ".join(f"{t:g}" for t in TOLERANCES)
        + "); a deep chain needs tighter ones",
    )
    parser.add_argument(
        "--fixed-steps",
        type=_step_pair,
        nargs="*",
        default=[],
        metavar="FREE+NUDGED",
        help="also the sweep schedule with these fixed step counts (tolerance 0), e.g. 100+50",
    )
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--train-batches", type=int, default=40)
    parser.add_argument("--reference-factor", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "analysis/reports/converged_phases"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python analysis/converged_phases.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:]
    )
    results = []
    for name in args.topologies:
        for condition in args.conditions:
            started = time.perf_counter()
            result = study(name, condition, args, log=lambda line: print(line, flush=True))
            result["reference_factor"] = args.reference_factor
            result["seconds"] = time.perf_counter() - started
            results.append(result)
            (out / "results.json").write_text(
                json.dumps({"command": command, "results": results}, indent=1), "utf-8"
            )
    print(f"wrote {write_report(results, out, command)} and {out / 'results.json'}")


if __name__ == "__main__":
    main()
