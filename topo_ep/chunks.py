"""How the relaxation's chunks of steps run: eagerly, as a replayed CUDA graph, or compiled.

:func:`topo_ep.engine.solve` runs the steps between two convergence checks as one chunk of
k = ``check_every`` steps (fewer at the step limit) and reads the criterion on the host only
between chunks. ``dynamics.execution`` chooses how a chunk of :func:`topo_ep.engine.step` runs:

- ``eager`` (the default): k calls of the step, one kernel launch per product
  (:func:`topo_ep.engine.eager_chunks`; the same bits as single steps).
- ``cuda-graph``: the k steps are captured once in a ``torch.cuda.CUDAGraph`` and replayed.
  The graph reads static buffers: before a replay the current state is copied into them (and,
  once per phase, the drives); after it the state is cloned out, so that a phase's result
  never aliases a buffer that the next replay overwrites. Capture follows PyTorch's recipe:
  warm-up iterations on a side stream, then ``torch.cuda.graph``. One graph is kept per
  network, schedule, k, shapes, dtype, device, feedback gains and parameter addresses; a
  change of any of them captures a new one. On a device that is not CUDA it runs eagerly,
  with a one-line warning.
- ``compile``: one chunk of k steps is ``torch.compile``'d (not a whole phase: compiling 20
  unrolled steps took 14 s on the 2-core development machine); dynamo recompiles for a new k
  or shape. Fusion changes the rounding, so the states are close to eager ones, not equal.

Only phases whose step is a function of the state and the drives alone run so; a phase with a
per-step observer or a state-dependent drive (``training.error: reread``) runs eagerly.
A :class:`ChunkRunner` is a :data:`topo_ep.engine.ChunkSource` and holds the graphs or the
compiled function of one learner (no module-level cache).
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from topo_ep.compiler import CompiledNetwork, Schedule
from topo_ep.engine import Chunks, step
from topo_ep.errors import TopoEpError

#: The values of ``dynamics.execution``.
EXECUTIONS = ("eager", "cuda-graph", "compile")
#: Warm-up runs of a chunk on a side stream before its capture (PyTorch's recipe uses a few).
WARMUP_RUNS = 3

#: A step as a function of the state and the drives alone: (z_t, drives) -> z_{t+1}.
PureStep = Callable[[list[Tensor], Sequence[Tensor]], list[Tensor]]


def pure_step(net: CompiledNetwork, groups: Schedule) -> PureStep:
    """:func:`topo_ep.engine.step` of ``groups`` with the drives as an argument (no skipped
    zero layers: with finite weights their products add exact zeros, so the values are
    those of the first step that skips them)."""

    def advance(state: list[Tensor], drives: Sequence[Tensor]) -> list[Tensor]:
        return step(net, state, drives, groups)

    return advance


def run_steps(
    advance: PureStep, state: list[Tensor], drives: Sequence[Tensor], steps: int
) -> tuple[list[Tensor], list[Tensor]]:
    """k = ``steps`` steps z_{t+1} = advance(z_t, drives); returns (z_{t+k}, z_{t+k-1})."""
    previous = state
    for _ in range(steps):
        previous = state
        state = advance(state, drives)
    return state, previous


def cpp_compiler_available() -> bool:
    """Whether a C++ compiler is on the PATH (``torch.compile`` on the CPU needs one)."""
    return bool(shutil.which("c++") or shutil.which("g++"))


def network_fingerprint(net: CompiledNetwork) -> tuple[Any, ...]:
    """What a captured graph has baked in besides shapes: every block's gain (a Python
    float, e.g. re-solved by ``feedback_gain: {every_epoch: true}``) and the address of every
    parameter (an optimizer updates them in place; a replaced tensor moves)."""
    gains = tuple(getattr(block, "gain", None) for block in net.blocks)
    addresses = tuple(p.data_ptr() for p in net.parameters())
    return gains, addresses


def _layout(tensors: Sequence[Tensor]) -> tuple[Any, ...]:
    return tuple((tuple(t.shape), t.dtype, str(t.device)) for t in tensors)


class StaticChunk:
    """k steps of one network and schedule over static buffers, captured in a CUDA graph.

    The chunk reads the state and the drives from buffers of its own (``state_in``,
    ``drives_in``) and leaves z_{t+k}, z_{t+k-1} in ``state_out``, ``previous_out``. With
    ``capture`` (CUDA) the k steps are recorded once in a ``torch.cuda.CUDAGraph`` after
    :data:`WARMUP_RUNS` warm-up runs on a side stream, and every :meth:`replay` replays it;
    without, :meth:`replay` runs the same steps eagerly over the same buffers, so the buffer
    handling (copy in, drives bound once per phase, clone out) is the one a graph uses, and
    runs on any device.

    Parameters
    ----------
    advance
        The step (:func:`pure_step`).
    state, drives
        Tensors of the shapes, dtype and device of the phases it will run; their values are
        used for the warm-up only.
    steps
        k, the steps of one replay.
    owner
        The network whose tensors the chunk reads, kept alive with it (a cache keyed by its
        ``id`` then never meets another network under the same ``id``).
    capture
        Record a CUDA graph (the tensors must be on a CUDA device).
    """

    def __init__(
        self,
        advance: PureStep,
        state: Sequence[Tensor],
        drives: Sequence[Tensor],
        steps: int,
        owner: object,
        capture: bool,
    ) -> None:
        self.advance = advance
        self.steps = steps
        self.owner = owner
        self.state_in = [s.detach().clone() for s in state]
        self.drives_in = [d.detach().clone() for d in drives]
        self.bound_to: object | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.state_out: list[Tensor] = []
        self.previous_out: list[Tensor] = []
        if capture:
            self._capture()

    def _run(self) -> None:
        self.state_out, self.previous_out = run_steps(
            self.advance, self.state_in, self.drives_in, self.steps
        )

    def _capture(self) -> None:
        device = self.state_in[0].device
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                self._run()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._run()

    def bind(self, drives: Sequence[Tensor], token: object) -> None:
        """Copy a phase's drives into the static buffers, unless ``token``'s already are."""
        if self.bound_to is token:
            return
        for buffer, drive in zip(self.drives_in, drives, strict=True):
            buffer.copy_(drive)
        self.bound_to = token

    def replay(self, state: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """z_{t+k} and z_{t+k-1} from z_t = ``state``: copy in, replay (or run), clone
        z_{t+k} out (z_{t+k-1} stays the buffer, valid until the next replay)."""
        for buffer, layer in zip(self.state_in, state, strict=True):
            buffer.copy_(layer)
        if self.graph is not None:
            self.graph.replay()
        else:
            self._run()
        return [s.clone() for s in self.state_out], list(self.previous_out)


@dataclass
class ChunkRunner:
    """A :data:`topo_ep.engine.ChunkSource` for ``execution`` (one of :data:`EXECUTIONS`).

    Called as ``runner(net, groups, drives)`` at the start of a phase; returns that phase's
    :data:`topo_ep.engine.Chunks`, or ``None`` for eager steps.
    """

    execution: str = "eager"
    graphs: dict[tuple[Any, ...], StaticChunk] = field(default_factory=dict, repr=False)
    compiled: dict[tuple[Any, ...], tuple[CompiledNetwork, Callable[..., Any]]] = field(
        default_factory=dict, repr=False
    )
    warned: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.execution not in EXECUTIONS:
            raise ValueError(f"execution {self.execution!r} is not one of {', '.join(EXECUTIONS)}")

    def __call__(
        self, net: CompiledNetwork, groups: Schedule, drives: Sequence[Tensor]
    ) -> Chunks | None:
        if self.execution == "eager" or not drives:
            return None
        if self.execution == "cuda-graph":
            if drives[0].device.type != "cuda":
                self._warn_not_cuda(drives[0].device)
                return None
            return self.static_chunks(net, groups, drives)
        return self._compiled(net, groups, drives)

    def _warn_not_cuda(self, device: torch.device) -> None:
        if not self.warned:
            self.warned = True
            warnings.warn_explicit(  # one line: no source line to show for this location
                f"dynamics.execution: cuda-graph needs a CUDA device; the relaxation on "
                f"{device} runs eagerly",
                RuntimeWarning,
                "topo_ep.chunks",
                0,
            )

    def static_chunks(
        self,
        net: CompiledNetwork,
        groups: Schedule,
        drives: Sequence[Tensor],
        *,
        capture: bool = True,
    ) -> Chunks:
        """A phase's :data:`~topo_ep.engine.Chunks` over cached :class:`StaticChunk` s,
        captured in CUDA graphs with ``capture`` (what ``cuda-graph`` runs), else run eagerly
        over the same buffers (the same code path on any device, for tests)."""
        token = object()
        advance = pure_step(net, groups)
        base = (id(net), groups, network_fingerprint(net), _layout(drives), capture)

        def run(state: list[Tensor], steps: int) -> tuple[list[Tensor], list[Tensor]]:
            key = (*base, _layout(state), steps)
            chunk = self.graphs.get(key)
            if chunk is None:
                chunk = StaticChunk(advance, state, drives, steps, owner=net, capture=capture)
                self.graphs[key] = chunk
            chunk.bind(drives, token)
            return chunk.replay(state)

        return run

    def _compiled(self, net: CompiledNetwork, groups: Schedule, drives: Sequence[Tensor]) -> Chunks:
        if drives[0].device.type == "cpu" and not cpp_compiler_available():
            raise TopoEpError(
                "dynamics.execution: compile needs a C++ compiler on the CPU (c++ or g++ on "
                "the PATH), and none was found; use execution: eager"
            )
        key = (id(net), groups)
        entry = self.compiled.get(key)
        if entry is None:
            advance = pure_step(net, groups)

            def chunk(
                state: list[Tensor], chunk_drives: list[Tensor], steps: int
            ) -> tuple[list[Tensor], list[Tensor]]:
                return run_steps(advance, state, chunk_drives, steps)

            # the entry keeps net alive, so its id is not met again by another network
            entry = (net, torch.compile(chunk, dynamic=False))
            self.compiled[key] = entry
        function = entry[1]
        fixed = list(drives)

        def run(state: list[Tensor], steps: int) -> tuple[list[Tensor], list[Tensor]]:
            return function(list(state), fixed, steps)

        return run
