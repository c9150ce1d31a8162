"""``topo-ep bench``: seconds per training batch of EP and BP on one topology, side by side.

Both methods train a network compiled from the same seed on the same random batch (uniform
inputs in [0, 1), random labels) of the topology's batch size. After one warm-up step each,
every repeat times ``batches`` optimizer steps of EP, then ``batches`` of BP, so that the two
see the same machine load (interleaved: EP, BP, EP, BP, ...); the result per method is the
median over the repeats of the seconds per batch. With it come the EP/BP ratio, the mean steps
per phase of EP's timed batches (free; nudged, summed over the one or two nudged phases) and
the peak memory: ``torch.cuda.max_memory_allocated`` per method on a GPU, the process's max RSS
(``resource.getrusage``) on the CPU, where it is one number for the whole run.

The 1-, 5- and 15-minute load averages of the machine are recorded with the timings: timings
taken under load are not a clean comparison, and the report says so.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from topo_ep.compiler import compile_topology
from topo_ep.learn import make_method
from topo_ep.param_groups import make_optimizer
from topo_ep.spec import TopologySpec
from topo_ep.train import DTYPES

#: The methods compared, in the order they are timed within a repeat.
METHODS = ("ep", "bp")


@dataclass(frozen=True)
class BenchSettings:
    """What ``topo-ep bench`` measures.

    Attributes
    ----------
    repeats
        Timed rounds; each round times every method once.
    batches
        Optimizer steps per method and round.
    batch_size
        Examples per batch (``None``: the topology's ``training.batch_size``).
    device, dtype, threads
        Where and in what precision it runs; ``threads`` sets torch's intra-op threads
        (``None``: torch's default).
    seed
        Seeds the weights and the random batch.
    train_size
        Training examples per epoch, for the projected seconds per epoch.
    """

    repeats: int = 5
    batches: int = 10
    batch_size: int | None = None
    device: torch.device = torch.device("cpu")
    dtype: str = "float32"
    threads: int | None = None
    seed: int = 0
    train_size: int = 55_000


class _Runner:
    """One method's network, optimizer and batch, stepped and timed."""

    def __init__(self, spec: TopologySpec, name: str, settings: BenchSettings, size: int) -> None:
        device = settings.device
        self.net = compile_topology(
            spec, seed=settings.seed, dtype=DTYPES[settings.dtype], device=device
        )
        self.method = make_method(name, spec)
        self.optimizer = make_optimizer(self.net, spec)
        generator = torch.Generator().manual_seed(settings.seed)
        x = torch.rand(size, spec.input.size, generator=generator, dtype=torch.float64)
        y = torch.randint(0, spec.readout.size, (size,), generator=generator)
        self.x = x.to(device=device, dtype=DTYPES[settings.dtype])
        self.y = y.to(device)
        self.device = device
        self.free_steps: list[int] = []
        self.nudged_steps: list[int] = []

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        result = self.method.gradients(self.net, self.x, self.y)
        self.optimizer.step()
        self.free_steps.append(result.free_steps)
        self.nudged_steps.append(result.nudged_steps)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def seconds_per_batch(self, batches: int) -> float:
        self._sync()
        start = time.perf_counter()
        for _ in range(batches):
            self.step()
        self._sync()
        return (time.perf_counter() - start) / batches


def max_rss_bytes() -> int:
    """The process's peak resident set size (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def _dynamics(spec: TopologySpec) -> dict[str, Any]:
    d = spec.dynamics
    return {
        "schedule": d.schedule,
        "nudged_schedule": d.nudged_schedule or d.schedule,
        "free_steps": d.free_steps,
        "nudged_steps": d.nudged_steps,
        "tolerance": d.tolerance,
        "nudged_tolerance": d.nudged_phase_tolerance,
        "check_every": d.check_every,
        "execution": d.execution,
        "nudging": spec.training.nudging,
    }


def run_bench(spec: TopologySpec, settings: BenchSettings) -> dict[str, Any]:
    """Time EP and BP interleaved; returns the document ``--json`` writes (keys in
    :data:`JSON_KEYS`). torch's thread count is put back afterwards."""
    before = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        return _measure(spec, settings)
    finally:
        torch.set_num_threads(before)


def _measure(spec: TopologySpec, settings: BenchSettings) -> dict[str, Any]:
    size = settings.batch_size or spec.training.batch_size
    cuda = settings.device.type == "cuda"
    runners = {name: _Runner(spec, name, settings, size) for name in METHODS}
    peaks: dict[str, int | None] = {}
    for name, runner in runners.items():
        if cuda:
            torch.cuda.reset_peak_memory_stats(settings.device)
        runner.seconds_per_batch(1)  # warm-up, not timed
        peaks[name] = int(torch.cuda.max_memory_allocated(settings.device)) if cuda else None
        runner.free_steps.clear()
        runner.nudged_steps.clear()
    samples: dict[str, list[float]] = {name: [] for name in METHODS}
    for _ in range(settings.repeats):
        for name, runner in runners.items():
            if cuda:
                torch.cuda.reset_peak_memory_stats(settings.device)
            samples[name].append(runner.seconds_per_batch(settings.batches))
            if cuda:
                peak = int(torch.cuda.max_memory_allocated(settings.device))
                peaks[name] = max(peaks[name] or 0, peak)
    batches_per_epoch = math.ceil(settings.train_size / size)
    methods: dict[str, dict[str, Any]] = {}
    for name, runner in runners.items():
        median = statistics.median(samples[name])
        methods[name] = {
            "seconds_per_batch_median": median,
            "seconds_per_batch_all": samples[name],
            "projected_seconds_per_epoch": median * batches_per_epoch,
            "free_steps_mean": statistics.fmean(runner.free_steps),
            "nudged_steps_mean": statistics.fmean(runner.nudged_steps),
            "peak_memory_bytes": peaks[name],
        }
    return {
        "topology": spec.name,
        "device": str(settings.device),
        "device_name": torch.cuda.get_device_name(settings.device) if cuda else _cpu_name(),
        "dtype": settings.dtype,
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "batch_size": size,
        "batches": settings.batches,
        "repeats": settings.repeats,
        "train_size": settings.train_size,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "dynamics": _dynamics(spec),
        "methods": methods,
        "ep_over_bp": methods["ep"]["seconds_per_batch_median"]
        / methods["bp"]["seconds_per_batch_median"],
        "peak_memory": {
            "kind": "torch.cuda.max_memory_allocated per method"
            if cuda
            else "max RSS of the process (both methods)",
            "process_max_rss_bytes": max_rss_bytes(),
        },
    }


#: Top-level keys of the JSON document (checked by the tests; documented in the README).
JSON_KEYS = (
    "topology",
    "device",
    "device_name",
    "dtype",
    "threads",
    "torch",
    "batch_size",
    "batches",
    "repeats",
    "train_size",
    "load_average",
    "dynamics",
    "methods",
    "ep_over_bp",
    "peak_memory",
)
#: Keys of each entry of ``methods``.
METHOD_KEYS = (
    "seconds_per_batch_median",
    "seconds_per_batch_all",
    "projected_seconds_per_epoch",
    "free_steps_mean",
    "nudged_steps_mean",
    "peak_memory_bytes",
)


def _cpu_name() -> str:
    return platform.processor() or platform.machine()


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f} MiB"


def format_table(document: dict[str, Any]) -> str:
    """The table ``topo-ep bench`` prints."""
    d = document["dynamics"]
    load = document["load_average"]
    load_text = "n/a" if load is None else " / ".join(f"{v:.2f}" for v in load)
    lines = [
        f"{document['topology']} on {document['device']} ({document['device_name']}), "
        f"{document['dtype']}, {document['threads']} threads, batch {document['batch_size']}, "
        f"{document['repeats']} repeats x {document['batches']} batches, interleaved",
        f"dynamics: {d['schedule']} / {d['nudged_schedule']}, steps {d['free_steps']} / "
        f"{d['nudged_steps']}, tolerance {d['tolerance']:g} / {d['nudged_tolerance']:g}, "
        f"check every {d['check_every']}, execution {d.get('execution', 'eager')}; "
        f"load average {load_text}",
        "",
        "| method | s / batch (median) | projected s / epoch | free steps | nudged steps "
        "| peak memory |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in document["methods"].items():
        lines.append(
            f"| {name} | {row['seconds_per_batch_median']:.4f} | "
            f"{row['projected_seconds_per_epoch']:.1f} | {row['free_steps_mean']:.1f} | "
            f"{row['nudged_steps_mean']:.1f} | {_mib(row['peak_memory_bytes'])} |"
        )
    memory = document["peak_memory"]
    lines += [
        "",
        f"EP / BP time ratio: {document['ep_over_bp']:.2f}",
        f"peak memory: {memory['kind']}; process max RSS {_mib(memory['process_max_rss_bytes'])}",
    ]
    return "\n".join(lines)
