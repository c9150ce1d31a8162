"""Spectral radius of the gain-scaled hidden-to-hidden operator M.

Power iteration is not used: chains and the paper's residual nets have bipartite layer graphs,
so eigenvalues come in +-lambda pairs, and random feedback gives complex pairs; power iteration
oscillates on both. Small operators get exact eigenvalues; large ones ARPACK over a
LinearOperator that applies the blocks, never densifying M.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigs

from topo_ep.compiler import CompiledNetwork
from topo_ep.spec import INPUT

#: Largest N for which the exact eigenvalues are computed.
EXACT_LIMIT = 1500


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
    """All eigenvalues of M (exact; use for small networks)."""
    matrix = net.hidden_operator().detach().cpu().double().numpy()
    return np.linalg.eigvals(matrix)


def spectral_radius(net: CompiledNetwork, method: str = "auto") -> float:
    """rho(M) = max |lambda_i(M)|.

    Parameters
    ----------
    method
        ``exact`` (dense eigenvalues), ``arpack`` (``scipy.sparse.linalg.eigs``, k=1,
        which='LM', over a LinearOperator) or ``auto`` (exact up to :data:`EXACT_LIMIT` units).
    """
    n = net.layout.total
    if method == "exact" or (method == "auto" and n <= EXACT_LIMIT):
        return float(np.abs(eigenvalues(net)).max()) if n else 0.0

    def matvec(v: np.ndarray) -> np.ndarray:
        if np.iscomplexobj(v):
            return operator_matvec(net, v.real) + 1j * operator_matvec(net, v.imag)
        return operator_matvec(net, v)

    operator = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    rng = np.random.default_rng(0)
    values = eigs(operator, k=1, which="LM", v0=rng.standard_normal(n), return_eigenvectors=False)
    return float(np.abs(values).max())
