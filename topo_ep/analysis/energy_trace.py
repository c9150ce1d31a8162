"""Energy along the free relaxation, for balanced topologies.

For a balanced topology (tied feedback, gains balanced around every cycle) the Hopfield-type
energy E(s) of :func:`topo_ep.analysis.backends.energy_per_sample` exists. A block update of a
group of layers with no edge inside it sets each layer to the exact minimiser of E over that
layer, so under the ``sweep`` (one layer per group) and colouring schedules E never increases
(up to rounding). The synchronous schedule updates coupled layers together and carries no such
guarantee: E may rise, and a rise signals oscillation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from topo_ep.compiler import CompiledNetwork
from topo_ep.energy import energy_trace as energy_along


@dataclass(frozen=True)
class EnergyTrace:
    """E(s_t) along the free relaxation of a batch.

    Attributes
    ----------
    schedule
        The schedule.
    energies
        E(s_t) of every sample, shape (steps + 1, batch); row 0 is the start s_0 = 0.
    """

    schedule: str
    energies: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        """Batch mean of E(s_t) per step."""
        return self.energies.mean(axis=1)

    @property
    def largest_rise(self) -> float:
        """max over steps and samples of E(s_{t+1}) - E(s_t) (<= 0 when E never rises)."""
        if self.energies.shape[0] < 2:
            return float("nan")
        return float(np.max(np.diff(self.energies, axis=0)))

    @property
    def relative_largest_rise(self) -> float:
        """:attr:`largest_rise` divided by max(1, max |E|): compare with the dtype's eps."""
        scale = max(1.0, float(np.max(np.abs(self.energies))))
        return self.largest_rise / scale


def energy_trace(
    net: CompiledNetwork, x: Tensor, steps: int, schedule: str = "sweep"
) -> EnergyTrace:
    """E(s_t) for t = 0..steps along the free relaxation from s = 0 under ``schedule``.

    Raises
    ------
    topo_ep.energy.NoEnergyError
        When the topology is not balanced (it has no energy).
    """
    with torch.no_grad():
        trace, _ = energy_along(net, net.input_drive(x), net.schedule(schedule), steps)
    return EnergyTrace(schedule, trace.double().cpu().numpy())
