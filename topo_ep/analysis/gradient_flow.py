"""Gradient flow: how the EP error signal reaches each layer and edge.

Per layer k, the nudged-minus-free deviation

    |s^n_k - s^0_k|   (RMS over units and batch, and the batch mean of the per-sample L2 norm),

with s^0 the free state and s^n the (first) nudged state of the EP settings of the topology.

Per learned edge W (src -> dst), EP's gradient estimate (what topo-ep writes into ``.grad``)

    G_EP = -dW / (nudge * batch)

is compared with the implicit gradient dL/dW of the recurrent net at its free fixed point
(:func:`topo_ep.analysis.backends.implicit_gradient`) and with feedforward BP's dL/dW (feedback
edges removed, :func:`topo_ep.learn.bp.feedforward_state`): norms, cosines and the norm ratio
||G_EP|| / ||dL/dW||. Beside them stands the predicted product-of-gains factor of the edge's
target layer j: the EP signal reaching layer j is scaled by it, so the norm ratio should be
close to it (DESIGN: 0.1000 and 1.0000 on a 2-layer chain at gain 0.1).

- Balanced topologies: c_top^2 / c_j^2 with c the energy scales (exact theory for the
  symmetric contrast rule; for a chain, the product of the feedback gains between j and the
  top layer).
- Others: the largest product of gains along any path of hidden-to-hidden edges from the top
  layer to j (the strongest route: feedback edges carry the signal down, forward and skip
  edges, gain 1, carry it up again; skips shorten it). When some cycle has a gain product
  above 1 no attenuation is predicted (factor 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import networkx as nx
import numpy as np
from torch import Tensor

from topo_ep.analysis.backends import implicit_gradient
from topo_ep.balance import gain_factors
from topo_ep.compiler import CompiledNetwork
from topo_ep.errors import DivergenceError
from topo_ep.learn.bp import bp_gradients
from topo_ep.learn.ep import EquilibriumPropagation
from topo_ep.params import ParamKey
from topo_ep.spec import INPUT, TopologySpec


@dataclass(frozen=True)
class LayerFlow:
    """The EP signal in one hidden layer.

    Attributes
    ----------
    layer
        Layer name.
    position
        Position in feedforward order (0 = first hidden layer).
    rms
        RMS of s^n - s^0 over units and batch.
    mean_l2
        Batch mean of ||s^n_k - s^0_k||_2.
    predicted_factor
        Product-of-gains factor from the top layer to this layer.
    """

    layer: str
    position: int
    rms: float
    mean_l2: float
    predicted_factor: float


@dataclass(frozen=True)
class EdgeFlow:
    """EP's gradient estimate on one learned edge against the implicit gradient and BP.

    Attributes
    ----------
    edge
        Edge key ``source->target:kind``.
    target
        The edge's target layer j.
    ep_norm, implicit_norm, bp_norm
        Frobenius norms of G_EP, of the implicit dL/dW and of feedforward BP's dL/dW.
    cos_implicit, cos_bp
        Cosine of G_EP with the implicit gradient and with BP's.
    cos_implicit_bp
        Cosine of the implicit gradient with BP's (how far the recurrent net's gradient is from
        the feedforward one).
    norm_ratio
        ||G_EP|| / ||implicit dL/dW||.
    predicted_factor
        The product-of-gains factor of layer j.
    """

    edge: str
    target: str
    ep_norm: float
    implicit_norm: float
    bp_norm: float
    cos_implicit: float
    cos_bp: float
    cos_implicit_bp: float
    norm_ratio: float
    predicted_factor: float


@dataclass(frozen=True)
class GradientFlow:
    """Gradient flow of one batch (see the module docstring).

    Attributes
    ----------
    layers, edges
        Per-layer and per-edge rows, in feedforward and declaration order.
    factor_basis
        ``balance`` (c_top^2 / c_j^2 of a balanced topology) or ``strongest path``.
    nudge, rule, nudging
        The EP settings used.
    free_steps, free_converged
        The EP free phase as run.
    top
        The readout's source layer.
    implicit_note
        Empty, or why the implicit gradient is missing (e.g. no contracting fixed point).
    """

    layers: tuple[LayerFlow, ...]
    edges: tuple[EdgeFlow, ...]
    factor_basis: str
    nudge: float
    rule: str
    nudging: str
    free_steps: int
    free_converged: bool
    top: str
    implicit_note: str = ""


def predicted_factors(spec: TopologySpec) -> tuple[dict[str, float], str]:
    """Product-of-gains factor of every hidden layer and its basis (module docstring)."""
    top = spec.readout.source
    balanced = gain_factors(spec)
    if balanced is not None:
        return dict(balanced), "balance"
    graph = nx.DiGraph()
    graph.add_nodes_from(spec.layer_names)
    for edge in spec.edges:
        if edge.source == INPUT or edge.gain <= 0:
            continue
        weight = -math.log(edge.gain)
        if graph.has_edge(edge.source, edge.target):
            weight = min(weight, graph[edge.source][edge.target]["weight"])
        graph.add_edge(edge.source, edge.target, weight=weight)
    try:
        lengths = nx.single_source_bellman_ford_path_length(graph, top, weight="weight")
    except nx.NetworkXUnbounded:  # a cycle with gain product > 1
        reach = nx.descendants(graph, top) | {top}
        return {name: float(name in reach) for name in spec.layer_names}, "strongest path"
    return {
        name: math.exp(-lengths[name]) if name in lengths else 0.0 for name in spec.layer_names
    }, "strongest path"


def _cosine(a: Tensor, b: Tensor) -> float:
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 or nb == 0.0:
        return float("nan")
    return float((a * b).sum()) / (na * nb)


def ep_settings(spec: TopologySpec) -> EquilibriumPropagation:
    """The EP learner of the topology (gain compensation, a per-edge rescaling, left out)."""
    if spec.training.gain_compensated:
        spec = replace(spec, training=replace(spec.training, gain_compensated=False))
    return EquilibriumPropagation.from_spec(spec)


def gradient_flow(
    net: CompiledNetwork, x: Tensor, y: Tensor, *, implicit: bool = True
) -> GradientFlow:
    """Per-layer EP signal and per-edge EP gradient estimate against implicit and BP gradients.

    Parameters
    ----------
    net
        The compiled network (its ``.grad`` fields are not touched).
    x, y
        A batch of inputs and labels.
    implicit
        Compute the implicit gradient (needs a contracting free fixed point).
    """
    spec = net.spec
    x = x.to(device=net.device, dtype=net.dtype)
    y = y.to(net.device)
    method = ep_settings(spec)
    estimate = method.estimate(net, x, y)
    phases = estimate.phases
    factors, basis = predicted_factors(spec)
    position = {k: i for i, k in enumerate(net.order)}
    layers = []
    for k, name in enumerate(net.layout.names):
        diff = (phases.nudged[0][k] - phases.free[k]).double()
        layers.append(
            LayerFlow(
                name,
                position[k],
                float(diff.pow(2).mean().sqrt()),
                float(diff.norm(dim=-1).mean()),
                factors[name],
            )
        )
    layers.sort(key=lambda row: row.position)
    note = ""
    reference: dict[str, Tensor] | None = None
    if implicit:
        try:
            reference = implicit_gradient(net, x, y)
        except (ArithmeticError, DivergenceError) as exc:
            note = f"implicit gradient unavailable: {exc}"
    bp, _ = bp_gradients(net, x, y)
    edges = []
    for binding in net.learned_bindings():
        key = ParamKey.edge(binding.edge)
        ep = estimate.grads[key].double()
        true = reference[key].double() if reference is not None else None
        base = bp[key].double()
        nan = float("nan")
        true_norm = float(true.norm()) if true is not None else nan
        edges.append(
            EdgeFlow(
                edge=binding.edge.key,
                target=binding.edge.target,
                ep_norm=float(ep.norm()),
                implicit_norm=true_norm,
                bp_norm=float(base.norm()),
                cos_implicit=_cosine(ep, true) if true is not None else nan,
                cos_bp=_cosine(ep, base),
                cos_implicit_bp=_cosine(true, base) if true is not None else nan,
                norm_ratio=float(ep.norm()) / true_norm if true_norm > 0 else nan,
                predicted_factor=factors[binding.edge.target],
            )
        )
    return GradientFlow(
        tuple(layers),
        tuple(edges),
        basis,
        method.nudge,
        method.rule,
        method.nudging,
        phases.free_stats.steps,
        phases.free_stats.converged,
        spec.readout.source,
        note,
    )


def summary(flow: GradientFlow) -> dict[str, float]:
    """Headline numbers: signal at the bottom over the top, worst and median EP cosines."""
    top = next(row.rms for row in flow.layers if row.layer == flow.top)
    bottom = flow.layers[0].rms
    cos = np.array([row.cos_implicit for row in flow.edges], dtype=float)
    finite = cos[np.isfinite(cos)]
    return {
        "signal_bottom_over_top": bottom / top if top > 0 else float("nan"),
        "min_cos_implicit": float(finite.min()) if finite.size else float("nan"),
        "median_cos_implicit": float(np.median(finite)) if finite.size else float("nan"),
    }
