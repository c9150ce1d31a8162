"""Seeded initial values of tensors: one generator per (seed, tensor name).

Every tensor a compiled network owns draws its initial values from its own generator
(:func:`tensor_generator`), in float64 on the CPU, so a seed gives the same network in every
dtype, on every device and in every declaration order.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor


def tensor_generator(seed: int, name: str) -> torch.Generator:
    """The generator of one tensor's initial values, keyed by (seed, tensor name).

    The 64-bit state is the first 8 bytes of sha256("<seed>:<name>"), so each tensor depends
    on the seed and its own name only: declaring edges in another order, adding or removing an
    edge leaves every other tensor's initial values unchanged.
    """
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def glorot_bound(fan_in: float, fan_out: float) -> float:
    """a = sqrt(6 / (fan_in + fan_out)), the half-width of Glorot's uniform distribution."""
    return math.sqrt(6.0 / (fan_in + fan_out))


def glorot_uniform(rows: int, cols: int, generator: torch.Generator) -> Tensor:
    """U(-a, a) with a = sqrt(6 / (rows + cols)), drawn in float64 on the CPU."""
    bound = glorot_bound(rows, cols)
    return (torch.rand(rows, cols, generator=generator, dtype=torch.float64) * 2 - 1) * bound
