"""The one dispatch point of sparse blocks: the backend of the products and the update kernel.

A sparse block stores its values in one fixed order whatever runs it (:mod:`topo_ep.blocks.
sparse`), so the choice below changes only the speed, never the results beyond rounding, and a
checkpoint loads under any choice.

Backends of the products (``accumulate``, ``apply``, ``adjoint`` and the tied transpose):

- ``dense``: the masked dense matrix, built from the values once per change of the values, run
  as GEMMs;
- ``torch.sparse``: CSR products (``torch.sparse.mm``), the transpose from a precomputed
  permutation of the same values;
- ``torch-sparse``: the optional ``torch-sparse`` package (``pip install topo-ep[sparse]``).

Kernels of the update (:meth:`~topo_ep.blocks.sparse.SparseBlock.outer`):

- ``sampled``: ``torch.sparse.sampled_addmm``, computed only at the mask's entries;
- ``masked-dense``: the dense outer product post^T pre, read at the mask.

``backend: auto`` resolves by :func:`choose_plan`, per device type, from the density (stored
entries over rows x cols). The thresholds were measured with ``benchmarks/blocks.py`` (a
2048 x 2048 block, batch 256, float32, 2 threads, on the development machine's CPU;
``benchmarks/results/blocks.json`` and ``blocks_threshold.json``), judged by the time of a whole
EP training step (free and nudged relaxation through the block and its tied transpose, the
update and the optimizer step), not by one product. ``torch-sparse`` was 2.6 to 4.9 times
slower than CSR at every measured density, so ``auto`` never picks it.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass

from topo_ep.errors import TopoEpError

#: Backends that run products.
BACKENDS = ("dense", "torch.sparse", "torch-sparse")
#: Update kernels.
UPDATES = ("sampled", "masked-dense")

#: Per device type: the density at or below which ``auto`` runs products on CSR
#: (``torch.sparse``), and above which on the masked dense matrix. CPU, measured (training
#: step, ms, CSR / dense backend; medians of 9 in blocks_threshold.json): 8 % 291 / 462,
#: 10 % 412 / 533, 12 % 534 / 572, 15 % 706 / 612; medians of 5 in blocks.json: 1 % 183 / 635,
#: 5 % 265 / 497, 20 % 831 / 561. Three runs at 8-15 % differed by up to 10 %; the crossover
#: lay between 12 and 15 % in each. CUDA: not measured (no GPU was available); cuSPARSE is
#: assumed to pay off only at lower densities than MKL.
SPARSE_PRODUCTS_UP_TO: dict[str, float] = {"cpu": 0.125, "cuda": 0.05}
#: Per device type: the density at or below which the update is ``sampled``. CPU, measured
#: (ms, sampled / masked-dense): 5 % 6.9 / 17.7, 10 % 10.7 / 15.0, 15 % 16.9 / 18.7,
#: 20 % 16.3 / 14.7, 50 % 41.7 / 19.4. CUDA: not measured.
SAMPLED_UPDATE_UP_TO: dict[str, float] = {"cpu": 0.15, "cuda": 0.05}
#: Device types without a measured rule use these.
DEFAULT_DEVICE = "cpu"

#: How to install the optional backend.
INSTALL_HINT = (
    "install it with: pip install 'topo-ep[sparse]' (it builds torch-scatter and torch-sparse "
    "from source against the installed torch; see DEVELOPERS.md)"
)


@dataclass(frozen=True)
class Plan:
    """What runs a sparse block on one device type.

    Attributes
    ----------
    backend
        One of :data:`BACKENDS`.
    update
        One of :data:`UPDATES`.
    requested
        The declared ``backend`` option (``auto`` or a backend).
    """

    backend: str
    update: str
    requested: str

    @property
    def label(self) -> str:
        """``torch.sparse``, ``auto: torch.sparse`` or ``torch.sparse instead of torch-sparse``
        (a fallback), as ``compile`` prints it."""
        if self.requested == self.backend:
            return self.backend
        if self.requested == "auto":
            return f"auto: {self.backend}"
        return f"{self.backend} instead of {self.requested}"


def torch_sparse_available() -> bool:
    """Whether the optional ``torch_sparse`` package can be imported."""
    return importlib.util.find_spec("torch_sparse") is not None


def choose_plan(requested: str, density: float, device_type: str, *, warn: bool = True) -> Plan:
    """The backend and update kernel of a sparse block of ``density`` on ``device_type``.

    ``requested`` is ``auto`` or a backend name. ``torch-sparse`` when the package is missing
    falls back to ``torch.sparse`` with one warning line (``warn``); ``auto`` never picks it
    (it was not faster than CSR on the measured CPU).

    Raises
    ------
    TopoEpError
        For an unknown backend name.
    """
    rules = device_type if device_type in SPARSE_PRODUCTS_UP_TO else DEFAULT_DEVICE
    update = "sampled" if density <= SAMPLED_UPDATE_UP_TO[rules] else "masked-dense"
    if requested == "auto":
        backend = "torch.sparse" if density <= SPARSE_PRODUCTS_UP_TO[rules] else "dense"
        return Plan(backend, update, requested)
    if requested not in BACKENDS:
        raise TopoEpError(
            f"unknown sparse backend {requested!r}; expected auto or one of {', '.join(BACKENDS)}"
        )
    if requested == "torch-sparse" and not torch_sparse_available():
        if warn:  # one line: no source line to show for this location
            warnings.warn_explicit(
                f"backend torch-sparse: the torch-sparse package is not installed, using "
                f"torch.sparse instead; {INSTALL_HINT}",
                RuntimeWarning,
                "topo_ep.blocks",
                0,
            )
        return Plan("torch.sparse", update, requested)
    return Plan(requested, update, requested)
