"""Activation functions rho, their derivatives and the energy potentials G with G' = rho^{-1}.

Each activation is an immutable record; :func:`get_activation` looks one up by the name used in
the topology file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Activation:
    """An activation rho with its derivative and its potential.

    Attributes
    ----------
    name
        The name used in topology files.
    fn
        s = rho(h).
    derivative
        rho'(h), used for Jacobians and tangent dynamics.
    potential
        G(s) with G'(s) = rho^{-1}(s), the single-unit term of the Hopfield energy.
    """

    name: str
    fn: Callable[[Tensor], Tensor]
    derivative: Callable[[Tensor], Tensor]
    potential: Callable[[Tensor], Tensor]


def _tanh_potential(s: Tensor) -> Tensor:
    r"""G(s) = 1/2 [(1+s) ln(1+s) + (1-s) ln(1-s)], finite at |s| = 1.

    ``xlogy`` gives 0 ln 0 = 0, where the textbook form s atanh(s) + 1/2 ln(1 - s^2) is NaN.
    """
    one = torch.ones_like(s)
    return 0.5 * (torch.xlogy(one + s, one + s) + torch.xlogy(one - s, one - s))


def _tanh_derivative(h: Tensor) -> Tensor:
    t = torch.tanh(h)
    return 1.0 - t * t


def _hard_sigmoid(h: Tensor) -> Tensor:
    return h.clamp(0.0, 1.0)


def _hard_sigmoid_derivative(h: Tensor) -> Tensor:
    return ((h > 0) & (h < 1)).to(h.dtype)


def _hard_sigmoid_potential(s: Tensor) -> Tensor:
    """G(s) = s^2 / 2 on [0, 1] (rho^{-1} is the identity there)."""
    return 0.5 * s * s


def _sigmoid_derivative(h: Tensor) -> Tensor:
    t = torch.sigmoid(h)
    return t * (1.0 - t)


def _sigmoid_potential(s: Tensor) -> Tensor:
    """G(s) = s ln s + (1-s) ln(1-s), finite at s in {0, 1}."""
    one = torch.ones_like(s)
    return torch.xlogy(s, s) + torch.xlogy(one - s, one - s)


def _identity(h: Tensor) -> Tensor:
    return h


_ACTIVATIONS = {
    "tanh": Activation("tanh", torch.tanh, _tanh_derivative, _tanh_potential),
    "hard_sigmoid": Activation(
        "hard_sigmoid", _hard_sigmoid, _hard_sigmoid_derivative, _hard_sigmoid_potential
    ),
    "sigmoid": Activation("sigmoid", torch.sigmoid, _sigmoid_derivative, _sigmoid_potential),
    "identity": Activation("identity", _identity, torch.ones_like, _hard_sigmoid_potential),
}


def get_activation(name: str) -> Activation:
    """Return the activation called ``name`` (one of :data:`topo_ep.spec.ACTIVATIONS`)."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}"
        ) from None
