"""The YAML schema of block kinds: ``block: {kind: NAME, ...options}`` on an edge or the readout.

Each kind registers here, under its YAML name, the function that checks its options and fills
in their defaults; the block class that the compiler builds for the same name is registered in
:data:`topo_ep.blocks.BLOCKS` (this module stays free of torch, so ``topo-ep validate`` does not
load it). :func:`parse_block` is what the topology schema (:mod:`topo_ep.validate`) calls: the
``kind`` is checked against :data:`BLOCK_KINDS` (located error, nearest valid name), then the
kind's own function checks the rest.

Adding a kind: a function ``(check, data, path, where) -> options`` decorated with
``@BLOCK_KINDS.register("name")`` here, and the block class registered under the same name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from topo_ep.fields import FieldChecker
from topo_ep.registry import Registry
from topo_ep.spec import BlockSpec

#: Options of a kind, in the kind's order, defaults filled in.
Options = tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Placement:
    """Where a block sits, as far as its options need to know.

    Attributes
    ----------
    source, target
        The layers it joins (``input`` as a source; ``readout`` as the readout's target).
    source_grid, target_grid
        Their arrangements: the declared ``shape``, else ``(size,)``.
    init
        The edge's or the readout's ``init``.
    """

    source: str
    target: str
    source_grid: tuple[int, ...]
    target_grid: tuple[int, ...]
    init: str = "glorot_uniform"


def _refuse_identity(check: FieldChecker, where: Placement, what: str, path: tuple) -> None:
    """Only a dense block has an identity: refuse ``init: identity`` on any other kind."""
    if where.init == "identity":
        raise check.error(
            "invalid-value",
            f"init: identity needs a dense block; {what} starts from glorot_uniform, "
            "fan_in_uniform or zeros",
            path + ("kind",),
        )


#: A kind's option checker: (checker, the block mapping, its path, placement) -> options.
KindOptions = Callable[[FieldChecker, Mapping[str, Any], tuple, Placement], Options]

#: YAML block kind -> the checker of its options.
BLOCK_KINDS: Registry[KindOptions] = Registry("block kind")

#: Why a kind's map depends on the state, from its options (``None``: a fixed linear map). A kind
#: that is always linear does not register here.
STATE_DEPENDENCE: Registry[Callable[[Options], str | None]] = Registry("state-dependent kind")

#: Storage backends of the sparse kind; ``auto`` picks one by :mod:`topo_ep.blocks.dispatch`.
SPARSE_BACKENDS = ("auto", "dense", "torch.sparse", "torch-sparse")
#: Connection patterns of the sparse kind.
SPARSE_PATTERNS = ("random", "local")
#: Largest mask seed.
SEED_LIMIT = 2**63


def parse_block(check: FieldChecker, value: Any, path: tuple, where: Placement) -> BlockSpec:
    """Check a ``block:`` mapping and build its :class:`~topo_ep.spec.BlockSpec`.

    ``kind`` defaults to ``dense``; an unknown kind names the registered ones and the nearest.
    """
    if not isinstance(value, Mapping):
        check.mapping(value, path, ("kind",), (), "block mapping")
    kind = check.get(
        value, path, "kind", lambda v, p: check.choice(v, p, BLOCK_KINDS.names()), "dense"
    )
    return BlockSpec(kind, BLOCK_KINDS.get(kind)(check, value, path, where))


def state_dependence(block: BlockSpec) -> str | None:
    """Why ``block``'s map depends on the current state (words that follow the edge's key), or
    ``None`` when it is a fixed linear map. Then the network has no energy and no fixed
    operator (:func:`topo_ep.balance.analyse_balance`)."""
    if block.kind not in STATE_DEPENDENCE:
        return None
    return STATE_DEPENDENCE.get(block.kind)(block.options)


@BLOCK_KINDS.register("dense")
def dense_options(
    check: FieldChecker, data: Mapping[str, Any], path: tuple, where: Placement
) -> Options:
    """A dense matrix W (target size x source size): no options."""
    check.mapping(data, path, ("kind",), (), "block mapping")
    return ()


@BLOCK_KINDS.register("sparse")
def sparse_options(
    check: FieldChecker, data: Mapping[str, Any], path: tuple, where: Placement
) -> Options:
    """A matrix with a fixed mask of present entries; only those are stored and learned.

    - ``pattern: random`` (default): each target unit draws round(density x source size)
      source units without replacement; ``density`` in (0, 1] is required, ``seed`` (default 0)
      seeds the mask, independently of the run's seed.
    - ``pattern: local``: each target unit connects to the source units within Euclidean
      distance ``radius`` (required, > 0) of its position mapped onto the source's grid; both
      layers need arrangements of the same dimension, 1-D or 2-D (layer ``shape``).
    - ``backend``: ``auto`` (default), ``dense``, ``torch.sparse`` or ``torch-sparse``.
    """
    keys = ("kind", "pattern", "density", "seed", "radius", "backend")
    check.mapping(data, path, keys, (), "sparse block mapping")
    pattern = check.get(
        data, path, "pattern", lambda v, p: check.choice(v, p, SPARSE_PATTERNS), "random"
    )
    backend = check.get(
        data, path, "backend", lambda v, p: check.choice(v, p, SPARSE_BACKENDS), "auto"
    )
    _refuse_identity(check, where, "a sparse block (on its mask)", path)
    if pattern == "random":
        for key in ("radius",):
            if key in data:
                raise check.error(
                    "unknown-key",
                    f"'{key}' applies to pattern: local; pattern random takes a density",
                    path + (key,),
                    True,
                )
        density = check.get(data, path, "density", lambda v, p: _density(check, v, p))
        seed = check.get(data, path, "seed", lambda v, p: check.integer(v, p, 0, SEED_LIMIT - 1), 0)
        return (("pattern", pattern), ("density", density), ("seed", seed), ("backend", backend))
    for key in ("density", "seed"):
        if key in data:
            raise check.error(
                "unknown-key",
                f"'{key}' applies to pattern: random; a local pattern is set by its radius "
                "(its density follows from it)",
                path + (key,),
                True,
            )
    radius = check.get(data, path, "radius", lambda v, p: check.number(v, p, positive=True))
    dims = {len(where.source_grid), len(where.target_grid)}
    if len(dims) != 1 or not dims <= {1, 2}:
        raise check.error(
            "size-mismatch",
            "pattern: local needs the two layers arranged in the same dimension, 1-D or 2-D; "
            f"{where.source} has shape {list(where.source_grid)} and {where.target} has shape "
            f"{list(where.target_grid)} (declare 'shape:' on the layers)",
            path + ("pattern",),
        )
    return (("pattern", pattern), ("radius", radius), ("backend", backend))


def _density(check: FieldChecker, value: Any, path: tuple) -> float:
    density = check.number(value, path, positive=True)
    if density > 1.0:
        raise check.error(
            "absurd-number", f"{density:g} is not a density; expected a value in (0, 1]", path
        )
    return density


#: Pooling kinds a conv block may apply to its source.
POOL_KINDS = ("max", "avg")
#: Largest kernel, stride, padding or pooling size accepted.
CONV_LIMIT = 1024


@dataclass(frozen=True)
class ConvGeometry:
    """The shapes of a conv block ``g conv(pool(x))``, from its options and the two layers.

    Attributes
    ----------
    source
        The source's ``[C_in, H, W]``.
    pooled
        ``[C_in, H // size, W // size]`` after the pooling (the source's shape without one).
    output
        ``[C_out, H_o, W_o]`` with ``H_o = (H_p + 2 padding - kernel) // stride + 1``; C_out is
        the target's channel count.
    kernel, stride, padding
        The convolution's settings.
    pool, pool_size
        ``max``, ``avg`` or ``None``, and the window (and step) of the pooling.
    """

    source: tuple[int, int, int]
    pooled: tuple[int, int, int]
    output: tuple[int, int, int]
    kernel: int
    stride: int
    padding: int
    pool: str | None
    pool_size: int

    @classmethod
    def of(
        cls, options: Options, source: tuple[int, ...], out_channels: int
    ) -> ConvGeometry | None:
        """The geometry of ``options`` from ``source`` ([C, H, W]) into ``out_channels``
        channels, or ``None`` when a dimension would be empty."""
        values = dict(options)
        kernel, stride, padding = values["kernel"], values["stride"], values["padding"]
        pool = dict(values["pool"]) if values.get("pool") is not None else None
        size = pool["size"] if pool else 1
        channels, height, width = source
        pooled = (channels, height // size, width // size)
        rows = (pooled[1] + 2 * padding - kernel) // stride + 1
        cols = (pooled[2] + 2 * padding - kernel) // stride + 1
        if min(pooled[1], pooled[2], rows, cols) < 1:
            return None
        return cls(
            (channels, height, width),
            pooled,
            (out_channels, rows, cols),
            kernel,
            stride,
            padding,
            pool["kind"] if pool else None,
            size,
        )

    def describe(self, source: str) -> str:
        """``max-pool 2x2, then conv 5x5 stride 1 padding 0 from h1 [32, 24, 24]``."""
        pool = f"{self.pool}-pool {self.pool_size}x{self.pool_size}, then " if self.pool else ""
        return (
            f"{pool}conv {self.kernel}x{self.kernel} stride {self.stride} padding "
            f"{self.padding} from {source} {list(self.source)}"
        )


@BLOCK_KINDS.register("conv")
def conv_options(
    check: FieldChecker, data: Mapping[str, Any], path: tuple, where: Placement
) -> Options:
    """A 2-D convolution of the source's channels into the target's, after an optional pooling.

    Both layers are arranged as ``shape: [channels, height, width]``. ``kernel`` (required,
    square), ``stride`` (default 1) and ``padding`` (zeros, default 0) set the convolution;
    ``pool: {kind: max|avg, size: n}`` pools the source in n x n windows of step n first. The
    output channels are the target's; its height and width must be what the convolution gives.
    """
    keys = ("kind", "kernel", "stride", "padding", "pool")
    check.mapping(data, path, keys, ("kernel",), "conv block mapping")

    def setting(low: int) -> Callable[[Any, tuple], int]:
        return lambda v, p: check.integer(v, p, low, CONV_LIMIT)

    kernel = check.get(data, path, "kernel", setting(1))
    stride = check.get(data, path, "stride", setting(1), 1)
    padding = check.get(data, path, "padding", setting(0), 0)
    pool = check.get(data, path, "pool", lambda v, p: _pool(check, v, p), None)
    _refuse_identity(check, where, "a conv kernel", path)
    for end, grid in ((where.source, where.source_grid), (where.target, where.target_grid)):
        if len(grid) != 3:
            raise check.error(
                "size-mismatch",
                f"a conv block joins layers arranged as [channels, height, width]; {end} has "
                f"shape {list(grid)} (declare 'shape: [C, H, W]' on it)",
                path + ("kind",),
            )
    options: Options = (
        ("kernel", kernel),
        ("stride", stride),
        ("padding", padding),
        ("pool", pool),
    )
    source = (where.source_grid[0], where.source_grid[1], where.source_grid[2])
    geometry = ConvGeometry.of(options, source, where.target_grid[0])
    if geometry is None:
        raise check.error(
            "size-mismatch",
            f"the pooling and {kernel}x{kernel} kernel (stride {stride}, padding {padding}) "
            f"leave nothing of {where.source} {list(where.source_grid)}",
            path + ("kernel",),
        )
    if geometry.output != tuple(where.target_grid):
        raise check.error(
            "size-mismatch",
            f"{geometry.describe(where.source)} gives {list(geometry.output)}, but "
            f"{where.target} declares {list(where.target_grid)}",
            path,
        )
    return options


def _pool(check: FieldChecker, value: Any, path: tuple) -> Options:
    """``{kind: max|avg, size: n}`` as ``(("kind", ...), ("size", n))``."""
    data = check.mapping(value, path, ("kind", "size"), ("kind", "size"), "pool mapping")
    kind = check.get(data, path, "kind", lambda v, p: check.choice(v, p, POOL_KINDS))
    size = check.get(data, path, "size", lambda v, p: check.integer(v, p, 1, CONV_LIMIT))
    return (("kind", kind), ("size", size))


@BLOCK_KINDS.register("pooled")
def pooled_options(
    check: FieldChecker, data: Mapping[str, Any], path: tuple, where: Placement
) -> Options:
    """A dense matrix W (target size x pooled source size) applied after pooling the source:
    ``g W pool(x)``. The source is arranged as ``[C, H, W]``; ``pool: {kind: max|avg, size: n}``
    is required. The paper's readout reads max-pool(h2) this way."""
    check.mapping(data, path, ("kind", "pool"), ("pool",), "pooled block mapping")
    pool = check.get(data, path, "pool", lambda v, p: _pool(check, v, p))
    _refuse_identity(check, where, "a pooled block", path)
    if len(where.source_grid) != 3:
        raise check.error(
            "size-mismatch",
            f"a pooled block pools a layer arranged as [channels, height, width]; "
            f"{where.source} has shape {list(where.source_grid)} (declare 'shape: [C, H, W]')",
            path + ("kind",),
        )
    size = dict(pool)["size"]
    channels, height, width = where.source_grid
    if height // size < 1 or width // size < 1:
        raise check.error(
            "size-mismatch",
            f"a {size}x{size} pooling leaves nothing of {where.source} {list(where.source_grid)}",
            path + ("pool", "size"),
        )
    return (("pool", pool),)


def pooled_shape(options: Options, source: tuple[int, ...]) -> tuple[int, int, int]:
    """``[C, H // n, W // n]``: the shape of a pooled block's source after its pooling."""
    size = dict(dict(options)["pool"])["size"]
    return (source[0], source[1] // size, source[2] // size)


@STATE_DEPENDENCE.register("conv")
@STATE_DEPENDENCE.register("pooled")
def max_pooling_dependence(options: Options) -> str | None:
    """A max pooling of the source picks the argmax of the current state."""
    pool = dict(options).get("pool")
    if pool is None or dict(pool)["kind"] != "max":
        return None
    return "max-pools its source (the pooling picks the argmax of the current state)"
