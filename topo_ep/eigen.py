"""Eigenvalues and spectral radii of linear maps given by their action on flat vectors.

The generic eigensolvers of topo-ep, free of any network: :mod:`topo_ep.spectral` applies them
to a compiled network's hidden operator and :mod:`topo_ep.gain_radius` to the operator with a
scaled feedback part.

Power iteration is not used: chains and the paper's residual nets have bipartite layer graphs,
so eigenvalues come in +-lambda pairs, and random feedback gives complex pairs; power iteration
oscillates on both (DESIGN measured 0.401 / 1.249 against a true radius of 0.708). Small maps get
exact eigenvalues (LAPACK on the dense matrix); large ones ARPACK (implicitly restarted Arnoldi,
``scipy.sparse.linalg.eigs``, which='LM') over a :class:`~scipy.sparse.linalg.LinearOperator`
that only applies the map, never densifying it.

LAPACK and ARPACK run with one BLAS thread: with torch's OpenMP pool loaded, a multi-threaded
OpenBLAS eigensolve of a 256 x 256 matrix was measured 25 times slower (1.9 s against 0.07 s).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigs
from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

from topo_ep.errors import TopoEpError

#: Largest N for which the exact eigenvalues are computed by ``method="auto"``.
EXACT_LIMIT = 1500
#: Methods accepted by the spectral functions.
METHODS = ("auto", "exact", "arpack")

#: A linear map R^N -> R^N given by its action on a flat float64 vector.
MapApply = Callable[[np.ndarray], np.ndarray]


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown spectral method {method!r}; expected one of {METHODS}")


def uses_exact(method: str, n: int, exact_limit: int = EXACT_LIMIT) -> bool:
    """Whether ``method`` resolves to the exact eigensolver for an N x N map: when asked, when
    N <= ``exact_limit`` under ``auto``, or when ARPACK cannot run (it needs k < N - 1)."""
    _check_method(method)
    return method == "exact" or n <= 3 or (method == "auto" and n <= exact_limit)


def _real_apply(apply: MapApply) -> MapApply:
    """Apply a real map to a complex vector as A(re v) + i A(im v)."""

    def matvec(vector: np.ndarray) -> np.ndarray:
        v = np.asarray(vector).reshape(-1)
        if np.iscomplexobj(v):
            return apply(v.real.copy()) + 1j * apply(v.imag.copy())
        return apply(v)

    return matvec


def arpack_eigenvalues(apply: MapApply, n: int, k: int = 1, seed: int = 0) -> np.ndarray:
    """The ``k`` eigenvalues of largest magnitude of a real map, by ARPACK.

    ``scipy.sparse.linalg.eigs(which='LM')`` over a LinearOperator; the map is only applied to
    vectors. Starts from a seeded Gaussian vector, so results are reproducible. When ARPACK does
    not converge with the default Krylov space (near-degenerate moduli such as +-lambda pairs can
    slow it), it is rerun once with a larger space and more restarts.

    Parameters
    ----------
    apply
        v -> A v on flat float64 vectors of length ``n``.
    n
        Dimension; ARPACK needs ``k < n - 1``.
    k
        How many eigenvalues.
    seed
        Seeds the start vector.

    Returns
    -------
    numpy.ndarray
        Complex eigenvalues sorted by decreasing modulus.
    """
    if not 1 <= k < n - 1:
        raise ValueError(f"ARPACK needs 1 <= k < n - 1 (k={k}, n={n}); use method='exact'")
    operator = LinearOperator((n, n), matvec=_real_apply(apply), dtype=np.float64)
    start = np.random.default_rng(seed).standard_normal(n)
    with threadpool_limits(1):
        return _sorted(_arpack(operator, n, k, start))


def _sorted(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.complex128)
    return values[np.argsort(-np.abs(values), kind="stable")]


def _arpack(operator: LinearOperator, n: int, k: int, start: np.ndarray) -> np.ndarray:
    try:
        values = eigs(
            operator,
            k=k,
            which="LM",
            v0=start,
            ncv=min(n, max(2 * k + 1, 20)),
            return_eigenvectors=False,
        )
    except ArpackNoConvergence:
        values = eigs(
            operator,
            k=k,
            which="LM",
            v0=start,
            ncv=min(n, max(4 * k + 1, 60)),
            maxiter=50 * n,
            return_eigenvectors=False,
        )
    return values


def eigenvalues_of_map(
    apply: MapApply,
    n: int,
    *,
    dense: Callable[[], np.ndarray] | None = None,
    k: int | None = None,
    method: str = "auto",
    exact_limit: int = EXACT_LIMIT,
    seed: int = 0,
) -> np.ndarray:
    """Eigenvalues of a linear map, sorted by decreasing modulus.

    Parameters
    ----------
    apply
        v -> A v on flat float64 vectors.
    n
        Dimension N.
    dense
        Returns A as an (N, N) array for the exact method; default: A applied to each unit
        vector (N applications).
    k
        How many (the largest in modulus); ``None``: all for the exact method, 1 for ARPACK.
    method
        ``exact`` (LAPACK on the dense matrix), ``arpack`` or ``auto`` (exact for N up to
        ``exact_limit``).
    """
    if n == 0:
        return np.zeros(0, dtype=np.complex128)
    if uses_exact(method, n, exact_limit):
        matrix = dense() if dense is not None else _dense_from_apply(apply, n)
        if not np.isfinite(matrix).all():
            raise TopoEpError(
                "the linear map has non-finite entries (inf or nan): a gain or a weight is too "
                "large for the dtype, or the weights are not finite"
            )
        with threadpool_limits(1):
            values = _sorted(np.linalg.eigvals(np.asarray(matrix, dtype=np.float64)))
        return values if k is None else values[:k]
    return arpack_eigenvalues(apply, n, 1 if k is None else min(k, n - 2), seed)


def radius_of_map(
    apply: MapApply,
    n: int,
    *,
    dense: Callable[[], np.ndarray] | None = None,
    method: str = "auto",
    exact_limit: int = EXACT_LIMIT,
    seed: int = 0,
) -> float:
    """Spectral radius rho(A) = max_i |lambda_i(A)| of a linear map (see
    :func:`eigenvalues_of_map` for the arguments)."""
    if n == 0:
        return 0.0
    values = eigenvalues_of_map(
        apply, n, dense=dense, k=1, method=method, exact_limit=exact_limit, seed=seed
    )
    return float(np.abs(values).max())


def _dense_from_apply(apply: MapApply, n: int) -> np.ndarray:
    columns = [apply(np.eye(1, n, i).reshape(-1)) for i in range(n)]
    return np.stack(columns, axis=1)
