"""Blocks: the protocol, the registry, the sparse kind's kernels, masks, storage and checkpoint.

The equivalence of whole sparse and dense networks is in ``test_sparse.py``; here each piece of
a block is checked on its own, in float64.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.test_sparse import NEEDS_TORCH_SPARSE, dense_twin, sparse_spec
from topo_ep import compiler
from topo_ep.block_schema import BLOCK_KINDS
from topo_ep.blocks import BLOCKS, Block, BlockContext, DenseBlock, SparseBlock, dispatch
from topo_ep.blocks.masks import local_mask, random_mask, row_count
from topo_ep.blocks.sparse import _SparseAccumulate, _SparseProduct
from topo_ep.cli import main
from topo_ep.compiler import compile_topology
from topo_ep.errors import TopoEpError, TopologyError
from topo_ep.initial import glorot_uniform, tensor_generator
from topo_ep.learn import make_method
from topo_ep.loader import loads_topology
from topo_ep.spec import BlockSpec
from topo_ep.spectral import spectral_radius
from topo_ep.train import make_optimizer

SPARSE_BACKENDS = ["dense", "torch.sparse", pytest.param("torch-sparse", marks=NEEDS_TORCH_SPARSE)]


def context(rows=9, cols=7, density=0.4, backend="torch.sparse", **changes) -> BlockContext:
    options = (("pattern", "random"), ("density", density), ("seed", 0), ("backend", backend))
    base = BlockContext(
        name="a->b:forward",
        source="a",
        target="b",
        rows=rows,
        cols=cols,
        source_grid=(cols,),
        target_grid=(rows,),
        gain=0.7,
        learned=True,
        init="glorot_uniform",
        block=BlockSpec("sparse", options),
        seed=0,
        dtype=torch.float64,
    )
    return dataclasses.replace(base, **changes)


def operands(rows=9, cols=7, batch=5):
    generator = torch.Generator().manual_seed(3)
    draw = lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float64)  # noqa: E731
    return draw(batch, cols), draw(batch, rows), draw(batch, rows)


# ---------------------------------------------------------------------------- registry
def test_every_block_kind_has_a_schema_and_a_class():
    assert BLOCKS.names() == BLOCK_KINDS.names() == ("dense", "sparse", "conv", "pooled")


def test_every_compiled_block_follows_the_protocol():
    net = compile_topology(sparse_spec("chain", "auto"), dtype=torch.float64)
    blocks = [*net.blocks, net.head.block, net.head.nudge_block]
    assert len(blocks) >= 7 and all(isinstance(b, Block) for b in blocks)
    owners = [b for b in blocks if b.parameter is not None]
    assert all(isinstance(b, nn.Module) for b in owners)
    assert {b.kind for b in blocks} == {"dense", "sparse"}


def test_a_new_kind_is_one_class_and_its_registrations(monkeypatch):
    """A kind registered in both registries is valid in YAML, compiles and trains with EP and
    BP: no edit to the compiler, the engine or the learners."""

    class Doubled(DenseBlock):
        """W stored halved: A = 2 V (a toy kind with its own storage and outer)."""

        kind = "doubled"

        @classmethod
        def build(cls, ctx):
            return cls(ctx.source, ctx.target, DenseBlock.build(ctx).weight.detach() / 2, ctx.gain)

        def accumulate(self, acc, x, scale=1.0, joined=None):
            return torch.addmm(acc, x, self.weight.t(), alpha=2 * self.gain * scale)

        def outer(self, post, pre, joined=None):
            return 2 * (post.t() @ pre)

        def dense(self):
            return 2 * self.weight * self.gain

    text = """
name: toy
input: {size: 5}
layers: [{name: h1, size: 6}, {name: h2, size: 4}]
readout: {from: h2, size: 3}
edges:
  - {source: input, target: h1, block: {kind: doubled}}
  - {source: h1, target: h2}
"""
    with pytest.raises(TopologyError, match="'doubled' is not allowed"):
        loads_topology(text, "toy.yaml")
    monkeypatch.setitem(BLOCK_KINDS._entries, "doubled", BLOCK_KINDS.get("dense"))
    monkeypatch.setitem(BLOCKS._entries, "doubled", Doubled)
    spec = loads_topology(text, "toy.yaml")
    net = compile_topology(spec, dtype=torch.float64)
    plain = compile_topology(dense_twin(spec), dtype=torch.float64)
    assert isinstance(net.block_of("input->h1:forward"), Doubled)
    x, y = torch.rand(4, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    for name in ("ep", "bp"):
        method = make_method(name, spec)
        for each in (net, plain):
            each.zero_grad(set_to_none=True)
            method.gradients(each, x, y)
        grad = net.weight_of("input->h1:forward").grad
        # A = 2V: dL/dV = 2 dL/dA, and the same network function as the dense twin.
        torch.testing.assert_close(grad, 2 * plain.weight_of("input->h1:forward").grad)


# ---------------------------------------------------------------------------- sparse kernels
@pytest.mark.parametrize("backend", SPARSE_BACKENDS)
def test_sparse_products_match_the_masked_matrix(backend):
    block = SparseBlock.build(context(backend=backend))
    matrix = block.masked_dense(block.values).detach()
    x, y, acc = operands()
    with torch.no_grad():
        torch.testing.assert_close(block.accumulate(acc, x, 0.5), acc + 0.35 * x @ matrix.t())
        torch.testing.assert_close(block.apply(x), 0.7 * x @ matrix.t())
        torch.testing.assert_close(block.adjoint(y), 0.7 * y @ matrix)
        tied = block.transpose("b", "a", 0.2)
        torch.testing.assert_close(tied.apply(y), 0.2 * y @ matrix)
        torch.testing.assert_close(tied.adjoint(x), 0.2 * x @ matrix.t())
    assert torch.equal(block.dense(), matrix * 0.7)
    assert torch.equal(tied.dense(), matrix.t() * 0.2)


def test_the_tied_transpose_reads_the_same_values_exactly():
    """A^T in CSR is (t_crow, t_col, values[t_perm]): every value appears once, unchanged."""
    block = SparseBlock.build(context(rows=40, cols=30, density=0.2))
    transposed = block.values[block.t_perm]
    assert torch.equal(transposed.sort().values, block.values.sort().values)
    csr = torch.sparse_csr_tensor(block.t_crow_indices, block.t_col_indices, transposed, (30, 40))
    assert torch.equal(csr.to_dense(), block.masked_dense(block.values).t())
    with torch.no_grad():
        block.values.mul_(3.0)  # learning: the transpose follows, nothing is copied
    tied = block.transpose("b", "a", 1.0)
    assert torch.equal(tied.dense(), block.masked_dense(block.values).t())


@pytest.mark.parametrize("update", dispatch.UPDATES)
def test_update_kernels_equal_the_dense_outer_product_at_the_mask(update):
    block = SparseBlock.build(context())
    x, post, _ = operands()
    kernel = block.outer_sampled if update == "sampled" else block.outer_masked_dense
    expected = (post.t() @ x).reshape(-1)[block.flat_indices]
    torch.testing.assert_close(kernel(post, x), expected, rtol=0, atol=1e-13)
    assert kernel(post.float(), x.float()).dtype == torch.float32


@pytest.mark.parametrize("backend", SPARSE_BACKENDS)
@pytest.mark.parametrize("transposed", [False, True])
def test_sparse_products_pass_gradcheck(backend, transposed):
    """The product's backward (the transposed product for x, ``outer`` for the values) against
    finite differences; and the values' gradient of a sum is ``outer``."""
    block = SparseBlock.build(context(backend=backend))
    block.cache_products = False  # gradcheck perturbs the values through .data
    x = operands()[1 if transposed else 0].requires_grad_(True)
    values = block.values.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v, o: _SparseProduct.apply(v, o, block, transposed), (values, x)
    )
    acc = torch.rand(x.shape[0], block.size[1] if transposed else block.size[0]).double()
    assert torch.autograd.gradcheck(
        lambda a, v, o: _SparseAccumulate.apply(a, v, o, block, 0.3, transposed),
        (acc.requires_grad_(True), values, x),
    )
    out = block.product(x, transposed)
    (grad_values,) = torch.autograd.grad(out.sum(), [block.values])
    ones = torch.ones_like(out)
    expected = block.outer(x, ones) if transposed else block.outer(ones, x)
    torch.testing.assert_close(grad_values, expected)


def test_the_dense_backend_follows_in_place_updates():
    block = SparseBlock.build(context(backend="dense"))
    x = operands()[0]
    with torch.no_grad():
        before = block.apply(x)
        block.values.mul_(2.0)
        torch.testing.assert_close(block.apply(x), 2 * before)
    block.double()
    block.float()
    assert block.apply(x.float()).dtype == torch.float32


# ---------------------------------------------------------------------------- masks
def test_random_masks_have_a_fixed_fan_in_and_depend_only_on_their_seed():
    a = random_mask(50, 40, 0.1, torch.Generator().manual_seed(1))
    b = random_mask(50, 40, 0.1, torch.Generator().manual_seed(1))
    c = random_mask(50, 40, 0.1, torch.Generator().manual_seed(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])
    k = row_count(0.1, 40)
    assert k == 4 and torch.equal(a[0], torch.arange(51) * k)
    rows = a[1].reshape(50, k)
    assert torch.equal(rows, rows.sort(dim=1).values) and (rows.diff(dim=1) > 0).all()


def test_the_mask_is_part_of_the_topology_not_of_the_run():
    spec = sparse_spec("chain", "auto")
    one, two = compile_topology(spec, seed=0), compile_topology(spec, seed=1)
    mask = lambda net: net.edges["h1->h2:forward"].col_indices  # noqa: E731
    assert torch.equal(mask(one), mask(two))
    assert not torch.equal(one.weight_of("h1->h2:forward"), two.weight_of("h1->h2:forward"))
    reseeded = loads_topology(_text("chain").replace("seed: 2", "seed: 5"), "chain.yaml")
    assert not torch.equal(mask(compile_topology(reseeded)), mask(one))


def _text(name: str) -> str:
    from tests.test_sparse import TOPOLOGIES

    return TOPOLOGIES[name].replace("BACKEND", "auto")


@pytest.mark.parametrize(
    ("source", "target", "radius"),
    [((6, 5), (6, 5), 1.5), ((8, 8), (4, 4), 2.0), ((12,), (5,), 1.0), ((4, 6), (6, 4), 1.1)],
)
def test_local_masks_connect_what_lies_within_the_radius(source, target, radius):
    crow, col = local_mask(source, target, radius)
    q = torch.cartesian_prod(*[torch.arange(s, dtype=torch.float64) for s in source])
    p = torch.cartesian_prod(*[torch.arange(t, dtype=torch.float64) for t in target])
    q, p = q.reshape(len(q), -1), p.reshape(len(p), -1)
    scale = torch.tensor([s / t for s, t in zip(source, target, strict=True)])
    centres = (p + 0.5) * scale - 0.5
    expected = ((centres[:, None] - q[None]) ** 2).sum(-1) <= radius**2 + 1e-9
    got = torch.zeros_like(expected)
    rows = torch.repeat_interleave(torch.arange(len(p)), crow.diff())
    got[rows, col] = True
    assert torch.equal(got, expected) and got.any(dim=1).all()
    if source == target:
        assert torch.equal(got, got.t())  # the same grid: symmetric wiring


def test_sparse_values_start_like_glorot_on_the_mask():
    block = SparseBlock.build(context(rows=6, cols=5, density=1.0))
    dense = glorot_uniform(6, 5, tensor_generator(0, "a->b:forward"))
    assert torch.equal(block.masked_dense(block.values), dense)  # density 1: the dense draw
    sparse = SparseBlock.build(context(rows=200, cols=100, density=0.05))
    bound = (6 / (sparse.nnz / 200 + sparse.nnz / 100)) ** 0.5
    assert 0.9 * bound < float(sparse.values.detach().abs().max()) <= bound


# ---------------------------------------------------------------------------- storage
def test_the_checkpoint_holds_the_mask_and_loads_under_any_backend(tmp_path):
    trained = compile_topology(sparse_spec("chain", "torch.sparse"), dtype=torch.float64)
    state = trained.state_dict()
    assert state["edges.h1->h2:forward.col_indices"].dtype == torch.int64
    assert "edges.h1->h2:forward.t_perm" not in state  # derived, not stored
    x = torch.rand(3, 12, dtype=torch.float64)
    for backend in ("dense", "auto"):
        other = compile_topology(sparse_spec("chain", backend), seed=9, dtype=torch.float64)
        other.load_state_dict(state)
        torch.testing.assert_close(other.input_drive(x), trained.input_drive(x))
        out = other.preactivation(1, other.input_drive(x), torch.zeros(3, 16, dtype=torch.float64))
        ref = trained.preactivation(
            1, trained.input_drive(x), torch.zeros(3, 16, dtype=torch.float64)
        )
        torch.testing.assert_close(out, ref)


def test_a_stored_mask_wins_over_the_compiled_one():
    net = compile_topology(sparse_spec("chain", "torch.sparse"), dtype=torch.float64)
    state = net.state_dict()
    block = net.edges["h1->h2:forward"]
    moved = (block.col_indices + 1) % 16
    rows = torch.repeat_interleave(torch.arange(16), block.crow_indices.diff())
    order = torch.argsort(rows * 16 + moved)
    state["edges.h1->h2:forward.col_indices"] = moved[order]
    state["edges.h1->h2:forward.values"] = block.values.detach()[order]
    net.load_state_dict(state)
    assert torch.equal(block.col_indices, moved[order])
    expected = torch.zeros(16, 16, dtype=torch.float64)
    expected[rows[order], moved[order]] = state["edges.h1->h2:forward.values"]
    assert torch.equal(block.masked_dense(block.values), expected)
    tied = net.block_of("h2->h1:feedback")
    assert torch.equal(tied.dense(), expected.t() * 0.2)


def test_a_state_dict_of_format_one_loads():
    """Before blocks owned their tensors the keys were weights.<edge>, fixed_<i> and
    readout_*; such a checkpoint still loads."""
    spec = loads_topology(_text("agt"), "agt.yaml")
    net = compile_topology(dense_twin(spec), dtype=torch.float64)
    fixed = [b.tensor for b in net.bindings.values() if b.tensor and not b.learned]
    legacy = {"readout_weight": net.readout_weight, "readout_feedback": net.readout_feedback}
    for key, binding in net.bindings.items():
        if binding.tensor is None:
            continue
        name = (
            f"fixed_{fixed.index(binding.tensor)}"
            if not binding.learned
            else (f"weights.{binding.tensor}")
        )
        legacy[name] = net.weight_of(key).detach()
    fresh = compile_topology(dense_twin(spec), seed=4, dtype=torch.float64)
    fresh.load_state_dict({k: v.clone() for k, v in legacy.items()})
    for key, value in net.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_dense_blocks_keep_the_parameter_order_of_format_one():
    """An optimizer state of format 1 maps onto the same tensors: W_out, the readout bias, the
    learned edges in declaration order, the hidden biases."""
    text = _text("agt").replace("size: 14}", "size: 14, bias: true}", 1)
    text = text.replace("feedback: random}", "feedback: random, bias: true}", 1)
    net = compile_topology(dense_twin(loads_topology(text, "agt.yaml")))
    names = [name for name, _ in net.named_parameters()]
    learned = [f"edges.{b.tensor}.weight" for b in net.learned_bindings()]
    assert names == ["head.block.weight", "head.bias.value", *learned, "biases.h1"]


# ---------------------------------------------------------------------------- dispatch
def test_auto_is_decided_in_one_place():
    low, high = dispatch.choose_plan("auto", 0.01, "cpu"), dispatch.choose_plan("auto", 0.9, "cpu")
    assert (low.backend, low.update) == ("torch.sparse", "sampled")
    assert (high.backend, high.update) == ("dense", "masked-dense")
    assert dispatch.choose_plan("auto", 0.01, "xpu") == low  # unmeasured devices: the CPU rule
    assert dispatch.choose_plan("dense", 0.01, "cpu").label == "dense"
    assert low.label == "auto: torch.sparse"


def test_torch_sparse_asked_for_and_missing_falls_back_with_one_line(monkeypatch, capsys):
    monkeypatch.setattr(dispatch, "torch_sparse_available", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        block = SparseBlock.build(context(backend="torch-sparse"))
        block.apply(operands()[0])
        block.apply(operands()[0])
    assert block.plan().backend == "torch.sparse"
    assert block.plan().label == "torch.sparse instead of torch-sparse"
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert "pip install 'topo-ep[sparse]'" in messages[0]


def test_compile_prints_kind_density_and_backend(tmp_path, capsys):
    path = tmp_path / "chain.yaml"
    path.write_text(_text("chain").replace("auto", "torch.sparse"), encoding="utf-8")
    assert main(["compile", str(path)]) == 0
    out = capsys.readouterr().out
    assert "h1->h2:forward               [sparse, 31.2%, torch.sparse]" in out
    assert "h2->h1:feedback              [sparse, 31.2%, torch.sparse]" in out
    assert "h2->h3:forward               [dense, 100%, dense]" in out
    assert "[sparse, 58.3%, torch.sparse]" in out.split("readout:")[1]


# ---------------------------------------------------------------------------- schema
@pytest.mark.parametrize(
    ("old", "new", "pattern"),
    [
        (
            "kind: sparse, density: 0.3",
            "kind: sprase, density: 0.3",
            r"chain\.yaml:12:44: edges\[1\]\.block\.kind: 'sprase' is not allowed; "
            r"expected one of dense, sparse, conv, pooled; did you mean 'sparse'",
        ),
        ("density: 0.3, seed: 2", "density: 3, seed: 2", r"block\.density: 3 is not a density"),
        ("density: 0.3, seed: 2", "dens: 0.3, seed: 2", r"'dens'.*did you mean 'density'"),
        ("density: 0.3, seed: 2", "seed: 2", r"edges\[1\]\.block: the required key 'density'"),
        ("radius: 1.5", "radius: 1.5, density: 0.2", r"'density' applies to pattern: random"),
        (
            "seed: 2, backend: auto",
            "seed: 2, backend: cuda",
            r"'cuda' is not allowed; expected one of auto, dense, torch\.sparse, torch-sparse",
        ),
        (
            "kind: feedback, gain: 0.2}",
            "kind: feedback, gain: 0.2, block: {kind: sparse, density: 0.5}}",
            r"edges\[2\]\.block: a tied feedback edge has no weights of its own",
        ),
        (
            "{name: h1, size: 16, shape: [4, 4]}",
            "{name: h1, size: 16, shape: [4, 5]}",
            r"layers\[0\]\.shape: shape \[4, 5\] holds 20 units but size is 16",
        ),
        (
            "{name: h1, size: 16, shape: [4, 4]}",
            "{name: h1, size: 16, shape: [2, 2, 4]}",
            r"pattern: local needs the two layers arranged in the same dimension, 1-D or 2-D",
        ),
    ],
)
def test_block_fields_are_validated_with_a_location(old, new, pattern):
    text = _text("chain")
    assert old in text
    with pytest.raises(TopologyError) as info:
        loads_topology(text.replace(old, new, 1), "chain.yaml")
    assert re.search(pattern, str(info.value)), str(info.value)


# ---------------------------------------------------------------------------- analysis
def test_the_dense_operator_is_refused_where_it_does_not_fit(monkeypatch):
    net = compile_topology(sparse_spec("chain", "torch.sparse"), dtype=torch.float64)
    radius = spectral_radius(net, method="exact")
    monkeypatch.setattr(compiler, "available_memory", lambda: net.hidden_operator_bytes())
    with pytest.raises(TopoEpError, match="use the matrix-free operator"):
        net.hidden_operator()
    assert abs(spectral_radius(net, method="arpack") - radius) < 1e-10


def test_a_sparse_network_trains_and_its_checkpoint_evaluates(tmp_path, capsys):
    path = tmp_path / "chain.yaml"
    text = _text("chain").replace(
        "size: 12, shape: [3, 4]}\nlayers", "size: 64, shape: [8, 8]}\nlayers"
    )
    text = text.replace("radius: 1.5", "radius: 2.5").replace("size: 5, block", "size: 10, block")
    text = text.replace("tolerance: 1e-13", "tolerance: 0")
    path.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    assert main(["train", str(path), "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    assert main(["evaluate", str(out / "checkpoint.pt")]) == 0
    assert "test acc" in capsys.readouterr().out
    spec = loads_topology(text, "chain.yaml")
    net = compile_topology(spec)
    optimizer = make_optimizer(net, spec)
    assert {id(p) for p in net.parameters()} == {
        id(p) for g in optimizer.param_groups for p in g["params"]
    }


def test_analyze_runs_on_a_sparse_topology(tmp_path):
    """The whole analysis (spectrum, Jacobian, Lyapunov, convergence, gradient flow, energy)
    through sparse blocks, exact (dense() operator) and by ARPACK on the matrix-free one."""
    path = tmp_path / "sparse.yaml"
    text = _text("chain").replace(
        "size: 12, shape: [3, 4]}\nlayers", "size: 64, shape: [8, 8]}\nlayers"
    )
    text = text.replace("radius: 1.5", "radius: 2.5").replace("size: 5, block", "size: 10, block")
    path.write_text(text, encoding="utf-8")
    out = tmp_path / "analysis"
    args = ["analyze", str(path), "--batch", "4", "--max-steps", "60", "--out", str(out)]
    assert main([*args, "--schedule", "sweep"]) == 0
    report = (out / "report.md").read_text("utf-8")
    assert "Has an energy" in report and "exact eigenvalues" in report


def test_a_state_dict_cast_to_float64_loads_and_a_corrupt_one_does_not():
    net = compile_topology(sparse_spec("chain", "torch.sparse"))
    state = net.state_dict()
    other = compile_topology(sparse_spec("chain", "torch.sparse"), dtype=torch.float64)
    other.load_state_dict({k: v.double() for k, v in state.items()})  # analyze's float64 copy
    block = other.edges["h1->h2:forward"]
    assert block.col_indices.dtype == torch.int64
    assert torch.equal(block.col_indices, net.edges["h1->h2:forward"].col_indices)
    bad = dict(state)
    bad["edges.h1->h2:forward.col_indices"] = state["edges.h1->h2:forward.col_indices"] + 0.5
    with pytest.raises(RuntimeError, match="expected integers"):
        other.load_state_dict(bad)
    bad = dict(state)
    bad["edges.h1->h2:forward.values"] = state["edges.h1->h2:forward.values"].to(torch.int64)
    with pytest.raises(RuntimeError, match="expected a floating-point tensor"):
        other.load_state_dict(bad)


def test_check_gradients_passes_on_the_shipped_sparse_topology(capsys):
    """EP's update against the implicit gradient, through the sparse block and its exact
    transpose, with the command's defaults (float64, contrast rule, symmetric nudge 1e-3)."""
    path = Path(__file__).resolve().parents[1] / "topologies" / "sparse_2x1024.yaml"
    assert main(["check-gradients", str(path)]) == 0
    out = capsys.readouterr().out
    assert "h1->h2:forward" in out and "passed" in out


def test_the_block_schema_is_checked_without_torch():
    """``topo-ep validate`` stays fast: the schema of every block kind loads without torch."""
    import subprocess
    import sys

    code = "import sys, topo_ep.loader, topo_ep.block_schema; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_schema_docs_list_every_block_kind():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "topology-schema.md").read_text("utf-8")
    table = docs.split("| `kind` | stores | options |", 1)[1].split("\n\n", 1)[0]
    listed = re.findall(r"^\| `([a-z-]+)`", table, re.M)
    assert listed == list(BLOCKS.names())
