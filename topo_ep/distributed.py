"""Data-parallel training on ``torch.distributed``: shards, combined gradients, reductions.

A run launched with ``torchrun`` (``torchrun --nproc-per-node N -m topo_ep train FILE``) has
``WORLD_SIZE`` ranks. Every rank builds the same network from the same seed, draws the same
shuffling order (:func:`topo_ep.train.epoch_generator`) and takes its own contiguous shard of
every global batch of B examples (:func:`shard_range`): rank r of R holds n_r examples,
n_r = floor(B / R) + [r < B mod R], so the global batch stays the topology's.

Every learner writes into ``.grad`` the mean over its batch of a per-example quantity (EP's
``-dW / (nudge * batch)``, the mean cross-entropy's gradient for bp, bptt and implicit), so the
gradient of the global batch is

    g = sum_r (n_r / B) g_r,

which :meth:`DataParallel.combine_gradients` computes with one ``all_reduce`` (sum) of the
weighted ``.grad`` tensors. DDP's hooks would not see EP's hand-written ``.grad``, and DDP's
plain average (1/R) sum_r g_r is wrong for unequal shards. After the reduction every rank holds
the same gradient and takes the same optimizer step.

A rank whose shard is empty (a last batch smaller than R) relaxes a placeholder, the first
example of the global batch, with weight 0: it still joins every collective (a converged phase
all-reduces its stop test at every check, see :meth:`DataParallel.agree`), and since that
example is in another rank's shard, the maximum over the ranks is the one over the global batch.

Evaluation is sharded the same way: every global evaluation batch is split over the ranks, and
the summed loss and the count of correct predictions are all-reduced.

Rank 0 alone writes the run directory; the command line (:mod:`topo_ep.cli`) has rank 0 take the
lock and check the directory, and broadcasts its outcome (:meth:`DataParallel.from_main`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor

from topo_ep.data import Split, iterate_batches
from topo_ep.errors import RunFailedError, TopoEpError

#: Backends of ``--dist-backend``; ``auto`` is nccl for CUDA devices and gloo otherwise.
BACKENDS = ("auto", "gloo", "nccl")
#: The environment variables torchrun sets for every worker.
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

T = TypeVar("T")


class PeerStoppedError(TopoEpError):
    """Rank 0 refused to start the run (its own message says why); raised on the other ranks."""


class EpochSums(Protocol):
    """The running sums of one epoch that :meth:`DataParallel.reduce_totals` combines."""

    loss: Tensor
    correct: Tensor
    examples: int
    batches: int
    free_steps: int
    nudged_steps: int
    unconverged: int


def launched_by_torchrun(environ: dict[str, str] | None = None) -> bool:
    """Whether this process is a worker started by torchrun (``WORLD_SIZE`` and ``RANK`` set)."""
    env = os.environ if environ is None else environ
    return "WORLD_SIZE" in env and "RANK" in env


def shard_range(batch: int, rank: int, world_size: int) -> tuple[int, int]:
    """The rows [start, stop) of a global batch of ``batch`` examples that ``rank`` holds.

    Contiguous shards of n_r = floor(B / R) + [r < B mod R] rows, in rank order; they cover the
    batch exactly once. A shard may be empty when B < R.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of {world_size} ranks")
    base, extra = divmod(batch, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


@dataclass(frozen=True)
class Shard:
    """A rank's share of one global batch.

    Attributes
    ----------
    x, y
        The rows this rank relaxes: its shard, or a one-row placeholder when the shard is empty.
    size
        The number of real examples (0 for a placeholder).
    weight
        n_r / B, the share of the global batch (0 for a placeholder).
    index
        The dataset indices of the shard's real rows (empty for a placeholder), when the
        batch came with its indices; else ``None``.
    """

    x: Tensor
    y: Tensor
    size: int
    weight: float
    index: Tensor | None = None


def nan_as_infinity(value: Tensor) -> Tensor:
    """NaN replaced by +inf, so that a maximum over ranks reports a diverged rank as inf
    (a maximum with NaN is not defined the same way by every backend)."""
    return torch.nan_to_num(value, nan=math.inf)


@dataclass(frozen=True)
class DataParallel:
    """The ranks of a data-parallel run, and the collective operations training needs.

    ``world_size == 1`` (:meth:`single`) is the ordinary single-process run: every operation is
    then the identity, and no process group is needed.

    Attributes
    ----------
    rank, world_size
        This process's global rank and the number of ranks.
    local_rank
        The rank on this machine (which GPU a CUDA rank uses).
    backend
        ``gloo``, ``nccl``, or ``None`` for a single process.
    device
        This rank's device (``cuda:LOCAL_RANK`` for a CUDA rank), or ``None`` for a single
        process (which uses ``--device`` as given).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: str | None = None

    @classmethod
    def single(cls) -> DataParallel:
        """One process: no process group, every collective is the identity."""
        return cls()

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes the run directory and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> dict[str, Any]:
        """The number of ranks and the backend, for ``config.yaml``."""
        return {"ranks": self.world_size, "backend": self.backend}

    # ------------------------------------------------------------------ batches
    def shard(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Shard:
        """This rank's rows of a global batch (a placeholder row of weight 0 if it has none);
        ``index``, the batch's dataset indices, is sharded with them."""
        batch = int(y.shape[0])
        if not self.distributed:
            return Shard(x, y, batch, 1.0, index)
        start, stop = shard_range(batch, self.rank, self.world_size)
        if stop == start:
            empty = None if index is None else index[:0]
            return Shard(x[:1], y[:1], 0, 0.0, empty)
        rows = None if index is None else index[start:stop]
        return Shard(x[start:stop], y[start:stop], stop - start, (stop - start) / batch, rows)

    # ------------------------------------------------------------------ collectives
    def _collective(self, what: str, action: Callable[[], T]) -> T:
        """Run a collective; a lost peer becomes a :class:`RunFailedError` that says so."""
        try:
            return action()
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RunFailedError(
                f"rank {self.rank} of {self.world_size}: lost contact with the other ranks while "
                f"{what}: a rank died or was stopped (see its messages above). The run directory "
                "keeps the last finished epoch; continue it with --resume under the same "
                f"torchrun command. ({self.backend} said: {first})"
            ) from None

    def _all_reduce(self, tensor: Tensor, op: Any, what: str) -> Tensor:
        import torch.distributed as dist

        self._collective(what, lambda: dist.all_reduce(tensor, op=op))
        return tensor

    def combine_gradients(self, params: Sequence[Tensor], weight: float) -> None:
        """``.grad`` <- sum over ranks of (n_r / B) ``.grad`` for every parameter with a
        gradient, in one all-reduce of a flat buffer (identical on every rank afterwards)."""
        if not self.distributed:
            return
        import torch.distributed as dist

        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads]) * weight
        self._all_reduce(flat, dist.ReduceOp.SUM, "combining the gradients")
        offset = 0
        for grad in grads:
            count = grad.numel()
            grad.copy_(flat[offset : offset + count].view_as(grad))
            offset += count

    def sum_over_ranks(self, tensor: Tensor, what: str) -> Tensor:
        """The elementwise sum of ``tensor`` over the ranks (in place); the identity for one
        process. ``what`` names the tensor in the message of a lost peer."""
        if not self.distributed:
            return tensor
        import torch.distributed as dist

        return self._all_reduce(tensor, dist.ReduceOp.SUM, what)

    def agree(self, value: Tensor) -> Tensor:
        """The maximum of a 0-d stop criterion over the ranks (NaN read as +inf), so that a
        converged phase stops at the same step on every rank. The identity for one process."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        return self._all_reduce(
            nan_as_infinity(value.detach().clone()), dist.ReduceOp.MAX, "agreeing a stop test"
        )

    @property
    def agreement(self) -> Callable[[Tensor], Tensor] | None:
        """:meth:`agree` for a multi-rank run, ``None`` for a single process (nothing to agree)."""
        return self.agree if self.distributed else None

    def reduce_totals(self, totals: EpochSums, finite: Tensor, params: Sequence[Tensor]) -> Tensor:
        """Sum an epoch's running sums over the ranks, in place; returns the agreed finiteness.

        Loss, correct predictions and examples are summed; the steps per phase are averaged
        over the ranks (equal on every rank when the phases agree their stop); the unconverged
        batches are the maximum over the ranks. ``finite`` (this rank's losses were finite) is
        combined with a logical and. Also checks that every rank holds the same weights.

        Raises
        ------
        RunFailedError
            When the ranks' weights differ (a non-deterministic reduction or a broken launch).
        """
        if not self.distributed:
            return finite
        import torch.distributed as dist

        device = totals.loss.device
        sums = torch.stack(
            [
                totals.loss.double(),
                totals.correct.double(),
                torch.tensor(float(totals.examples), dtype=torch.float64, device=device),
                torch.tensor(float(totals.free_steps), dtype=torch.float64, device=device),
                torch.tensor(float(totals.nudged_steps), dtype=torch.float64, device=device),
                (~finite).double(),
            ]
        )
        self._all_reduce(sums, dist.ReduceOp.SUM, "summing the epoch's metrics")
        checksum = weight_checksum(params, device)
        extremes = torch.cat(
            [
                torch.tensor([float(totals.unconverged)], dtype=torch.float64, device=device),
                checksum,
                -checksum,
            ]
        )
        self._all_reduce(extremes, dist.ReduceOp.MAX, "comparing the ranks' weights")
        highest, lowest = extremes[1:3], -extremes[3:5]
        if not torch.equal(highest, lowest) and bool(torch.isfinite(checksum).all()):
            raise RunFailedError(
                f"rank {self.rank}: the ranks' weights differ after the epoch (checksums "
                f"{lowest.tolist()} .. {highest.tolist()}); the ranks did not run the same "
                "optimizer steps"
            )
        totals.loss = sums[0]
        totals.correct = sums[1].round().long()
        totals.examples = int(round(float(sums[2])))
        totals.free_steps = int(round(float(sums[3]) / self.world_size))
        totals.nudged_steps = int(round(float(sums[4]) / self.world_size))
        totals.unconverged = int(extremes[0])
        return sums[5] == 0

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (pickled; for small objects and state dicts)."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value if self.is_main else None]
        self._collective("receiving rank 0's state", lambda: dist.broadcast_object_list(box, 0))
        return box[0]  # type: ignore[return-value]

    def from_main(self, action: Callable[[], T]) -> T:
        """Run ``action`` on rank 0 alone and hand its result to every rank.

        When it raises a :class:`TopoEpError` or :class:`RunFailedError`, rank 0 re-raises it
        and the other ranks raise :class:`PeerStoppedError` (or a :class:`RunFailedError`, for
        the same exit code) naming the error's class; rank 0's message says why. So a refused
        run directory or checkpoint stops every rank at once.
        """
        if not self.distributed:
            return action()
        if self.is_main:
            try:
                result = action()
            except (TopoEpError, RunFailedError) as exc:
                self.broadcast(("failed", type(exc).__name__))
                raise
            self.broadcast(("ok", result))
            return result
        outcome, payload = self.broadcast(None)
        if outcome != "ok":
            message = f"rank {self.rank}: rank 0 stopped the run ({payload}; its message says why)"
            if payload == RunFailedError.__name__:
                raise RunFailedError(message)
            raise PeerStoppedError(message)
        return payload

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self,
        logits_of: Callable[[Tensor], Tensor],
        split: Split,
        batch_size: int,
        dtype: torch.dtype,
    ) -> tuple[float | None, float | None]:
        """Mean cross-entropy and accuracy over ``split``, each global batch sharded over the
        ranks; ``(None, None)`` for an empty split.

        ``logits_of`` maps a raw batch to the method's readout logits.
        """
        if len(split) == 0:
            return None, None
        device = split.x.device
        sums = torch.zeros(2, dtype=torch.float64, device=device)
        for x, y in iterate_batches(split, batch_size, None, shuffle=False):
            part = self.shard(x, y)
            logits = logits_of(part.x.to(dtype))
            if part.size == 0:
                continue
            loss = torch.nn.functional.cross_entropy(logits, part.y, reduction="sum").double()
            sums[0] += loss
            sums[1] += (logits.argmax(dim=-1) == part.y).sum().double()
        if self.distributed:
            import torch.distributed as dist

            self._all_reduce(sums, dist.ReduceOp.SUM, "summing the evaluation")
        n = len(split.y)
        return float(sums[0]) / n, int(round(float(sums[1]))) / n


def weight_checksum(params: Sequence[Tensor], device: torch.device) -> Tensor:
    """(sum of the weights, sum of their squares) in float64: equal on ranks in step."""
    if not params:
        return torch.zeros(2, dtype=torch.float64, device=device)
    flat = torch.cat([p.detach().reshape(-1).double() for p in params])
    return torch.stack([flat.sum(), flat.pow(2).sum()]).to(device)


def with_agreement(method: T, agree: Callable[[Tensor], Tensor] | None) -> T:
    """``method`` with its ``agree`` set, when the method has that field (converged phases
    all-reduce their stop test through it); unchanged otherwise or when ``agree`` is ``None``.

    A method that stops on a tolerance (a ``tolerance`` > 0 field) but cannot agree gets a
    warning: its ranks stop their phases at different steps, so the run depends on the
    sharding (it is still a correct data-parallel run, not the single-process one).
    """
    if agree is None or not dataclasses.is_dataclass(method):
        return method
    names = {f.name for f in dataclasses.fields(method)}
    if "agree" not in names:
        if float(getattr(method, "tolerance", 0.0) or 0.0) > 0:
            warnings.warn(
                f"--method {getattr(method, 'name', '?')} stops its phases on a tolerance but "
                "cannot agree the stop over the ranks: each rank stops at its own step, so the "
                "run is not step for step the single-process one (use --set "
                "dynamics.tolerance=0 for fixed step counts)",
                RuntimeWarning,
                stacklevel=2,
            )
        return method
    return dataclasses.replace(method, agree=agree)  # type: ignore[type-var]


def backend_for(device: torch.device, requested: str) -> str:
    """``--dist-backend``: nccl for a CUDA device and gloo otherwise under ``auto``.

    Raises
    ------
    TopoEpError
        For an unknown backend, or nccl asked for on a CPU device.
    """
    if requested not in BACKENDS:
        raise TopoEpError(f"--dist-backend {requested!r}: expected one of {', '.join(BACKENDS)}")
    if requested == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if requested == "nccl" and device.type != "cuda":
        raise TopoEpError(
            "--dist-backend nccl needs CUDA devices, but this run uses the CPU (--device "
            "cpu, or no GPU): use --dist-backend gloo (the default on the CPU)"
        )
    return requested


def rank_device(name: str, local_rank: int, cuda_available: bool) -> str:
    """The device of one rank: ``auto`` and ``cuda`` become ``cuda:LOCAL_RANK`` (one GPU per
    rank on each machine) when CUDA is there; otherwise ``auto`` and ``cpu`` are ``cpu``.

    Raises
    ------
    TopoEpError
        For ``cuda:N`` (under torchrun each rank picks its GPU from its local rank), ``cuda``
        without a GPU, or an unknown name.
    """
    if name.startswith("cuda:"):
        raise TopoEpError(
            f"--device {name}: under torchrun each rank uses the GPU of its local rank; pass "
            "--device cuda (or auto), and choose the GPUs with CUDA_VISIBLE_DEVICES"
        )
    if name not in ("auto", "cpu", "cuda"):
        raise TopoEpError(f"unknown device {name!r}; expected auto, cpu or cuda")
    if name == "cuda" and not cuda_available:
        raise TopoEpError("--device cuda was asked for, but torch sees no CUDA device")
    if name == "cuda" or (name == "auto" and cuda_available):
        return f"cuda:{local_rank}"
    return "cpu"


@contextmanager
def process_group(device_name: str, requested_backend: str) -> Iterator[DataParallel]:
    """Join the process group torchrun set up, yield this rank's :class:`DataParallel`, and
    leave the group at the end.

    Without torchrun's environment this yields :meth:`DataParallel.single` (and refuses an
    explicit ``--dist-backend``, which would have no effect).

    Parameters
    ----------
    device_name
        ``--device`` (``auto``, ``cpu``, ``cuda``).
    requested_backend
        ``--dist-backend``: ``auto``, ``gloo`` or ``nccl``.
    """
    if not launched_by_torchrun():
        if requested_backend != "auto":
            raise TopoEpError(
                f"--dist-backend {requested_backend} applies to runs launched with torchrun "
                "(torchrun --nproc-per-node N -m topo_ep train ...)"
            )
        yield DataParallel.single()
        return
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device_text = rank_device(device_name, local_rank, torch.cuda.is_available())
    device = torch.device(device_text)
    backend = backend_for(device, requested_backend)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(backend=backend)
    except (RuntimeError, ValueError) as exc:
        raise RunFailedError(
            f"rank {rank}: could not join the {backend} process group of {world_size} ranks "
            f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})"
        ) from None
    try:
        yield DataParallel(rank, world_size, local_rank, backend, device_text)
    finally:
        dist.destroy_process_group()


def on_cpu(value: Any) -> Any:
    """``value`` with every tensor in it (in dicts, lists and tuples) copied to the CPU, so that
    no rank unpickles tensors onto rank 0's GPU."""
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: on_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(on_cpu(item) for item in value)
    return value


class Resumable(Protocol):
    """What :func:`resume_on_every_rank` needs of a trainer."""

    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    metrics: list[dict[str, Any]]
    start_epoch: int
    parallel: DataParallel
    warm_starts: Any

    def resume(self, path: str | os.PathLike[str]) -> None: ...


def resume_on_every_rank(trainer: Resumable, path: str | os.PathLike[str]) -> None:
    """Rank 0 reads and checks the checkpoint (:meth:`topo_ep.train.Trainer.resume`) and sends
    the weights, the optimizer state, the metrics, the next epoch and the warm starts (of a run
    with ``training.warm_start``) to the other ranks, which need no access to rank 0's file
    system. A refused checkpoint stops every rank."""
    parallel = trainer.parallel

    def read() -> dict[str, Any] | None:
        trainer.resume(path)
        if not parallel.distributed:
            return None
        warm = trainer.warm_starts
        return on_cpu(
            {
                "model": trainer.net.state_dict(),
                "optimizer": trainer.optimizer.state_dict(),
                "metrics": trainer.metrics,
                "start_epoch": trainer.start_epoch,
                "warm_states": None if warm is None else warm.state_dict(),
            }
        )

    state = parallel.from_main(read)
    if parallel.is_main or state is None:
        return
    trainer.net.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.metrics = list(state["metrics"])
    trainer.start_epoch = int(state["start_epoch"])
    if trainer.warm_starts is not None and state["warm_states"] is not None:
        trainer.warm_starts.load_state_dict(state["warm_states"], "rank 0's checkpoint")
