"""The ``topo-ep`` command line.

Every subcommand lives in a small function ``_cmd_<name>(args) -> int``. No input gives a
traceback; the exit codes are

- 2 for an error in the user's input (:class:`~topo_ep.errors.TopoEpError`, e.g. an unknown
  ``--schedule``, or a command-line value that argparse refuses: a negative seed, ``--batch 0``);
- 1 for a run that failed (:class:`~topo_ep.errors.RunFailedError`, e.g. weights that became
  NaN; memory exhausted; a number that overflowed; a file that could not be written);
- 130 after Ctrl-C and 143 after SIGTERM (which raises :class:`~topo_ep.interrupts.Terminated`).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from topo_ep.errors import RunFailedError, TopoEpError
from topo_ep.interrupts import exit_code, sigterm_raises
from topo_ep.registry import Registry
from topo_ep.spec import VALIDATION_MODES

if TYPE_CHECKING:
    from topo_ep.distributed import DataParallel
    from topo_ep.rundir import RunLock
    from topo_ep.spec import TopologySpec

#: Seeds accepted: what torch's and numpy's generators take, with room for the epoch offsets.
SEED_LIMIT = 2**63

TRAIN_EPILOG = """run directories (--out):
  A new run needs an empty or missing directory. A directory that holds a run is refused
  unless you pass --resume (continue it) or --overwrite (move the old run aside, to
  OUT.old-<date>-<time>, and start again). While a training runs it holds a lock on the
  directory: a second training into it exits with code 2.
  --resume continues from OUT/checkpoint.pt and refuses settings that differ from the
  checkpoint's, naming each: --seed, --dtype, --limit, --dataset, --method, the topology
  file and its --set options. What may change: --epochs (more epochs), --device,
  --data-dir, the number of data-parallel ranks and dynamics.execution.
  An epoch is saved whole, checkpoint first, then its metrics line; Ctrl-C (exit 130) or
  SIGTERM (exit 143) abandons the epoch in progress and leaves no temporary file.
  --checkpoint-minutes M also saves the epoch in progress to OUT/checkpoint.partial.pt every
  M minutes (one process only), and --resume then goes on from the batch it reached, with the
  same result as an uninterrupted run; the file is removed when the epoch ends.
  Weights that become NaN or infinite stop the run with exit code 1 before they are saved.

data-parallel training (torchrun):
  torchrun --standalone --nproc-per-node N -m topo_ep train FILE ... trains on N ranks, each
  on its shard of every batch, gradients all-reduced (gloo on the CPU, nccl on CUDA; see
  --dist-backend). Rank 0 alone writes OUT; --resume works the same way.
"""


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _seed(text: str) -> int:
    value = _integer(text)
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(
            f"a seed is an integer from 0 to 2**63 - 1 = {SEED_LIMIT - 1}, got {text!r}"
        )
    return value


class _RegistryNames:
    """The names of a registry as argparse ``choices``, loaded on first use.

    The learning methods import torch, so the parser reads their registry only when a method
    option is checked or help is printed (every option using it names a ``metavar``, which
    keeps argparse from listing the choices while it builds the parser): ``topo-ep validate``
    stays fast.
    """

    def __init__(self, load: Callable[[], Registry]) -> None:
        self._load = load

    def __contains__(self, name: object) -> bool:
        return name in self._load()

    def __iter__(self) -> Iterator[str]:
        return iter(self._load().names())


def _methods() -> Registry:
    from topo_ep.learn import METHODS

    return METHODS


def _schedules() -> Registry:
    from topo_ep.schedules import SCHEDULES

    return SCHEDULES


def _add_schedule_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--schedule NAME``, one of the schedule registry's names (default: the topology's)."""
    parser.add_argument(
        "--schedule",
        choices=_RegistryNames(_schedules),
        default=None,
        metavar="SCHEDULE",
        help=f"{what}: %(choices)s (default: the topology's)",
    )


def _add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a field by dotted path, e.g. training.lr=1e-3 or feedback_gain=0.1 "
        "(the gain of every feedback edge); repeatable",
    )


def _cmd_validate(args: argparse.Namespace) -> int:
    from topo_ep.loader import load_topology

    spec = load_topology(args.file, overrides=args.overrides)
    print(
        f"{args.file}: ok ({spec.name}: {len(spec.layers)} hidden layers, {len(spec.edges)} edges)"
    )
    return 0


def _cmd_compile(args: argparse.Namespace) -> int:
    from topo_ep.compiler import compile_topology
    from topo_ep.loader import load_topology
    from topo_ep.param_groups import param_groups

    spec = load_topology(args.file, overrides=args.overrides)
    net = compile_topology(spec, seed=args.seed)
    print(net.describe())
    groups = param_groups(net)
    schedule = "" if spec.training.lr_schedule == "constant" else ", scaled by the schedule"
    print(
        f"optimizer {spec.training.optimizer}, {len(groups)} parameter group"
        f"{'s' if len(groups) != 1 else ''} (base learning rate{schedule}):"
    )
    for group in groups:
        print(f"  {group.describe()}")
    balance = net.balance
    if balance.balanced and balance.scales is not None:
        scales = ", ".join(f"{name} {value:.4g}" for name, value in balance.scales.items())
        print(f"energy: yes; {balance.reason.removeprefix('balanced: ')}; scales c_k: {scales}")
    else:
        print(f"energy: none; {balance.reason.removeprefix('no energy: ')}")
    return 0


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        default=None,
        help="digits, mnist, fashion-mnist or cifar10 (default: the topology's input.dataset, "
        "else digits)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="directory with the IDX files (mnist, fashion-mnist) or the binary CIFAR-10 batches "
        "(data_batch_*.bin, test_batch.bin; default: $TOPO_EP_DATA, else ./data)",
    )


def _dataset_name(args: argparse.Namespace, spec: TopologySpec, stored: str | None = None) -> str:
    """--dataset, else the checkpoint's, else the one the topology declares, else digits."""
    return args.dataset or stored or spec.input.dataset or "digits"


def _check_checkpoint(path: str | None) -> None:
    """Refuse a checkpoint that cannot be read or holds non-finite weights, before analysing."""
    if path is None:
        return
    from topo_ep.checkpoint import check_finite, checkpoint_file, load_checkpoint

    check_finite(load_checkpoint(path), checkpoint_file(path))


def _cmd_train(args: argparse.Namespace) -> int:
    """Train in this process, or as one rank of a torchrun launch (:mod:`topo_ep.distributed`):
    then rank 0 alone takes the lock and checks the run directory, and tells the others."""
    from pathlib import Path

    from topo_ep.distributed import process_group
    from topo_ep.loader import load_topology
    from topo_ep.rundir import RunDirError, RunLock, ensure_output_dir, prepare_run_dir

    spec = load_topology(args.file, overrides=args.overrides)
    with process_group(args.device, args.dist_backend) as parallel, contextlib.ExitStack() as held:
        locks: list[RunLock] = []

        def claim() -> str | None:
            if args.resume and not os.path.lexists(args.out):
                raise RunDirError(f"--resume: there is no run directory {args.out} to continue")
            out = ensure_output_dir(args.out)
            locks.append(held.enter_context(RunLock(out)))
            moved = prepare_run_dir(Path(out), resume=args.resume, overwrite=args.overwrite)
            if moved is not None:
                print(f"--overwrite: moved the previous run in {out} to {moved}")
            return None if moved is None else str(moved)

        parallel.from_main(claim)
        return _train_locked(args, spec, locks[0] if locks else None, parallel)


def _train_locked(
    args: argparse.Namespace,
    spec: TopologySpec,
    lock: RunLock | None,
    parallel: DataParallel,
) -> int:
    """The training of ``_cmd_train`` once the run directory is locked and checked (by this
    process, or by rank 0 of a data-parallel run: ``lock`` is ``None`` on the other ranks)."""
    from topo_ep.data import check_compatible, load_dataset, val_fraction_for
    from topo_ep.distributed import resume_on_every_rank
    from topo_ep.train import RunSettings, Trainer, summary_line

    say: Callable[[str], None] = _flushed if parallel.distributed else print
    if not parallel.is_main:
        say = _silent
    if parallel.distributed and args.track_flow > 0:
        raise TopoEpError("--track-flow runs in one process; launch without torchrun to use it")
    settings = RunSettings(
        method=args.method,
        epochs=args.epochs if args.epochs is not None else spec.training.epochs,
        seed=args.seed,
        device=parallel.device or args.device,
        dtype=args.dtype,
        dataset=_dataset_name(args, spec),
        data_dir=args.data_dir,
        limit=args.limit,
        validation=args.validation,
    )
    dataset = load_dataset(
        settings.dataset,
        args.data_dir,
        val_fraction=val_fraction_for(args.validation),
        seed=args.seed,
        limit=args.limit,
    )
    check_compatible(dataset, spec.input.size, spec.readout.size, args.file)
    trainer = Trainer(
        spec,
        dataset,
        settings,
        out_dir=args.out,
        progress=not args.quiet and parallel.is_main,
        log=say,
        lock=lock,
        parallel=parallel,
        checkpoint_minutes=args.checkpoint_minutes,
    )
    if args.resume:
        resume_on_every_rank(trainer, args.out)
        done = trainer.start_epoch - 1
        if settings.epochs < done:
            raise TopoEpError(
                f"--epochs {settings.epochs}: {args.out} already holds {done} epochs; a resumed "
                f"run can only go on (pass --epochs {done + 1} or more)"
            )
        if settings.epochs == done:
            say(
                f"{args.out} already holds all {done} epochs: nothing to train (pass a larger "
                "--epochs to continue)"
            )
            say(summary_line(spec, settings, trainer.metrics))
            return 0
    ranks = (
        f", {parallel.world_size} ranks ({parallel.backend}; each a shard of every batch of "
        f"{spec.training.batch_size})"
        if parallel.distributed
        else ""
    )
    say(
        f"training {spec.name} with {args.method} on {dataset.name} "
        f"({len(dataset.train)} train / {len(dataset.val)} val / {len(dataset.test)} test), "
        f"device {trainer.device}{ranks}, {settings.dtype}, seed {args.seed}, out {args.out}"
    )
    if spec.input.standardised:
        say(f"inputs standardised: x <- (x - {spec.input.mean:g}) / {spec.input.std:g}")
    for name, split in (("validation", dataset.val), ("test", dataset.test)):
        if len(split) == 0:
            say(f"note: the {name} split is empty: its accuracy is reported as n/a (null)")
    if args.track_flow > 0:
        from topo_ep.analysis.tracking import FLOW_FILE, train_with_flow

        test = trainer.dataset.test
        x = test.x[: args.track_flow].to(dtype=trainer.net.dtype)
        metrics, _ = train_with_flow(trainer, x, test.y[: args.track_flow])
        print(f"gradient flow after every epoch: {trainer.out_dir / FLOW_FILE}")
    else:
        metrics = trainer.run()
    say(summary_line(spec, settings, metrics))
    return 0


def _silent(line: str) -> None:
    """The log of the ranks other than 0: they print nothing."""


def _flushed(line: str) -> None:
    """Rank 0's log: flushed at once (torchrun gives the ranks pipes, which buffer)."""
    print(line, flush=True)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from topo_ep.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(
        args.checkpoint, dataset=args.dataset, data_dir=args.data_dir, device=args.device
    )
    print(report.format())
    return 0


def _cmd_check_gradients(args: argparse.Namespace) -> int:
    from topo_ep.gradcheck import CheckSettings, check_gradients
    from topo_ep.loader import load_topology

    spec = load_topology(args.file, overrides=args.overrides)
    _check_checkpoint(args.checkpoint)
    try:
        settings = CheckSettings(
            nudge=args.nudge,
            nudging=args.nudging,
            rule=args.rule,
            error=args.error,
            dtype=args.dtype,
            batch=args.batch,
            seed=args.seed,
            max_angle=args.max_angle,
            gain_compensated=args.gain_compensated,
            schedule=args.schedule,
            max_steps=args.max_steps,
            tolerance=args.tolerance,
        )
    except ValueError as exc:
        raise TopoEpError(str(exc)) from exc
    net, data = None, None
    if args.checkpoint is not None or args.dataset is not None:
        from topo_ep.analysis.inputs import analysis_batch, load_network

        loaded = load_network(args.file, args.overrides, args.checkpoint, args.dtype, args.seed)
        net, spec = loaded.net, loaded.net.spec
        print(f"network: {loaded.source}")
        dataset = args.dataset or loaded.dataset
        if dataset is not None:
            x, y, described = analysis_batch(
                net, dataset, args.data_dir or loaded.data_dir, args.batch
            )
            data = (x, y)
            print(f"data: {described}")
    result = check_gradients(spec, settings, net=net, data=data)
    print(result.format())
    return 0 if result.passed else 1


def _cmd_analyze(args: argparse.Namespace) -> int:
    import shlex

    import torch

    from topo_ep.analysis.inputs import analysis_batch, load_network
    from topo_ep.analysis.report import ReportContext, write_report
    from topo_ep.analysis.run import AnalysisOptions, analyse
    from topo_ep.rundir import ensure_output_dir

    ensure_output_dir(args.out)
    _check_checkpoint(args.checkpoint)
    torch.manual_seed(args.seed)
    loaded = load_network(args.file, args.overrides, args.checkpoint, args.dtype, args.seed)
    dataset = _dataset_name(args, loaded.net.spec, loaded.dataset)
    data_dir = args.data_dir or loaded.data_dir
    x, y, described = analysis_batch(loaded.net, dataset, data_dir, args.batch)
    schedules = tuple(args.schedule) if args.schedule else None
    options = AnalysisOptions(
        schedules=schedules,
        convergence_steps=args.max_steps,
        lyapunov_steps=args.lyapunov_steps,
    )
    result = analyse(loaded.net, x, y, options, log=lambda line: print(f"analyse: {line}"))
    command = "topo-ep " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    context = ReportContext(loaded.source, described, command)
    report = write_report(result, loaded.net.spec, context, args.out)
    print(f"wrote {report} and {report.parent / 'analysis.json'}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    import shlex

    from topo_ep.analysis.sweep import (
        SweepSettings,
        parse_set_values,
        parse_shard,
        plot_quantities,
        run_sweep,
        write_tables,
    )
    from topo_ep.loader import load_topology
    from topo_ep.rundir import ensure_output_dir

    ensure_output_dir(args.out)
    shard = parse_shard(args.shard) if args.shard is not None else None
    path, values = parse_set_values(args.set_values)
    settings = SweepSettings(
        file=args.file,
        path=path,
        values=values,
        overrides=tuple(args.overrides),
        seeds=args.seeds,
        train_epochs=args.train_epochs,
        dataset=_dataset_name(args, load_topology(args.file, overrides=args.overrides)),
        data_dir=args.data_dir,
        limit=args.limit,
        dtype=args.dtype,
        batch=args.batch,
        schedule=args.schedule,
        convergence_steps=args.max_steps,
        out=args.out,
    )
    rows = run_sweep(settings, workers=args.workers, shard=shard)
    if shard is not None and shard[1] > 1:
        print(
            f"share {shard[0]}/{shard[1]}: {len(rows)} points in {settings.out}; when every share "
            "is done, merge their folders into one table and one set of plots with "
            "topo-ep sweep-merge FOLDER... --out MERGED"
        )
        return 0
    command = "topo-ep " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    csv_path, md_path = write_tables(rows, settings, command)
    plot_quantities(rows, settings)
    print(f"wrote {md_path}, {csv_path} and one PNG per quantity in {settings.out}")
    return 0


def _cmd_sweep_merge(args: argparse.Namespace) -> int:
    import shlex

    from topo_ep.analysis.sweep import merge_sweeps, plot_quantities, write_tables
    from topo_ep.rundir import ensure_output_dir

    ensure_output_dir(args.out)
    settings, rows = merge_sweeps(args.folders, args.out)
    command = "topo-ep " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    csv_path, md_path = write_tables(rows, settings, command)
    plot_quantities(rows, settings)
    print(
        f"merged {len(rows)} points from {len(args.folders)} folder(s): wrote {md_path}, "
        f"{csv_path} and one PNG per quantity in {settings.out}"
    )
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from topo_ep.bench import BenchSettings, format_table, run_bench
    from topo_ep.loader import load_topology
    from topo_ep.train import resolve_device

    spec = load_topology(args.file, overrides=args.overrides)
    settings = BenchSettings(
        repeats=args.repeats,
        batches=args.batches,
        batch_size=args.batch_size,
        device=resolve_device(args.device),
        dtype=args.dtype,
        threads=args.threads,
        seed=args.seed,
        train_size=args.train_size,
    )
    document = run_bench(spec, settings)
    print(format_table(document))
    if args.json is not None:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        document["file"] = args.file
        document["overrides"] = list(args.overrides)
        path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="topo-ep",
        description="Graph-declared recurrent networks trained with Equilibrium Propagation.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a topology file")
    p.add_argument("file")
    _add_set_option(p)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("compile", help="print the layout, the blocks and the parameter count")
    p.add_argument("file")
    p.add_argument("--seed", type=_seed, default=0)
    _add_set_option(p)
    p.set_defaults(func=_cmd_compile)

    p = sub.add_parser(
        "train",
        help="train a topology",
        description="Train a topology and write OUT/checkpoint.pt, OUT/config.yaml and "
        "OUT/metrics.jsonl.",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file")
    _add_data_options(p)
    p.add_argument("--epochs", type=_positive_int, default=None, help="default: training.epochs")
    p.add_argument(
        "--method",
        choices=_RegistryNames(_methods),
        default="ep",
        metavar="METHOD",
        help="learning method: %(choices)s (default: ep)",
    )
    p.add_argument("--seed", type=_seed, default=0, help="0 to 2**63 - 1 (default 0)")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda[:N]")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--out", default="runs/latest", help="run directory (default runs/latest)")
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in OUT from OUT/checkpoint.pt (same settings; see below)",
    )
    again.add_argument(
        "--overwrite",
        action="store_true",
        help="move the run that OUT holds aside (to OUT.old-<date>-<time>) and start a new one",
    )
    p.add_argument(
        "--limit", type=_positive_int, default=None, help="use at most N training examples"
    )
    p.add_argument(
        "--validation",
        choices=VALIDATION_MODES,
        default="holdout",
        help="holdout (default): keep the dataset's validation split out of training (MNIST: "
        "5000 images); none: train on the whole training set, as papers that report the test "
        "accuracy do (no validation accuracy then)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--dist-backend",
        choices=("auto", "gloo", "nccl"),
        default="auto",
        help="under torchrun: the torch.distributed backend (auto: nccl on CUDA, gloo on the CPU)",
    )
    p.add_argument(
        "--checkpoint-minutes",
        type=_non_negative_float,
        default=None,
        metavar="M",
        help="also save the epoch in progress every M minutes (OUT/checkpoint.partial.pt; 0: "
        "after every batch), so that --resume loses at most M minutes (default: whole epochs)",
    )
    p.add_argument(
        "--track-flow",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="measure the gradient flow on the first N test examples before training and after "
        "every epoch, into OUT/flow.jsonl (0: off)",
    )
    _add_set_option(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "check-gradients",
        help="compare EP's update with the implicit gradient, edge by edge",
        description="Relax to a tight tolerance, compute the EP update of every learned "
        "tensor and the implicit gradient of the same loss at the free fixed point, and print "
        "per edge 1 - cos, the raw norm ratio, the ratio the theory predicts (n/a without an "
        "energy) and the sign agreement. Exit code 1 when any edge has 1 - cos > --max-angle "
        "or a relaxation did not converge.",
    )
    p.add_argument("file")
    p.add_argument("--nudge", type=float, default=1e-3, help="nudging strength (1e-3)")
    p.add_argument("--nudging", choices=("symmetric", "one-sided"), default="symmetric")
    p.add_argument("--rule", choices=("contrast", "paper"), default="contrast")
    p.add_argument(
        "--error",
        choices=("reread", "held"),
        default="reread",
        help="output error re-read every step (default) or held at its free value",
    )
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--batch", type=_positive_int, default=16, help="random examples (16)")
    p.add_argument("--seed", type=_seed, default=0, help="seeds the weights and the batch")
    p.add_argument(
        "--max-angle", type=float, default=1e-6, help="failure threshold on 1 - cos (1e-6)"
    )
    p.add_argument(
        "--gain-compensated",
        action="store_true",
        help="divide each edge's update by its predicted factor (needs an energy)",
    )
    _add_schedule_option(p, "relaxation schedule")
    p.add_argument("--max-steps", type=_positive_int, default=20000, help="step limit per phase")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="check a trained network (checkpoint.pt or its run dir) on its dataset's test split",
    )
    p.add_argument("--dataset", default=None, help="check on this dataset's first test examples")
    p.add_argument("--data-dir", default=None)
    p.add_argument(
        "--tolerance", type=float, default=None, help="residual tolerance (16 eps of the dtype)"
    )
    _add_set_option(p)
    p.set_defaults(func=_cmd_check_gradients)

    p = sub.add_parser("evaluate", help="accuracy and loss of a saved model")
    p.add_argument("checkpoint", help="checkpoint.pt or its run directory")
    p.add_argument("--dataset", default=None, help="default: the dataset it was trained on")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "analyze",
        help="spectral radius, Jacobian, convergence, Lyapunov exponent, gradient flow, energy",
        description="Analyse a fresh or trained network on a batch of the test split and "
        "write OUT/report.md, OUT/analysis.json and PNG plots.",
    )
    p.add_argument("file")
    _add_data_options(p)
    p.set_defaults(dataset=None)
    p.add_argument("--checkpoint", default=None, help="a trained checkpoint (or its run dir)")
    p.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="default: the checkpoint's, else float32")  # fmt: skip
    p.add_argument("--seed", type=_seed, default=0, help="weights of a fresh network (0)")
    p.add_argument("--batch", type=_positive_int, default=64, help="test examples analysed (64)")
    p.add_argument("--schedule", action="append", default=None, metavar="SCHEDULE",
                   choices=_RegistryNames(_schedules),
                   help="schedule to analyse: %(choices)s (repeatable; default: all)")  # fmt: skip
    p.add_argument("--max-steps", type=_positive_int, default=1000,
                   help="convergence step limit (1000)")  # fmt: skip
    p.add_argument("--lyapunov-steps", type=_positive_int, default=None, metavar="T",
                   help="horizon of the Lyapunov exponent (default: the free steps)")  # fmt: skip
    p.add_argument("--out", default="runs/analysis", help="output folder (runs/analysis)")
    _add_set_option(p)
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser(
        "sweep",
        help="the analysis (and a short training) over a grid of one --set parameter",
        description="For each value of PATH (e.g. feedback_gain) and each seed: load with "
        "--set PATH=V, optionally train, analyse; write OUT/sweep.csv, OUT/sweep.md and one "
        "PNG per quantity with the seed spread. Interrupted sweeps resume.",
    )
    p.add_argument("file")
    p.add_argument("--set-values", required=True, metavar="PATH=V1,V2,...",
                   help="the grid, e.g. feedback_gain=0.01,0.1,1")  # fmt: skip
    _add_data_options(p)
    p.add_argument("--train-epochs", type=_non_negative_int, default=0,
                   help="epochs per point (0: none)")  # fmt: skip
    p.add_argument("--seeds", type=_positive_int, default=1, help="seeds 0..K-1 per value (1)")
    p.add_argument("--limit", type=_positive_int, default=None,
                   help="use at most N training examples")  # fmt: skip
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--batch", type=_positive_int, default=64, help="test examples analysed (64)")
    _add_schedule_option(p, "schedule analysed")
    p.add_argument("--max-steps", type=_positive_int, default=1000,
                   help="convergence step limit (1000)")  # fmt: skip
    p.add_argument("--out", default="runs/sweep", help="output folder (runs/sweep)")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="run the points in N processes of this machine (1)")  # fmt: skip
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run share I of N of the grid (every N-th point from the I-th), e.g. "
                   "on N machines; then merge the folders with sweep-merge")  # fmt: skip
    _add_set_option(p)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser(
        "sweep-merge",
        help="merge the folders of a sweep's shares into one table and one set of plots",
        description="Read the manifests and rows of the folders written by topo-ep sweep "
        "--shard I/N (or of any sweep), check that they belong to one sweep and cover its grid, "
        "and write OUT/sweep.csv, OUT/sweep.md and one PNG per quantity.",
    )
    p.add_argument("folders", nargs="+", metavar="FOLDER", help="the shares' --out folders")
    p.add_argument("--out", required=True, help="folder of the merged table and plots")
    p.set_defaults(func=_cmd_sweep_merge)

    p = sub.add_parser(
        "bench",
        help="seconds per training batch of EP and BP, interleaved, with steps and memory",
        description="Time EP and BP training steps on random inputs of the topology's batch "
        "size, interleaved (EP, BP, EP, BP, ...), and print the median seconds per batch, the "
        "EP/BP ratio, EP's steps per phase and the peak memory (max RSS on the CPU, "
        "torch.cuda.max_memory_allocated on a GPU). Timings on a loaded machine are not a "
        "clean comparison: the load average is printed with them.",
    )
    p.add_argument("file")
    p.add_argument("--repeats", type=_positive_int, default=5, help="timed rounds (5)")
    p.add_argument("--batches", type=_positive_int, default=10,
                   help="optimizer steps per method and round (10)")  # fmt: skip
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="examples per batch (default: training.batch_size)")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda[:N]")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch intra-op threads (default: torch's)")  # fmt: skip
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--seed", type=_seed, default=0, help="weights and batch (0)")
    p.add_argument("--train-size", type=_positive_int, default=55000,
                   help="examples per epoch, for the projected s / epoch (55000)")  # fmt: skip
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    _add_set_option(p)
    p.set_defaults(func=_cmd_bench)
    return parser


def _interrupted(args: argparse.Namespace, exc: KeyboardInterrupt) -> str:
    from topo_ep.distributed import launched_by_torchrun

    what = "terminated (SIGTERM)" if exit_code(exc) != 130 else "interrupted (Ctrl-C)"
    if args.command == "train" and launched_by_torchrun():
        why = (
            " (torchrun stops every rank when one fails or the job is stopped)"
            if exit_code(exc) != 130
            else ""
        )
        return (
            f"rank {os.environ.get('RANK')}: {what}{why}: the epoch in progress was abandoned; "
            f"{args.out} keeps the last finished epoch, if any (continue with --resume under "
            "the same torchrun command)"
        )
    if args.command == "train":
        return (
            f"{what}: the epoch in progress was abandoned; {args.out} keeps the last finished "
            "epoch, if any (continue with --resume)"
        )
    return what


@contextlib.contextmanager
def _subnormals_flushed() -> Iterator[None]:
    """Flush subnormal floats to zero while a command runs, then restore the setting.

    A relaxation whose products reach the subnormal range runs many times slower on the CPU:
    100 free steps of agt_10x64 at feedback gain 3 (float64, batch 16) took 14.2 s, and 0.80 s
    with subnormals flushed, to the same states. Training the quick start for 3 epochs gave
    bit-identical weights either way. The setting is process-wide, so it is put back for a
    caller that runs :func:`main` in-process.
    """
    import torch

    before = float(torch.tensor(1e-300, dtype=torch.float64) * 1e-10) == 0.0
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    numeric = args.command != "validate"  # validate stays free of torch's import time
    try:
        with sigterm_raises(), _subnormals_flushed() if numeric else contextlib.nullcontext():
            return int(args.func(args))
    except TopoEpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunFailedError as exc:
        print(f"error: run failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(_interrupted(args, exc), file=sys.stderr)
        return exit_code(exc)
    except MemoryError:
        print(
            "error: run failed: out of memory (the network, the batch or the data is too large "
            "for this machine)",
            file=sys.stderr,
        )
        return 1
    except OverflowError as exc:
        print(f"error: run failed: a number overflowed ({exc})", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # the reader of stdout went away (`topo-ep compile FILE | head`): stop quietly, and
        # point stdout at devnull so that flushing it at exit cannot raise again
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: run failed: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
