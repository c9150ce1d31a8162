"""The structural questions asked about a topology's layer graph.

Feedforward order, reachability, forward cycles, neighbours and update groups, answered on the
spec directly. The energy balance lives in :mod:`topo_ep.balance`, the networkx import and
export in :mod:`topo_ep.graph_io`.

Forward and skip edges ("forward kinds") define the feedforward direction; feedback edges point
back down. Validation guarantees the forward part is acyclic.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

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


def layer_graph(spec: TopologySpec) -> nx.Graph:
    """Undirected simple graph of the hidden layers, one edge per coupled pair (any kind)."""
    result = nx.Graph()
    result.add_nodes_from(spec.layer_names)
    for edge in spec.edges:
        if edge.source != INPUT:
            result.add_edge(edge.source, edge.target)
    return result


def update_groups(spec: TopologySpec) -> list[list[str]]:
    """Colour the hidden layers into groups with no edge inside any group.

    A proper colouring of :func:`layer_graph` (networkx ``greedy_color`` visiting the layers in
    feedforward order: each layer takes the first colour none of its neighbours has). Layers of
    one group share no edge of any kind, so they can be updated together; on a balanced
    topology each group update then minimises the energy exactly (see
    :mod:`topo_ep.energy`). For a chain this is the even/odd split; a skip between two layers
    of the same parity moves one of them to another group. Groups are listed by colour and
    list their layers in feedforward order.
    """
    order = feedforward_order(spec)
    colours = nx.greedy_color(layer_graph(spec), strategy=lambda _graph, _colours: iter(order))
    groups: list[list[str]] = [[] for _ in range(max(colours.values(), default=-1) + 1)]
    for name in order:
        groups[colours[name]].append(name)
    return groups
