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


def fan_in_bound(fan_in: float) -> float:
    """a = 1 / sqrt(fan_in), the half-width of PyTorch's default initial weights of
    ``nn.Linear`` and ``nn.Conv2d`` (``kaiming_uniform_`` with a = sqrt(5))."""
    return 1.0 / math.sqrt(fan_in)


#: The initial distributions that :func:`uniform_init` draws: ``init`` -> the half-width a as a
#: function of (fan in, fan out).
UNIFORM_BOUNDS = {
    "glorot_uniform": glorot_bound,
    "fan_in_uniform": lambda fan_in, fan_out: fan_in_bound(fan_in),
}


def uniform_init(
    init: str,
    shape: tuple[int, ...],
    fans: tuple[float, float],
    generator: torch.Generator,
) -> Tensor:
    """A tensor's initial values, drawn in float64 on the CPU.

    ``zeros``: 0. ``glorot_uniform``: U(-a, a) with a = sqrt(6 / (fan_in + fan_out)).
    ``fan_in_uniform``: U(-a, a) with a = 1 / sqrt(fan_in) (PyTorch's default for
    ``nn.Linear`` and ``nn.Conv2d``). The uniform draws are ``(2 u - 1) a`` with u = U(0, 1)
    from ``generator``, so the same generator gives the same u for either bound.

    Parameters
    ----------
    init
        ``zeros``, ``glorot_uniform`` or ``fan_in_uniform``.
    shape
        The tensor's shape.
    fans
        (fan in, fan out): the inputs each output unit sums, the outputs each input feeds (a
        conv kernel: C_in k^2 and C_out k^2; a sparse block: its mean row and column counts).
    generator
        The tensor's own generator (:func:`tensor_generator`).
    """
    if init == "zeros":
        return torch.zeros(shape, dtype=torch.float64)
    if init not in UNIFORM_BOUNDS:
        expected = ", ".join(("zeros", *UNIFORM_BOUNDS))
        raise ValueError(f"unknown init {init!r}; expected one of {expected}")
    bound = UNIFORM_BOUNDS[init](*fans)
    return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound


def glorot_uniform(rows: int, cols: int, generator: torch.Generator) -> Tensor:
    """U(-a, a) with a = sqrt(6 / (rows + cols)), drawn in float64 on the CPU."""
    return uniform_init("glorot_uniform", (rows, cols), (cols, rows), generator)


def initial_bias(
    init: str,
    shape: tuple[int, ...],
    fan_in: float,
    seed: int,
    name: str,
    dtype: torch.dtype,
) -> Tensor:
    """A bias's initial values: ``zeros``, or ``fan_in_uniform``, U(-a, a) with
    a = 1 / sqrt(fan_in), PyTorch's default for the bias of an ``nn.Linear`` or ``nn.Conv2d``
    whose weight has that fan in; drawn in float64 from the generator of (``seed``, ``name``)
    (:func:`tensor_generator`) and cast to ``dtype``."""
    generator = tensor_generator(seed, name)
    return uniform_init(init, shape, (fan_in, 1.0), generator).to(dtype)
