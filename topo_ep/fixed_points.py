"""Whether the schedules settle at one fixed point: a network can have several.

Every schedule's fixed points are the same set, s* = rho(M s* + d); which one a relaxation
reaches depends on the schedule and the start. On a balanced net with small gains there is one.
On an unbalanced or strongly coupled net a sample can have two stable fixed points (seen: a
sample whose synchronous and sweep relaxations settled 0.5 apart), and an analysis or a gradient
check at one of them says nothing about the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from topo_ep.compiler import CompiledNetwork
from topo_ep.engine import PhaseStats, free_phase


@dataclass(frozen=True)
class FixedPointSplit:
    """Two schedules that settled at different fixed points for some samples.

    Attributes
    ----------
    first, second
        The schedules.
    samples
        Indices of the samples whose fixed points differ.
    distance
        The largest per-sample RMS distance between the two fixed points.
    """

    first: str
    second: str
    samples: tuple[int, ...]
    distance: float

    def describe(self) -> str:
        """One sentence for a report."""
        shown = ", ".join(str(i) for i in self.samples[:5])
        more = "" if len(self.samples) <= 5 else f" and {len(self.samples) - 5} more"
        return (
            f"several fixed points: schedules {self.first} and {self.second} settle at "
            f"different states for {len(self.samples)} sample(s) ({shown}{more}; largest RMS "
            f"distance {self.distance:.3g}); results at one fixed point say nothing of the other"
        )


def settled_states(
    net: CompiledNetwork,
    drives: Sequence[Tensor],
    schedules: Sequence[str],
    max_steps: int,
    tolerance: float,
) -> dict[str, tuple[list[Tensor], PhaseStats]]:
    """The free phase of each schedule from zero, to ``tolerance`` within ``max_steps``."""
    with torch.no_grad():
        return {
            name: free_phase(net, drives, name, max_steps, tolerance, check_every=1)
            for name in schedules
        }


def fixed_point_split(
    states: dict[str, tuple[list[Tensor], PhaseStats]], separation: float = 1e-4
) -> FixedPointSplit | None:
    """The first pair of converged schedules whose states differ by more than ``separation``
    (per-sample RMS over all units) for some sample, or ``None`` when they agree.

    Unconverged relaxations are left out: they have reached no fixed point to compare.
    """
    names = [name for name, (_, stats) in states.items() if stats.converged]
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            a = torch.cat(states[first][0], dim=-1)
            b = torch.cat(states[second][0], dim=-1)
            distance = (a - b).double().pow(2).mean(dim=-1).sqrt()
            apart = torch.nonzero(distance > separation).flatten().tolist()
            if apart:
                return FixedPointSplit(first, second, tuple(apart), float(distance.max()))
    return None
