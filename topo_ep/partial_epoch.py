"""Mid-epoch checkpoints: the epoch in progress, saved so that ``--resume`` loses little.

``topo-ep train --checkpoint-minutes M`` writes ``OUT/checkpoint.partial.pt`` every ``M``
minutes while an epoch runs. It is a whole checkpoint (weights, optimizer state, warm starts,
the metrics of the finished epochs) whose ``epoch`` is the epoch *in progress*, plus a
``partial`` entry: how many batches of that epoch are done and the epoch's running sums so far
(:class:`PartialEpoch`). ``checkpoint.pt`` keeps its meaning, the last finished epoch, so every
tool that reads a run (``evaluate``, ``analyze``, the reports) sees only finished epochs.

A resumed run skips the batches already done, in the epoch's own shuffled order (a fresh
generator seeded by the seed and the epoch), and adds the rest to the saved sums: the final
weights, optimizer state and metrics are bit-identical to an uninterrupted run on the CPU.
When the epoch ends, ``checkpoint.pt`` is saved and the partial file removed; a partial file
that a kill left beside a newer ``checkpoint.pt`` is stale and is ignored
(:func:`topo_ep.checkpoint.choose_resume_payload`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from topo_ep.errors import CheckpointError

#: The file of the epoch in progress, beside ``checkpoint.pt`` in a run directory.
PARTIAL_NAME = "checkpoint.partial.pt"
#: The integer sums of :class:`PartialEpoch` (each >= 0).
_COUNTS = ("batches", "correct", "examples", "free_steps", "nudged_steps", "unconverged")


@dataclass(frozen=True)
class PartialEpoch:
    """How far an epoch got, with its running sums.

    Attributes
    ----------
    batches
        Batches of the epoch trained (and stepped), in the epoch's shuffled order.
    loss
        The sum over those batches of ``batch loss * batch size`` (float64).
    correct, examples
        Examples classified correctly in the training pass, and examples seen.
    free_steps, nudged_steps, unconverged
        Sums of the relaxation steps of each phase, and batches that hit a step limit.
    seconds
        Training seconds of the epoch so far (the epoch's ``seconds`` goes on from it).
    warm_filled
        With ``training.warm_start``: whether the warm-start table was filled by an earlier
        epoch (in the first epoch every free phase starts at zero); else ``None``.
    """

    batches: int = 0
    loss: float = 0.0
    correct: int = 0
    examples: int = 0
    free_steps: int = 0
    nudged_steps: int = 0
    unconverged: int = 0
    seconds: float = 0.0
    warm_filled: bool | None = None

    def to_entry(self) -> dict[str, Any]:
        """The checkpoint's ``partial`` entry."""
        return asdict(self)

    @classmethod
    def from_entry(cls, entry: Any, where: str | Path) -> PartialEpoch:
        """Read a checkpoint's ``partial`` entry (checked by :func:`check_partial_entry`)."""
        check_partial_entry(entry, where)
        return cls(**entry)


def _bad(where: str | Path, field: str, expected: str, value: Any) -> CheckpointError:
    name = f"partial.{field}" if field else "partial"
    return CheckpointError(
        f"{where}: not a valid topo-ep checkpoint: field {name!r} must be {expected}, got {value!r}"
    )


def check_partial_entry(entry: Any, where: str | Path) -> None:
    """Check the types of a ``partial`` entry.

    Raises
    ------
    CheckpointError
        Naming ``where`` and the first field that is missing or of the wrong type.
    """
    if not isinstance(entry, dict):
        raise _bad(where, "", "a mapping", entry)
    known = set(PartialEpoch.__dataclass_fields__)
    unknown = sorted(set(entry) - known)
    if unknown:
        raise CheckpointError(
            f"{where}: not a valid topo-ep checkpoint: field 'partial.{unknown[0]}' is not a "
            "field of a mid-epoch checkpoint"
        )
    for field in _COUNTS:
        value = entry.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _bad(where, field, "an integer >= 0", value)
    if entry["batches"] < 1:
        raise _bad(where, "batches", "an integer >= 1", entry["batches"])
    for field in ("loss", "seconds"):
        value = entry.get(field)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(where, field, "a number", value)
        if not math.isfinite(value):
            raise _bad(where, field, "a finite number", value)
    filled = entry.get("warm_filled")
    if filled is not None and not isinstance(filled, bool):
        raise _bad(where, "warm_filled", "true, false or null", filled)
