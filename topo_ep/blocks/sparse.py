"""The sparse block kind: A has a fixed mask of present entries; only those are stored and learn.

Storage, the same whatever runs the products: ``values`` (nnz,), the entries of A at the mask in
row-major (CSR) order, and the mask itself as ``crow_indices`` (rows + 1,) and ``col_indices``
(nnz,) (int64 buffers, stored in the checkpoint). A (rows x cols, target x source) is

    A[i, col[k]] = values[k]   for crow[i] <= k < crow[i + 1],   0 elsewhere.

Products (row-major states; :class:`~topo_ep.blocks.base.Block`): ``accumulate`` gives
acc + scale g x A^T, ``adjoint`` g y A, ``outer(post, pre)`` (post^T pre) read at the mask, the
values' shape. Which backend runs the products and which kernel the update is decided in one
place, :func:`topo_ep.blocks.dispatch.choose_plan`.

The tied transpose (:class:`SparseTransposeBlock`) is the exact transpose with the same values:
A^T in CSR form is (t_crow, t_col, values[t_perm]) with a permutation computed once from the
mask, so it reads the current values and cannot drift. (Measured on a 2048 x 2048 block, batch
256, in the same fused product: the CSR transpose view ``csr.t()``, no copy, took 2.0x the
permutation's time at 5 % density, 1.4x at 1 % and 3.2x at 100 %;
``benchmarks/results/blocks.md``.)

Autograd: with gradients enabled, a product is one :class:`torch.autograd.Function` whose
backward is the block's own primitives, d/dx = the transposed product and d/dvalues =
``outer`` (sampled at the mask), so BP, BPTT and implicit differentiation never densify A.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from topo_ep.blocks.base import (
    BLOCKS,
    Block,
    BlockContext,
    Joined,
    OwningBlock,
    TiedTranspose,
    register_tensor,
)
from topo_ep.blocks.dispatch import INSTALL_HINT, Plan, choose_plan
from topo_ep.blocks.masks import local_mask, local_row_bound, random_mask, row_count
from topo_ep.errors import TopoEpError
from topo_ep.initial import tensor_generator


def _import_torch_sparse() -> Any:
    try:
        with warnings.catch_warnings():  # torch-sparse 0.6.18 uses the deprecated jit.script
            warnings.simplefilter("ignore", DeprecationWarning)
            import torch_sparse
    except ImportError as exc:  # the plan falls back before this; this is a last guard
        raise TopoEpError(
            f"backend torch-sparse needs the torch-sparse package: {INSTALL_HINT}"
        ) from exc
    return torch_sparse


def _quiet_csr_warnings() -> None:
    """Build one tiny CSR tensor with warnings off: torch warns once per process that CSR
    support is in beta and that invariant checks are off (the mask is built here and trusted),
    which would otherwise reach every user of a sparse block."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        one = torch.ones(1, dtype=torch.long)
        torch.sparse_csr_tensor(torch.tensor([0, 1]), one * 0, one.double(), (1, 1))


class _SparseProduct(torch.autograd.Function):
    """y = x A^T (or x A when ``transposed``), differentiable in the values and in x."""

    @staticmethod
    def forward(ctx, values: Tensor, x: Tensor, block: SparseBlock, transposed: bool) -> Tensor:
        ctx.save_for_backward(values, x)
        ctx.block, ctx.transposed = block, transposed
        return block.raw_product(values, x, transposed)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        values, x = ctx.saved_tensors
        block, transposed = ctx.block, ctx.transposed
        grad_values = grad_x = None
        if ctx.needs_input_grad[0]:
            # d/dA of sum(grad * x A^T) = grad^T x; of sum(grad * x A) = x^T grad.
            grad_values = block.raw_outer(x, grad) if transposed else block.raw_outer(grad, x)
        if ctx.needs_input_grad[1]:
            grad_x = block.raw_product(values, grad, not transposed)
        return grad_values, grad_x, None, None


class _SparseAccumulate(torch.autograd.Function):
    """acc + alpha x A^T (or x A when ``transposed``) as one fused product, differentiable in
    acc, the values and x."""

    @staticmethod
    def forward(
        ctx,
        acc: Tensor,
        values: Tensor,
        x: Tensor,
        block: SparseBlock,
        alpha: float,
        transposed: bool,
    ) -> Tensor:
        ctx.save_for_backward(values, x)
        ctx.block, ctx.alpha, ctx.transposed = block, alpha, transposed
        return block.raw_accumulate(values, acc, x, alpha, transposed)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        values, x = ctx.saved_tensors
        block, alpha, transposed = ctx.block, ctx.alpha, ctx.transposed
        grad_acc = grad if ctx.needs_input_grad[0] else None
        grad_values = grad_x = None
        if ctx.needs_input_grad[1]:
            outer = block.raw_outer(x, grad) if transposed else block.raw_outer(grad, x)
            grad_values = outer * alpha
        if ctx.needs_input_grad[2]:
            grad_x = block.raw_product(values, grad, not transposed) * alpha
        return grad_acc, grad_values, grad_x, None, None, None


@BLOCKS.register("sparse")
class SparseBlock(OwningBlock):
    """A sparse block ``g A``, A (target size x source size) with a fixed mask.

    Parameters
    ----------
    source, target
        Layer names.
    size
        (rows, cols) = (target size, source size).
    crow, col
        The mask in CSR form (int64; rows sorted, columns sorted within a row).
    values
        The entries at the mask, in CSR order; an ``nn.Parameter`` when ``learned``.
    gain
        g.
    learned
        Whether the optimizer updates the values.
    backend
        ``auto`` or a backend of :data:`topo_ep.blocks.dispatch.BACKENDS`.
    pattern
        A description of the mask for ``summary`` (``random``, ``local r=4``).

    Attributes
    ----------
    cache_products
        Keep what the products derive from the values (the masked dense matrix of the
        ``dense`` backend, the permuted values of the transpose) until the values change,
        which autograd's version counter tells: every in-place change made through the tensor
        itself (an optimizer step, ``load_state_dict``, ``with torch.no_grad(): v.mul_(2)``)
        is seen. A change made through ``.data`` is not (``torch.autograd.gradcheck`` perturbs
        so): set this to ``False`` around such code.
    """

    kind = "sparse"

    def __init__(
        self,
        source: str,
        target: str,
        size: tuple[int, int],
        crow: Tensor,
        col: Tensor,
        values: Tensor,
        gain: float,
        learned: bool = True,
        backend: str = "auto",
        pattern: str = "",
    ) -> None:
        super().__init__(source, target, gain, learned)
        self.size = (int(size[0]), int(size[1]))
        self.requested = backend
        self.pattern = pattern
        choose_plan(backend, 0.0, "cpu", warn=False)  # an unknown backend fails here
        self.register_buffer("crow_indices", crow.to(torch.long))
        self.register_buffer("col_indices", col.to(torch.long))
        register_tensor(self, "values", values, learned)
        self.cache_products = True
        self._plans: dict[str, Plan] = {}
        self._cache: dict[str, tuple[tuple, Tensor]] = {}
        self._templates: dict[tuple, Tensor] = {}
        self._derive()

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, context: BlockContext) -> SparseBlock:
        """The mask from the options (:mod:`topo_ep.blocks.masks`), then the values.

        A random mask draws from ``tensor_generator(seed option, "<edge key>:mask")``, so it
        is part of the topology, not of the run. The values are U(-a, a) with Glorot's a for
        the mask's mean fan-in and fan-out, a = sqrt(6 / (nnz / rows + nnz / cols)) (dense
        Glorot at density 1), drawn in CSR order from the tensor's own generator (at density 1
        the same values as a dense block's); ``init: zeros`` gives zeros.
        """
        options = context.block
        pattern = options.option("pattern", "random")
        rows, cols = context.rows, context.cols
        if pattern == "local":
            radius = float(options.option("radius"))
            crow, col = local_mask(context.source_grid, context.target_grid, radius)
            label = f"local r={radius:g}"
        else:
            mask_seed = int(options.option("seed", 0))
            generator = tensor_generator(mask_seed, f"{context.name}:mask")
            crow, col = random_mask(rows, cols, float(options.option("density")), generator)
            label = f"random seed={mask_seed}"
        nnz = int(col.numel())
        if nnz == 0:
            raise TopoEpError(
                f"the sparse block of {context.name} has no entries: raise the radius of its "
                "local pattern"
            )
        values = context.initial((nnz,), (nnz / rows, nnz / cols))
        return cls(
            context.source,
            context.target,
            (rows, cols),
            crow,
            col,
            values,
            context.gain,
            context.learned,
            str(options.option("backend", "auto")),
            label,
        )

    @classmethod
    def stored_entries(cls, context: BlockContext) -> int:
        """An upper bound of nnz, known before the mask is built."""
        options = context.block
        if options.option("pattern", "random") == "local":
            per_row = local_row_bound(context.source_grid, float(options.option("radius")))
            return context.rows * min(context.cols, per_row)
        return context.rows * row_count(float(options.option("density")), context.cols)

    def _set_buffer(self, name: str, value: Tensor) -> None:
        if name in self._buffers:
            self._buffers[name] = value
        else:
            self.register_buffer(name, value, persistent=False)

    def _derive(self) -> None:
        """Index tensors derived from the mask (not stored): rows, flat positions, transpose."""
        rows, cols = self.size
        crow, col = self.crow_indices, self.col_indices
        device = crow.device
        row = torch.repeat_interleave(
            torch.arange(rows, device=device), crow[1:] - crow[:-1], output_size=col.numel()
        )
        perm = torch.argsort(col * rows + row, stable=True)
        t_crow = torch.zeros(cols + 1, dtype=torch.long, device=device)
        t_crow[1:] = torch.bincount(col, minlength=cols).cumsum(0)
        # CSR products run on int32 indices where they fit (MKL converts int64 on every call).
        small = torch.int32 if col.numel() < 2**31 - 1 else torch.long
        self._set_buffer("row_indices", row)
        self._set_buffer("flat_indices", row * cols + col)
        self._set_buffer("t_crow_indices", t_crow)
        self._set_buffer("t_col_indices", row[perm])
        self._set_buffer("t_perm", perm)
        self._set_buffer("csr_crow", crow.to(small))
        self._set_buffer("csr_col", col.to(small))
        self._set_buffer("csr_t_crow", t_crow.to(small))
        self._set_buffer("csr_t_col", row[perm].to(small))
        self._cache.clear()
        self._templates.clear()
        _quiet_csr_warnings()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._derive()  # the stored mask wins over the compiled one

    # ------------------------------------------------------------------ properties
    @property
    def parameter(self) -> Tensor:
        """The values at the mask, (nnz,)."""
        return self.values

    @property
    def fan_in(self) -> float:
        """The mean number of source units one target unit sums: nnz / rows (its init's)."""
        return self.nnz / self.size[0]

    @property
    def nnz(self) -> int:
        return int(self.col_indices.numel())

    @property
    def density(self) -> float:
        """nnz / (rows x cols)."""
        return self.nnz / (self.size[0] * self.size[1])

    def plan(self, device_type: str | None = None) -> Plan:
        """The backend and update kernel on ``device_type`` (default: where the values are)."""
        device_type = device_type or self.values.device.type
        found = self._plans.get(device_type)
        if found is None:
            found = choose_plan(self.requested, self.density, device_type)
            self._plans[device_type] = found
        return found

    def summary(self) -> dict[str, Any]:
        plan = self.plan()
        return {
            "kind": self.kind,
            "density": self.density,
            "backend": plan.label,
            "update": plan.update,
            "pattern": self.pattern,
            "nnz": self.nnz,
        }

    # ------------------------------------------------------------------ raw kernels
    def _cached(self, name: str, values: Tensor, make) -> Tensor:  # type: ignore[no-untyped-def]
        """``make()`` kept until the values change (in place or moved)."""
        if not self.cache_products:
            return make()
        key = (values.data_ptr(), values._version, values.dtype, values.device)
        hit = self._cache.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        value = make()
        self._cache[name] = (key, value)
        return value

    def masked_dense(self, values: Tensor) -> Tensor:
        """A as a dense (rows, cols) matrix (differentiable in ``values``)."""
        rows, cols = self.size
        flat = values.new_zeros(rows * cols).scatter(0, self.flat_indices, values)
        return flat.view(rows, cols)

    def _csr(self, values: Tensor, transposed: bool) -> Tensor:
        rows, cols = self.size
        if transposed:
            t_values = self._cached("t_values", values, lambda: values[self.t_perm])
            return torch.sparse_csr_tensor(self.csr_t_crow, self.csr_t_col, t_values, (cols, rows))
        return torch.sparse_csr_tensor(self.csr_crow, self.csr_col, values, (rows, cols))

    def raw_product(self, values: Tensor, x: Tensor, transposed: bool) -> Tensor:
        """x A^T, or x A when ``transposed``, without autograd (the plan's backend)."""
        backend = self.plan(x.device.type).backend
        if backend == "dense":
            return self.product_dense(values, x, transposed)
        if backend == "torch-sparse":
            return self.product_torch_sparse(values, x, transposed)
        return self.product_csr(values, x, transposed)

    def raw_accumulate(
        self, values: Tensor, acc: Tensor, x: Tensor, alpha: float, transposed: bool
    ) -> Tensor:
        """acc + alpha x A^T (x A when ``transposed``), fused where the backend allows,
        without autograd."""
        backend = self.plan(x.device.type).backend
        if backend == "dense":
            matrix = self._cached("dense", values, lambda: self.masked_dense(values))
            return torch.addmm(acc, x, matrix if transposed else matrix.t(), alpha=alpha)
        if backend == "torch.sparse":
            product = self.product_csr(values, x, transposed)
        else:
            product = self.product_torch_sparse(values, x, transposed)
        # One pass over acc. (The fused torch.addmm(acc^T, A, x^T) must first copy a row-major
        # acc into column-major order: measured 15 % slower on a 1024 x 1024 block at 5 %.)
        return torch.add(acc, product, alpha=alpha)

    def product_dense(self, values: Tensor, x: Tensor, transposed: bool) -> Tensor:
        """Backend ``dense``: GEMM with the masked dense matrix, rebuilt when the values
        change."""
        matrix = self._cached("dense", values, lambda: self.masked_dense(values))
        return x @ matrix if transposed else x @ matrix.t()

    def product_csr(self, values: Tensor, x: Tensor, transposed: bool) -> Tensor:
        """Backend ``torch.sparse``: (A x^T)^T with A in CSR (A^T from the permutation)."""
        return torch.sparse.mm(self._csr(values, transposed), x.t()).t()

    def product_torch_sparse(self, values: Tensor, x: Tensor, transposed: bool) -> Tensor:
        """Backend ``torch-sparse``: ``torch_sparse.matmul`` on a ``SparseTensor`` built from
        the same CSR arrays (no copy, no sort)."""
        torch_sparse = _import_torch_sparse()
        rows, cols = self.size
        if transposed:
            t_values = self._cached("t_values", values, lambda: values[self.t_perm])
            matrix = torch_sparse.SparseTensor(
                rowptr=self.t_crow_indices,
                col=self.t_col_indices,
                value=t_values,
                sparse_sizes=(cols, rows),
                is_sorted=True,
                trust_data=True,
            )
        else:
            matrix = torch_sparse.SparseTensor(
                rowptr=self.crow_indices,
                col=self.col_indices,
                value=values,
                sparse_sizes=(rows, cols),
                is_sorted=True,
                trust_data=True,
            )
        return torch_sparse.matmul(matrix, x.t()).t()

    def raw_outer(self, post: Tensor, pre: Tensor) -> Tensor:
        """(post^T pre) at the mask, in CSR order, without autograd (the plan's kernel)."""
        if self.plan(post.device.type).update == "masked-dense":
            return self.outer_masked_dense(post, pre)
        return self.outer_sampled(post, pre)

    def outer_masked_dense(self, post: Tensor, pre: Tensor) -> Tensor:
        """Update kernel ``masked-dense``: the dense post^T pre, read at the mask."""
        return torch.take(post.t() @ pre, self.flat_indices)

    def outer_sampled(self, post: Tensor, pre: Tensor) -> Tensor:
        """Update kernel ``sampled``: ``torch.sparse.sampled_addmm``, only at the mask."""
        key = (post.dtype, post.device)
        template = self._templates.get(key)
        if template is None:
            zeros = torch.zeros(self.nnz, dtype=post.dtype, device=post.device)
            template = torch.sparse_csr_tensor(
                self.crow_indices, self.col_indices, zeros, self.size
            )
            self._templates[key] = template
        return torch.sparse.sampled_addmm(template, post.t(), pre, beta=0.0).values()

    # ------------------------------------------------------------------ Block protocol
    def product(self, x: Tensor, transposed: bool = False) -> Tensor:
        """x A^T (x A when ``transposed``), differentiable when gradients are on."""
        values = self.values
        if torch.is_grad_enabled() and (values.requires_grad or x.requires_grad):
            return _SparseProduct.apply(values, x, self, transposed)
        return self.raw_product(values, x, transposed)

    def _needs_graph(self, *tensors: Tensor) -> bool:
        return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)

    def accumulate(
        self, acc: Tensor, x: Tensor, scale: float = 1.0, joined: Joined | None = None
    ) -> Tensor:
        """acc + scale * g * x A^T (one fused product without autograd)."""
        alpha = self.gain * scale
        if self._needs_graph(self.values, x, acc):
            return _SparseAccumulate.apply(acc, self.values, x, self, alpha, False)
        return self.raw_accumulate(self.values, acc, x, alpha, False)

    def apply(self, x: Tensor, joined: Joined | None = None) -> Tensor:
        """g * x A^T."""
        out = self.product(x)
        return out if self.gain == 1.0 else out * self.gain

    def adjoint(self, y: Tensor, joined: Joined | None = None) -> Tensor:
        """g * y A."""
        out = self.product(y, transposed=True)
        return out if self.gain == 1.0 else out * self.gain

    def dense(self) -> Tensor:
        """g * A as a dense (rows, cols) matrix."""
        return self.masked_dense(self.values) * self.gain

    def outer(self, post: Tensor, pre: Tensor, joined: Joined | None = None) -> Tensor:
        """(post^T pre) at the mask: d/dvalues of sum_b post_b . A pre_b, shaped (nnz,)."""
        with torch.no_grad():
            return self.raw_outer(post, pre)

    def transpose(self, source: str, target: str, gain: float) -> Block:
        """The tied feedback ``gain * A^T`` (same values, exact transpose)."""
        return SparseTransposeBlock(source, target, self, gain)

    def extra_repr(self) -> str:
        rows, cols = self.size
        return (
            f"{self.source}->{self.target}, {rows}x{cols}, gain={self.gain:g}, "
            f"density={self.density:.4g}, {self.pattern}, backend={self.plan().label}"
        )

    def __repr__(self) -> str:
        return f"SparseBlock({self.extra_repr()})"


class SparseTransposeBlock(TiedTranspose):
    """The tied feedback ``g A^T`` of a :class:`SparseBlock`: the partner's values, transposed
    by a fixed permutation (exact; it follows learning)."""

    kind = "sparse"
    partner: SparseBlock

    def accumulate(
        self, acc: Tensor, x: Tensor, scale: float = 1.0, joined: Joined | None = None
    ) -> Tensor:
        """acc + scale * g * x A (one fused product without autograd)."""
        partner, alpha = self.partner, self.gain * scale
        if partner._needs_graph(partner.values, x, acc):
            return _SparseAccumulate.apply(acc, partner.values, x, partner, alpha, True)
        return partner.raw_accumulate(partner.values, acc, x, alpha, True)

    def apply(self, x: Tensor, joined: Joined | None = None) -> Tensor:
        out = self.partner.product(x, transposed=True)
        return self.gained(out)

    def adjoint(self, y: Tensor, joined: Joined | None = None) -> Tensor:
        out = self.partner.product(y)
        return self.gained(out)

    def dense(self) -> Tensor:
        return self.partner.masked_dense(self.partner.values).t() * self.gain

    def outer(self, post: Tensor, pre: Tensor, joined: Joined | None = None) -> Tensor:
        """d/dvalues of sum_b post_b . A^T pre_b = the partner's outer(pre, post)."""
        return self.partner.outer(pre, post)

    def __repr__(self) -> str:
        rows, cols = self.partner.size
        return (
            f"SparseTransposeBlock({self.source}->{self.target}, {cols}x{rows}, "
            f"gain={self.gain:g}, density={self.partner.density:.4g}, "
            f"backend={self.partner.plan().label}, tied to "
            f"{self.partner.source}->{self.partner.target})"
        )
