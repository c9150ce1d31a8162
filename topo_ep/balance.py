"""Energy balance of a topology and the gain factors that follow from it.

A topology with tied feedback whose gains balance around every cycle of the layer graph has a
Hopfield-type energy: with u_k = c_k s_k the coupling becomes symmetric
(:func:`analyse_balance`). The scales c_k then give the factor by which EP's update of an edge
into layer j is the true gradient scaled, c_top^2 / c_j^2 (:func:`gain_factors`). Both are
spec-level theory: the compiled network computes them once (:attr:`topo_ep.compiler.
CompiledNetwork.balance`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from topo_ep.block_schema import state_dependence
from topo_ep.errors import TopoEpError
from topo_ep.graph import feedforward_order
from topo_ep.spec import INPUT, TopologySpec


@dataclass(frozen=True)
class Coupling:
    """One weight tensor W between two hidden layers and the gain it carries each way.

    W has shape (size of ``target``, size of ``source``). It adds ``up * W s_source`` to
    h_target and ``down * W^T s_target`` to h_source; ``down`` is the gain of the tied feedback
    edge that transposes W, or 0 when nothing does (random feedback, missing feedback).

    Attributes
    ----------
    source, target
        The layers W maps from and to.
    up, down
        Gains of W into ``target`` and of W^T into ``source``.
    edges
        Keys of the declared edges that use W (the owner first, then its tied feedback).
    """

    source: str
    target: str
    up: float
    down: float
    edges: tuple[str, ...]

    def into(self, layer: str) -> float:
        """Gain with which this coupling carries the other layer into ``layer``."""
        return self.up if layer == self.target else self.down


def couplings(spec: TopologySpec) -> tuple[Coupling, ...]:
    """Every weight tensor between hidden layers, in declaration order of its owning edge.

    Edges from the clamped input only add a constant drive and are not couplings.
    """
    result = []
    for edge in spec.edges:
        if edge.source == INPUT or edge.is_tied:
            continue
        down, keys = 0.0, [edge.key]
        for other in spec.edges:
            reverse = (other.source, other.target) == (edge.target, edge.source)
            if other.is_tied and reverse and spec.tied_partner(other) == edge:
                down = other.gain
                keys.append(other.key)
        result.append(Coupling(edge.source, edge.target, edge.gain, down, tuple(keys)))
    return tuple(result)


@dataclass(frozen=True)
class Balance:
    """Whether a topology has a Hopfield-type energy, and why (see :func:`analyse_balance`).

    Attributes
    ----------
    balanced
        An energy exists for every value of the weights.
    scales
        c_k per hidden layer when balanced (the first layer of each connected part, in
        feedforward order, has c = 1), else ``None``.
    breaking_cycle
        When not balanced: the layers of a cycle of the layer graph around which the gains do
        not balance, in order (the cycle closes from the last back to the first); two layers
        for a one-way coupling. ``None`` when balanced.
    reason
        One sentence a user can read.
    mismatch
        Product of the gains going round ``breaking_cycle`` in its order over the product
        going round the other way (1 would balance; ``inf`` or 0 for a one-way coupling).
    edges
        Keys of the declared edges along ``breaking_cycle``.
    cycles
        Number of independent cycles checked (the cycle rank of the coupling multigraph).
    """

    balanced: bool
    scales: dict[str, float] | None
    breaking_cycle: list[str] | None
    reason: str
    mismatch: float | None = None
    edges: tuple[str, ...] = ()
    cycles: int = 0


def analyse_balance(spec: TopologySpec, rel_tol: float = 1e-9) -> Balance:
    """Decide whether the free dynamics have an energy, and name what breaks it if not.

    Write the dynamics as s_k = rho_k(h_k) with h_k = sum_j M_kj s_j + d_k. An energy

        E(s) = sum_k w_k [sum_i G_k(s_ki) - d_k . s_k] - 1/2 sum_{k != j} w_k s_k . M_kj s_j,

    with G_k' = rho_k^{-1} and weights w_k = c_k^2 > 0, has dE/ds_k = w_k (rho_k^{-1}(s_k) -
    h_k), so that the group updates of a colouring minimise it exactly, if and only if
    w_k M_kj = w_j M_jk^T for every pair of layers. For every value of the weights this holds
    exactly when each :class:`Coupling` W (source A, target B) satisfies

        w_B * up = w_A * down.

    A coupling whose block depends on the state (a max pooling: :func:`~topo_ep.block_schema.
    state_dependence`) is no fixed M_kj at all, so no such energy exists.

    So a coupling with both gains zero is no coupling at all; a coupling with exactly one
    zero gain (no tied feedback, random feedback, or a zero feedback or forward gain) is
    one-way: the dynamics are feedforward across it and no energy exists. Couplings with both
    gains positive fix w_B / w_A = down / up; an energy exists when these ratios agree around
    every cycle, i.e. (Kolmogorov's criterion) the gains multiply to the same product going
    round each cycle either way. The check builds a spanning forest of the
    coupling *multigraph* (parallel couplings kept, so 2-cycles are not hidden; forward edges
    enter the forest before skips) and tests each non-tree coupling; their fundamental cycles
    form a cycle basis, and the ratios are multiplicative, so this covers every cycle.

    Parameters
    ----------
    spec
        The topology.
    rel_tol
        Relative tolerance on the ratios.

    Returns
    -------
    Balance
        The verdict, the scales c_k = sqrt(w_k) or the cycle that breaks the balance.
    """
    links = couplings(spec)
    for link in links:
        why = _state_dependence(spec, link)
        if why is not None:
            reason = (
                f"no energy: {link.edges[0]} {why}, so the coupling between {link.source} and "
                f"{link.target} is not a fixed linear map (state-dependent pooling)"
            )
            return Balance(False, None, [link.source, link.target], reason, None, link.edges)
    for link in links:
        if (link.up > 0) != (link.down > 0):
            return _one_way(spec, link)
    # Spanning forest of the coupling multigraph, forward couplings first so that skips close
    # the cycles (and get named as the edges to fix); parallel couplings stay separate.
    kind = {edge.key: edge.kind for edge in spec.edges}
    active = [i for i, link in enumerate(links) if link.up > 0]
    active.sort(key=lambda i: kind[links[i].edges[0]] != "forward")
    component = {name: name for name in spec.layer_names}

    def find(name: str) -> str:
        while component[name] != name:
            component[name] = component[component[name]]
            name = component[name]
        return name

    tree: set[int] = set()
    adjacency: dict[str, list[tuple[str, int]]] = {name: [] for name in spec.layer_names}
    for index in active:
        link = links[index]
        a, b = find(link.source), find(link.target)
        if a != b:
            component[a] = b
            tree.add(index)
            adjacency[link.source].append((link.target, index))
            adjacency[link.target].append((link.source, index))
    weights: dict[str, float] = {}
    parent: dict[str, tuple[str, int] | None] = {}
    for root in feedforward_order(spec):
        if root in weights:
            continue
        weights[root], parent[root] = 1.0, None
        queue = deque([root])
        while queue:
            here = queue.popleft()
            for there, index in adjacency[here]:
                if there in weights:
                    continue
                link = links[index]
                weights[there] = weights[here] * link.into(here) / link.into(there)
                parent[there] = (here, index)
                queue.append(there)
    cycles = 0
    for index, link in enumerate(links):
        if link.up <= 0 or index in tree:
            continue
        cycles += 1
        wanted = weights[link.source] * link.down / link.up
        if not math.isclose(weights[link.target], wanted, rel_tol=rel_tol):
            return _unbalanced_cycle(spec, links, parent, weights, index)
    scales = {name: math.sqrt(weights[name]) for name in spec.layer_names}
    if not links:
        reason = "balanced: no couplings between hidden layers"
    elif cycles == 0:
        reason = "balanced: every coupling is tied and the layer graph has no cycles"
    else:
        reason = (
            "balanced: every coupling is tied and the gains balance around all "
            f"{cycles} independent cycle{'s' if cycles != 1 else ''}"
        )
    return Balance(True, scales, None, reason, None, (), cycles)


def _state_dependence(spec: TopologySpec, link: Coupling) -> str | None:
    """Why the owning edge of ``link`` depends on the state, or ``None``."""
    owner = next(edge for edge in spec.edges if edge.key == link.edges[0])
    return state_dependence(owner.block)


def state_dependent_couplings(spec: TopologySpec) -> tuple[str, ...]:
    """One phrase per coupling between hidden layers whose block depends on the state (a max
    pooling), ``"<edge key> <why>"``; empty when every coupling is a fixed linear map. Then
    there is no hidden operator M: no spectrum, no fixed-point Jacobian ``diag(rho') M``."""
    return tuple(
        f"{link.edges[0]} {why}"
        for link in couplings(spec)
        if (why := _state_dependence(spec, link)) is not None
    )


def _one_way(spec: TopologySpec, link: Coupling) -> Balance:
    owner = link.edges[0]
    if link.up > 0:
        if len(link.edges) > 1:
            why = f"its feedback gain is 0 ({link.edges[1]})"
        else:
            random = [
                edge.key
                for edge in spec.edges
                if edge.kind == "feedback"
                and not edge.is_tied
                and (edge.source, edge.target) == (link.target, link.source)
            ]
            why = "no tied feedback edge transposes its weights" + (
                f" ({random[0]} is random feedback, a matrix of its own)" if random else ""
            )
        mismatch = math.inf
        text = f"{owner} carries {link.source} into {link.target} (gain {link.up:g}), but {why}"
    else:
        mismatch = 0.0
        text = (
            f"{link.edges[1]} carries {link.target} into {link.source} "
            f"(gain {link.down:g}), but {owner} has gain 0"
        )
    reason = (
        f"no energy: {text}, so the coupling between {link.source} and {link.target} is "
        "one-way (feedforward across it) and cannot be made symmetric"
    )
    return Balance(False, None, [link.source, link.target], reason, mismatch, link.edges)


def _tree_path(parent: dict[str, tuple[str, int] | None], node: str) -> list[tuple[str, int]]:
    """(node, coupling index to its parent) from ``node`` up to its root (index -1 there)."""
    path = []
    while True:
        step = parent[node]
        if step is None:
            path.append((node, -1))
            return path
        path.append((node, step[1]))
        node = step[0]


def _unbalanced_cycle(
    spec: TopologySpec,
    links: Sequence[Coupling],
    parent: dict[str, tuple[str, int] | None],
    weights: Mapping[str, float],
    closing: int,
) -> Balance:
    """The fundamental cycle of non-tree coupling ``closing``, oriented and described."""
    link = links[closing]
    up_path = _tree_path(parent, link.source)
    down_path = _tree_path(parent, link.target)
    on_down = {node: i for i, (node, _) in enumerate(down_path)}
    meet = next(i for i, (node, _) in enumerate(up_path) if node in on_down)
    # source -> ... -> lca (tree), lca -> ... -> target (tree), target -> source (closing)
    nodes = [node for node, _ in up_path[: meet + 1]]
    steps = [index for _, index in up_path[:meet]]
    back = down_path[: on_down[up_path[meet][0]]]
    nodes += [node for node, _ in reversed(back)]
    steps += [index for _, index in reversed(back)]
    steps.append(closing)
    # steps[i] joins nodes[i] and nodes[i + 1] (cyclically). Orient: start at the earliest
    # layer in feedforward order and go first towards its earlier neighbour.
    rank = {name: i for i, name in enumerate(feedforward_order(spec))}
    start = min(range(len(nodes)), key=lambda i: rank[nodes[i]])
    nodes = nodes[start:] + nodes[:start]
    steps = steps[start:] + steps[:start]
    if len(nodes) > 2 and rank[nodes[-1]] < rank[nodes[1]]:
        nodes = [nodes[0]] + nodes[:0:-1]
        steps = steps[::-1]
    one_way, other_way = [], []
    for i, index in enumerate(steps):
        here, there = nodes[i], nodes[(i + 1) % len(nodes)]
        one_way.append(links[index].into(there))
        other_way.append(links[index].into(here))
    forward_product, backward_product = math.prod(one_way), math.prod(other_way)
    loop = " -> ".join(nodes + [nodes[0]])
    reason = (
        f"no energy: the gains do not balance around the cycle {loop}: going round it in this "
        f"order they multiply to {forward_product:.6g} ({' * '.join(f'{g:g}' for g in one_way)}), "
        f"the other way round to {backward_product:.6g} "
        f"({' * '.join(f'{g:g}' for g in reversed(other_way))}); they must be equal"
    )
    if len(link.edges) > 1:
        needed = link.up * weights[link.target] / weights[link.source]
        reason += f" (e.g. gain {needed:.6g} on {link.edges[1]} would balance it)"
    edges = tuple(key for index in steps for key in links[index].edges)
    return Balance(False, None, nodes, reason, forward_product / backward_product, edges)


def energy_scales(spec: TopologySpec) -> dict[str, float] | None:
    """Scales c_k that make the coupling symmetric, or ``None`` when there are none.

    With u_k = c_k s_k the coupling between hidden layers is symmetric, and a Hopfield-type
    energy exists (see :func:`analyse_balance`). For a chain with forward gain 1,
    c_{k+1} / c_k = sqrt(gain_k). The first layer of each connected part, in feedforward
    order, has c = 1.
    """
    return analyse_balance(spec).scales


def is_balanced(spec: TopologySpec) -> bool:
    """Whether an energy function exists for the free dynamics (see :func:`analyse_balance`)."""
    return analyse_balance(spec).balanced


def no_energy_reason(spec: TopologySpec) -> str | None:
    """Why the topology has no energy (the sentence of :func:`analyse_balance`,
    which names the one-way coupling or the cycle that breaks the balance), or ``None``."""
    balance = analyse_balance(spec)
    return None if balance.balanced else balance.reason


def gain_factors(spec: TopologySpec) -> dict[str, float] | None:
    """Predicted ratio |EP update| / |dL/dW| per hidden layer j: c_top^2 / c_j^2.

    With u_k = c_k s_k the balanced coupling is symmetric, a Hopfield energy exists, and the EP
    theorem gives EP -> (c_top^2 / c_j^2) dL/dW as the nudge goes to 0 for every edge (and bias)
    into layer j. For a chain with forward gains 1 it is the product of the feedback gains
    between j and the top hidden layer. ``None`` when the topology has no energy (see
    :func:`no_energy_reason`).
    """
    scales = analyse_balance(spec).scales
    if scales is None:
        return None
    top = scales[spec.readout.source]
    return {name: (top / c) ** 2 for name, c in scales.items()}


def require_gain_factors(spec: TopologySpec) -> dict[str, float]:
    """:func:`gain_factors`, or a :class:`~topo_ep.errors.TopoEpError` saying why there are none."""
    factors = gain_factors(spec)
    if factors is None:
        raise TopoEpError(
            f"gain compensation needs an energy; topology {spec.name!r}: "
            f"{no_energy_reason(spec)}. Without an energy the EP update is not a rescaled "
            "gradient and no per-edge factor exists; train without gain_compensated"
        )
    return factors
