"""Spectra of a compiled network's gain-scaled hidden-to-hidden operator M.

(M s)_k = sum_{j->k} g_jk A_jk s_j (:func:`spectral_radius`, :func:`eigenvalues`,
:func:`spectrum`). Other linear maps given by their action on a flat vector, such as the
Jacobian diag(rho'(h)) M of the update map at a fixed point (built in
:mod:`topo_ep.analysis.jacobian`), go through :func:`radius_of_map` and
:func:`eigenvalues_of_map`. The eigensolvers themselves (exact LAPACK for small maps, ARPACK
over the matrix-free operator for large ones, never power iteration) are in
:mod:`topo_ep.eigen`, re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

from topo_ep.compiler import CompiledNetwork
from topo_ep.eigen import (
    EXACT_LIMIT,
    METHODS,
    MapApply,
    arpack_eigenvalues,
    eigenvalues_of_map,
    radius_of_map,
    uses_exact,
)
from topo_ep.spec import INPUT

__all__ = [
    "EXACT_LIMIT",
    "METHODS",
    "MapApply",
    "arpack_eigenvalues",
    "eigenvalues",
    "eigenvalues_of_map",
    "operator_matvec",
    "radius_of_map",
    "spectral_radius",
    "spectrum",
    "uses_exact",
]


def operator_matvec(net: CompiledNetwork, vector: np.ndarray) -> np.ndarray:
    """(M v) for a flat vector v, applying each block once: (M v)_k = sum_j g A_kj v_j."""
    with torch.no_grad():
        flat = torch.as_tensor(np.asarray(vector).reshape(1, -1))
        real = flat.real if torch.is_complex(flat) else flat
        parts = net.layout.unflatten(real.to(device=net.device, dtype=net.dtype))
        out = [torch.zeros_like(p) for p in parts]
        for block in net.blocks:
            if block.source == INPUT:
                continue
            k, j = net.layout.index(block.target), net.layout.index(block.source)
            out[k] = block.accumulate(out[k], parts[j])
        return net.layout.flatten(out).reshape(-1).cpu().double().numpy()


def eigenvalues(net: CompiledNetwork) -> np.ndarray:
    """All eigenvalues of M (exact, dense; use for small networks)."""
    matrix = net.hidden_operator().detach().cpu().double().numpy()
    with threadpool_limits(1):
        return np.linalg.eigvals(matrix)


def _operator_dense(net: CompiledNetwork) -> Callable[[], np.ndarray]:
    return lambda: net.hidden_operator().detach().cpu().double().numpy()


def spectrum(
    net: CompiledNetwork,
    k: int | None = None,
    method: str = "auto",
    exact_limit: int = EXACT_LIMIT,
) -> np.ndarray:
    """Eigenvalues of M for a scatter plot, sorted by decreasing modulus.

    Exact: all N eigenvalues (or the ``k`` largest). ARPACK: the ``k`` (default 40, at most
    N - 2) of largest modulus, without densifying M.
    """
    n = net.layout.total
    if not uses_exact(method, n, exact_limit) and k is None:
        k = 40
    return eigenvalues_of_map(
        lambda v: operator_matvec(net, v),
        n,
        dense=_operator_dense(net),
        k=k,
        method=method,
        exact_limit=exact_limit,
    )


def spectral_radius(net: CompiledNetwork, method: str = "auto") -> float:
    """rho(M) = max |lambda_i(M)| of the gain-scaled hidden-to-hidden operator.

    Parameters
    ----------
    method
        ``exact`` (dense eigenvalues), ``arpack`` (``scipy.sparse.linalg.eigs``, k=1,
        which='LM', over a LinearOperator that applies the blocks) or ``auto`` (exact up to
        :data:`EXACT_LIMIT` units).
    """
    return radius_of_map(
        lambda v: operator_matvec(net, v),
        net.layout.total,
        dense=_operator_dense(net),
        method=method,
    )
