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
    in_place
        s = rho(h) written into h and returned, the same bits as ``fn`` (the relaxation step
        applies it to the pre-activation it has just created, which saves an allocation);
        ``None``: ``fn``.
    bound
        sup_h |rho(h)| (also in floating point: tanh rounds to at most 1), ``None`` when rho is
        unbounded. With states bounded by 1 the convergence test needs no |s| (its denominator
        max(max_i |s_i|, 1) is 1; :func:`topo_ep.engine.state_change`).
    """

    name: str
    fn: Callable[[Tensor], Tensor]
    derivative: Callable[[Tensor], Tensor]
    potential: Callable[[Tensor], Tensor]
    in_place: Callable[[Tensor], Tensor] | None = None
    bound: float | None = None

    def fn_(self, h: Tensor) -> Tensor:
        """rho(h), in place in ``h`` where :attr:`in_place` exists (the caller owns ``h``)."""
        return self.fn(h) if self.in_place is None else self.in_place(h)


#: Below this |s| the tanh potential uses its small-argument form.
_TANH_SMALL = 0.5


def _tanh_potential(s: Tensor) -> Tensor:
    r"""G(s) = 1/2 [(1+s) ln(1+s) + (1-s) ln(1-s)] = s atanh(s) + 1/2 ln(1 - s^2).

    Accurate to a few eps relative everywhere, and finite at |s| = 1:

    - |s| < 1/2: s atanh(s) + 1/2 log1p(-s^2). The textbook form's two s^2 terms cancel to
      s^2 / 2 with a relative error of a few eps, where the xlogy form's two O(s) terms cancel
      with an absolute error of about eps: near s = 0 (G ~ 1e-18 at s ~ 1e-9) that form is
      pure rounding noise, and energy traces seemed to rise.
    - otherwise: the xlogy form, which gives 0 ln 0 = 0 at |s| = 1 where the textbook form is
      NaN.
    """
    small = s.abs() < _TANH_SMALL
    inner = torch.where(small, s, torch.zeros_like(s))  # keep each branch finite
    outer = torch.where(small, torch.full_like(s, 0.75), s)
    near_zero = inner * torch.atanh(inner) + 0.5 * torch.log1p(-inner * inner)
    one = torch.ones_like(s)
    far = 0.5 * (torch.xlogy(one + outer, one + outer) + torch.xlogy(one - outer, one - outer))
    return torch.where(small, near_zero, far)


def _tanh_derivative(h: Tensor) -> Tensor:
    t = torch.tanh(h)
    return 1.0 - t * t


def _hard_sigmoid(h: Tensor) -> Tensor:
    return h.clamp(0.0, 1.0)


def _hard_sigmoid_(h: Tensor) -> Tensor:
    return h.clamp_(0.0, 1.0)


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
    "tanh": Activation(
        "tanh", torch.tanh, _tanh_derivative, _tanh_potential, torch.tanh_, bound=1.0
    ),
    "hard_sigmoid": Activation(
        "hard_sigmoid",
        _hard_sigmoid,
        _hard_sigmoid_derivative,
        _hard_sigmoid_potential,
        _hard_sigmoid_,
        bound=1.0,
    ),
    "sigmoid": Activation(
        "sigmoid",
        torch.sigmoid,
        _sigmoid_derivative,
        _sigmoid_potential,
        torch.sigmoid_,
        bound=1.0,
    ),
    "identity": Activation(
        "identity", _identity, torch.ones_like, _hard_sigmoid_potential, _identity
    ),
}


def get_activation(name: str) -> Activation:
    """Return the activation called ``name`` (one of :data:`topo_ep.spec.ACTIVATIONS`)."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}"
        ) from None
