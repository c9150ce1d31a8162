"""Warm starts: one persistent free state per training example, carried from epoch to epoch.

With ``training.warm_start: true`` the free phase of training example n in epoch e starts from

    s_n^(0, e) = s_n^*(e - 1),   s_n^(0, 1) = 0,

the free fixed point that example reached in epoch e - 1, instead of from zero, and its new
free fixed point s_n^*(e) is stored back. The weights moved little in between, so the phase
starts near its fixed point and converged phases (``dynamics.tolerance`` > 0) stop sooner. The
nudged phases start from the free state as always; validation and test examples, which have no
stored state, relax from zero.

The states are a table of shape (training examples, hidden units) in the run's dtype, indexed by
the example's index in the training split (not its position in a batch), so that shuffling and
data-parallel sharding both find an example's row. Each example is visited once per epoch, so
the rows read in an epoch are those of the previous epoch and the rows written are read in the
next: a rank writes the rows of its shards during the epoch, and :meth:`WarmStarts.end_epoch`
merges them (each row written by one rank; every rank then holds the same table). The table goes
into the checkpoint, so a resumed run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from topo_ep.compiler import available_memory
from topo_ep.errors import CheckpointError, TopoEpError
from topo_ep.layout import Layout

#: Sums a tensor over the ranks of a data-parallel run, in place: (tensor, what) -> tensor.
SumOverRanks = Callable[[Tensor, str], Tensor]


def warm_state_bytes(examples: int, width: int, dtype: torch.dtype, ranks: int = 1) -> int:
    """Bytes the table of warm starts takes: examples x width x itemsize, plus one byte per
    example for the rows written in the epoch; with several ranks twice the table, since the
    merge at the end of an epoch builds one more table."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    table = examples * width * itemsize
    return table * (2 if ranks > 1 else 1) + examples


def free_device_memory(device: torch.device) -> int | None:
    """Bytes free for a new allocation on ``device``: the GPU's free memory on CUDA, the
    host's available memory (:func:`topo_ep.compiler.available_memory`) otherwise."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return available_memory()


def require_warm_state_memory(
    name: str, examples: int, width: int, dtype: torch.dtype, device: torch.device, ranks: int = 1
) -> None:
    """Refuse, before allocating it, a table of warm starts that does not fit in memory.

    Raises
    ------
    TopoEpError
        With the bytes needed (:func:`warm_state_bytes`) and the bytes available.
    """
    needed = warm_state_bytes(examples, width, dtype, ranks)
    available = free_device_memory(device)
    if available is not None and needed > available:
        raise TopoEpError(
            f"topology {name!r}: training.warm_start keeps one free state per training example "
            f"({examples:,} examples x {width:,} hidden units in "
            f"{str(dtype).removeprefix('torch.')}), which needs {needed:,} bytes "
            f"({needed / 2**30:.3g} GiB), more than the {available:,} bytes "
            f"({available / 2**30:.3g} GiB) available on {device}; train on fewer examples "
            "(--limit) or set training.warm_start to false"
        )


class WarmStarts:
    """The free state of every training example, the start of its next free phase.

    Parameters
    ----------
    layout
        The hidden layers (each row is :meth:`~topo_ep.layout.Layout.flatten` of a state).
    examples
        The number of training examples.
    dtype, device
        Those of the network's states.
    """

    def __init__(
        self, layout: Layout, examples: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        self.layout = layout
        #: One row per training example: its last free state (zero before its first).
        self.states = torch.zeros(examples, layout.total, dtype=dtype, device=device)
        #: The rows this process wrote in the current epoch.
        self.written = torch.zeros(examples, dtype=torch.bool, device=device)
        #: Whether an epoch has stored the rows (before that every free phase starts at zero).
        self.filled = False

    @classmethod
    def allocate(
        cls,
        name: str,
        layout: Layout,
        examples: int,
        dtype: torch.dtype,
        device: torch.device,
        ranks: int = 1,
    ) -> WarmStarts:
        """:func:`require_warm_state_memory`, then the table of zeros."""
        require_warm_state_memory(name, examples, layout.total, dtype, device, ranks)
        return cls(layout, examples, dtype, device)

    def start(self, index: Tensor | None) -> list[Tensor] | None:
        """The warm start of the examples ``index``, one tensor per layer; ``None`` (start at
        zero) in the first epoch or for no rows (a rank's placeholder of an empty shard)."""
        if not self.filled or index is None or index.numel() == 0:
            return None
        return self.layout.unflatten(self.states.index_select(0, index))

    def store(self, index: Tensor | None, free: list[Tensor]) -> None:
        """Keep the free states ``free`` (one tensor per layer) of the examples ``index``."""
        if index is None or index.numel() == 0:
            return
        flat = self.layout.flatten(free).to(self.states.dtype)
        self.states.index_copy_(0, index, flat)
        self.written.index_fill_(0, index, True)

    def end_epoch(self, sum_over_ranks: SumOverRanks | None = None) -> None:
        """Merge the rows the ranks wrote in this epoch, so every rank holds the same table.

        Each row is written by at most one rank in an epoch, so the sum over the ranks of
        ``where(written, states, 0)`` is that rank's row exactly (x + 0 = x); rows no rank
        wrote keep their value. One process needs no merge (``sum_over_ranks`` ``None``).
        """
        if sum_over_ranks is not None:
            mine = torch.where(self.written.unsqueeze(1), self.states, 0.0)
            merged = sum_over_ranks(mine, "merging the warm starts")
            writers = sum_over_ranks(self.written.to(torch.int32), "merging the warm starts")
            self.states = torch.where((writers > 0).unsqueeze(1), merged, self.states)
        self.written.zero_()
        self.filled = True

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> Tensor:
        """The table, for a checkpoint (written after an epoch, so every row is filled)."""
        return self.states

    def load_state_dict(self, states: Tensor, source: str) -> None:
        """Continue from a checkpoint's table.

        Raises
        ------
        CheckpointError
            When the table's shape or dtype does not fit this run, or it holds non-finite
            values.
        """
        expected = tuple(self.states.shape)
        if not isinstance(states, Tensor) or tuple(states.shape) != expected:
            shape = tuple(states.shape) if isinstance(states, Tensor) else type(states).__name__
            raise CheckpointError(
                f"{source}: the warm starts have shape {shape}, but this run needs {expected} "
                "(training examples x hidden units)"
            )
        if states.dtype != self.states.dtype:
            raise CheckpointError(
                f"{source}: the warm starts are {states.dtype}, this run uses {self.states.dtype}"
            )
        if not bool(torch.isfinite(states).all()):
            raise CheckpointError(f"{source}: the warm starts hold NaN or infinite values")
        self.states = states.to(self.states.device).clone()
        self.written.zero_()
        self.filled = True
