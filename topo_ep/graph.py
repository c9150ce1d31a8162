"""Graph view of a topology and the graph questions asked about it.

:func:`to_graph` turns a :class:`~topo_ep.spec.TopologySpec` into a networkx ``MultiDiGraph``
(nodes: ``"input"``, the hidden layers, ``"readout"``; edges keyed by kind); :func:`from_graph`
goes back, so users can build a network in networkx and export it with
:func:`topo_ep.loader.dump_topology`. The queries (feedforward order, reachability, cycles,
update groups, energy balance) work on the spec directly.

Forward and skip edges ("forward kinds") define the feedforward direction; feedback edges point
back down. Validation guarantees the forward part is acyclic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import networkx as nx

from topo_ep.spec import INPUT, EdgeSpec, TopologySpec

#: Edge kinds that carry the input upwards.
FORWARD_KINDS = ("forward", "skip")
#: Name of the readout node in :func:`to_graph`.
READOUT = "readout"
#: Key of the readout edge in :func:`to_graph`.
READOUT_KIND = "readout"


def forward_edges(spec: TopologySpec) -> tuple[EdgeSpec, ...]:
    """Forward and skip edges, in declaration order."""
    return tuple(edge for edge in spec.edges if edge.kind in FORWARD_KINDS)


def feedback_edges(spec: TopologySpec) -> tuple[EdgeSpec, ...]:
    """Feedback edges (tied and random), in declaration order."""
    return tuple(edge for edge in spec.edges if edge.kind == "feedback")


def learned_edges(spec: TopologySpec) -> tuple[EdgeSpec, ...]:
    """Edges whose weights the optimizer updates."""
    return tuple(edge for edge in spec.edges if edge.learned)


def incoming(spec: TopologySpec, layer: str) -> tuple[EdgeSpec, ...]:
    """Edges that end at ``layer``, in declaration order."""
    return tuple(edge for edge in spec.edges if edge.target == layer)


def forward_digraph(layer_names: Iterable[str], edges: Iterable[EdgeSpec]) -> nx.DiGraph:
    """Directed graph of ``"input"`` and the layers with one arc per forward or skip edge."""
    digraph = nx.DiGraph()
    digraph.add_node(INPUT)
    digraph.add_nodes_from(layer_names)
    for edge in edges:
        if edge.kind in FORWARD_KINDS:
            digraph.add_edge(edge.source, edge.target)
    return digraph


def find_forward_cycle(
    layer_names: Iterable[str], edges: Sequence[EdgeSpec]
) -> list[EdgeSpec] | None:
    """A cycle of forward/skip edges, as the list of edges along it, or ``None``."""
    try:
        arcs = nx.find_cycle(forward_digraph(layer_names, edges))
    except nx.NetworkXNoCycle:
        return None
    cycle = []
    for source, target in arcs:
        for edge in edges:
            if edge.kind in FORWARD_KINDS and (edge.source, edge.target) == (source, target):
                cycle.append(edge)
                break
    return cycle


def reachable_from_input(spec: TopologySpec) -> set[str]:
    """Hidden layers reached from the input along forward and skip edges."""
    digraph = forward_digraph(spec.layer_names, spec.edges)
    return set(nx.descendants(digraph, INPUT))


def feedforward_order(spec: TopologySpec) -> list[str]:
    """Hidden layers in topological order of the forward and skip edges.

    Among layers whose order the edges leave open, declaration order decides.
    """
    digraph = forward_digraph(spec.layer_names, spec.edges)
    digraph.remove_node(INPUT)
    position = {name: index for index, name in enumerate(spec.layer_names)}
    return list(nx.lexicographical_topological_sort(digraph, key=position.__getitem__))


def neighbours(spec: TopologySpec) -> dict[str, set[str]]:
    """Hidden layers coupled to each hidden layer by an edge of any kind, either direction."""
    result: dict[str, set[str]] = {name: set() for name in spec.layer_names}
    for edge in spec.edges:
        if edge.source != INPUT:
            result[edge.source].add(edge.target)
            result[edge.target].add(edge.source)
    return result


def update_groups(spec: TopologySpec) -> list[list[str]]:
    """Colour the hidden layers into groups with no edge inside any group.

    Greedy colouring in feedforward order: each layer joins the first group that holds none of
    its neighbours. Layers of one group can be updated together (a block update); for a chain
    this is the even/odd split. Groups list layers in feedforward order.
    """
    links = neighbours(spec)
    groups: list[list[str]] = []
    for name in feedforward_order(spec):
        for group in groups:
            if not links[name].intersection(group):
                group.append(name)
                break
        else:
            groups.append([name])
    return groups


def energy_scales(spec: TopologySpec) -> dict[str, float] | None:
    """Scales c_k that make the coupling symmetric, or ``None`` when there are none.

    With u_k = c_k s_k the coupling between hidden layers is symmetric, and a Hopfield-type
    energy exists, when every forward or skip edge A->B (gain alpha) has a tied feedback partner
    B->A (gain beta) with (c_B / c_A)^2 = beta / alpha, consistently around every cycle, and no
    other feedback edge exists. For a chain c_{k+1} / c_k = sqrt(gain_k). Edges from the
    clamped input only add a bias and need no partner. Scales are normalised so that the first
    layer of each connected group in feedforward order has c = 1.
    """
    ratio: dict[tuple[str, str], float] = {}
    for edge in spec.edges:
        if edge.source == INPUT:
            continue
        if edge.kind == "feedback":
            if not edge.is_tied:
                return None
            continue
        try:
            partner = _tied_feedback(spec, edge)
        except KeyError:
            return None
        if edge.gain <= 0 or partner.gain <= 0:
            return None
        ratio[(edge.source, edge.target)] = math.sqrt(partner.gain / edge.gain)
    adjacency: dict[str, list[tuple[str, float]]] = {name: [] for name in spec.layer_names}
    for (source, target), value in ratio.items():
        adjacency[source].append((target, value))
        adjacency[target].append((source, 1.0 / value))
    scales: dict[str, float] = {}
    for root in feedforward_order(spec):
        if root in scales:
            continue
        scales[root] = 1.0
        stack = [root]
        while stack:
            here = stack.pop()
            for other, value in adjacency[here]:
                wanted = scales[here] * value
                if other not in scales:
                    scales[other] = wanted
                    stack.append(other)
                elif not math.isclose(scales[other], wanted, rel_tol=1e-9):
                    return None
    return scales


def is_balanced(spec: TopologySpec) -> bool:
    """Whether an energy function exists for the free dynamics (see :func:`energy_scales`)."""
    return energy_scales(spec) is not None


def _tied_feedback(spec: TopologySpec, edge: EdgeSpec) -> EdgeSpec:
    """The tied feedback edge that transposes ``edge``'s weights."""
    feedback = spec.edge(edge.target, edge.source, "feedback")
    if not feedback.is_tied or spec.tied_partner(feedback) != edge:
        raise KeyError(feedback.key)
    return feedback


def to_graph(spec: TopologySpec) -> nx.MultiDiGraph:
    """The spec as a networkx ``MultiDiGraph``.

    Nodes: ``"input"`` (``size``), each hidden layer (``size``, ``activation``, ``bias``) and
    ``"readout"`` (``size``, ``bias``, ``feedback``); every node has a ``role`` of ``input``,
    ``hidden`` or ``readout``. Edges are keyed by kind and carry ``gain``, ``feedback``,
    ``learned`` and ``init``; the readout edge has key ``"readout"``. ``graph.graph`` holds
    ``name``, ``description``, ``origin`` and ``edge_order`` (the ``(source, target, kind)``
    of every edge in declaration order, which :func:`from_graph` restores).
    """
    result = nx.MultiDiGraph(
        name=spec.name,
        description=spec.description,
        origin=spec.origin,
        edge_order=[(edge.source, edge.target, edge.kind) for edge in spec.edges],
    )
    result.add_node(INPUT, role="input", size=spec.input.size)
    for layer in spec.layers:
        result.add_node(
            layer.name,
            role="hidden",
            size=layer.size,
            activation=layer.activation,
            bias=layer.bias,
        )
    readout = spec.readout
    result.add_node(
        READOUT, role="readout", size=readout.size, bias=readout.bias, feedback=readout.feedback
    )
    for edge in spec.edges:
        result.add_edge(
            edge.source,
            edge.target,
            key=edge.kind,
            gain=edge.gain,
            feedback=edge.feedback,
            learned=edge.learned,
            init=edge.init,
        )
    result.add_edge(readout.source, READOUT, key=READOUT_KIND)
    return result


def _node_dict(attrs: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    return {key: attrs[key] for key in keys if key in attrs}


def from_graph(
    graph: nx.MultiDiGraph | nx.DiGraph,
    name: str | None = None,
    dynamics: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    description: str | None = None,
) -> TopologySpec:
    """Build a validated spec from a networkx graph.

    The graph needs a node ``"input"`` with a ``size``, hidden-layer nodes with a ``size``
    (optional ``activation``, ``bias``) and a node ``"readout"`` with a ``size`` and exactly one
    incoming edge from the layer it reads (optional ``feedback``, ``bias``). Every other edge is
    an :class:`~topo_ep.spec.EdgeSpec`: its kind is the edge key in a multigraph when the key is
    an edge kind, else the ``kind`` attribute, else ``forward``; ``gain``, ``feedback``,
    ``learned`` and ``init`` come from the attributes. Layers keep the graph's node order;
    edges follow ``graph.graph["edge_order"]`` where given, then the graph's edge order.
    ``graph.graph["origin"]`` becomes the spec's origin.

    Parameters
    ----------
    graph
        The network.
    name, description
        Topology name (default ``graph.graph["name"]``, else ``"graph"``) and description.
    dynamics, training
        Plain mappings as in the YAML ``dynamics:`` and ``training:`` blocks.

    Raises
    ------
    TopologyError
        As :func:`topo_ep.validate.spec_from_dict`, with fields of the equivalent YAML.
    """
    from topo_ep.validate import spec_from_dict

    data: dict[str, Any] = {
        "name": name if name is not None else graph.graph.get("name") or "graph",
    }
    text = description if description is not None else graph.graph.get("description")
    if text:
        data["description"] = text
    if INPUT in graph.nodes:
        data["input"] = _node_dict(graph.nodes[INPUT], ("size",))
    data["layers"] = [
        {"name": node, **_node_dict(attrs, ("size", "activation", "bias"))}
        for node, attrs in graph.nodes(data=True)
        if node not in (INPUT, READOUT)
    ]
    edges: list[dict[str, Any]] = []
    if READOUT in graph.nodes:
        readout = _node_dict(graph.nodes[READOUT], ("size", "feedback", "bias"))
        sources = list(graph.predecessors(READOUT))
        if len(sources) == 1:
            readout = {"from": sources[0], **readout}
        data["readout"] = readout
    multi = graph.is_multigraph()
    items = graph.edges(keys=True, data=True) if multi else graph.edges(data=True)
    for item in items:
        source, target, attrs = item[0], item[1], item[-1]
        if target == READOUT:
            continue
        key = item[2] if multi else None
        kind = key if isinstance(key, str) and key in ("forward", "skip", "feedback") else None
        edge = {"source": source, "target": target, "kind": kind or attrs.get("kind", "forward")}
        for field in ("gain", "feedback", "learned", "init"):
            if attrs.get(field) is not None:
                edge[field] = attrs[field]
        edges.append(edge)
    order = {tuple(item): index for index, item in enumerate(graph.graph.get("edge_order", ()))}
    edges.sort(key=lambda e: order.get((e["source"], e["target"], e["kind"]), len(order)))
    data["edges"] = edges
    if graph.graph.get("origin") is not None:
        data["origin"] = graph.graph["origin"]
    if dynamics is not None:
        data["dynamics"] = dict(dynamics)
    if training is not None:
        data["training"] = dict(training)
    return spec_from_dict(data, filename="<graph>")
