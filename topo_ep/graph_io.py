"""networkx import and export of a topology.

:func:`to_graph` turns a :class:`~topo_ep.spec.TopologySpec` into a networkx ``MultiDiGraph``
(nodes: ``"input"``, the hidden layers, ``"readout"``; edges keyed by kind); :func:`from_graph`
goes back through the schema, so users can build a network in networkx and export it with
:func:`topo_ep.loader.dump_topology`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import networkx as nx

from topo_ep.graph import READOUT, READOUT_KIND
from topo_ep.spec import (
    EDGE_KINDS,
    INPUT,
    RATE_KEYS,
    EdgeSpec,
    LayerSpec,
    ReadoutSpec,
    TopologySpec,
)
from topo_ep.validate import spec_from_dict


def to_graph(spec: TopologySpec) -> nx.MultiDiGraph:
    """The spec as a networkx ``MultiDiGraph``.

    Nodes: ``"input"`` (``size``, ``mean``, ``std``, ``dataset``), each hidden layer
    (``size``, ``activation``, ``bias``) and ``"readout"`` (``size``, ``bias``, ``feedback``);
    every node has a ``role`` of ``input``, ``hidden`` or ``readout``, and a ``shape`` (list),
    ``lr``, ``weight_decay``, ``bias_init`` and (the readout) ``init`` where one is declared.
    Edges are keyed by kind and carry ``gain``, ``feedback``, ``learned`` and ``init``, and
    ``block`` (the YAML mapping) where it is not the plain dense block; the readout edge has
    key ``"readout"`` (its ``block`` likewise). ``graph.graph`` holds ``name``,
    ``description``, ``origin`` and ``edge_order`` (the ``(source, target, kind)`` of every
    edge in declaration order, which :func:`from_graph` restores).
    """
    result = nx.MultiDiGraph(
        name=spec.name,
        description=spec.description,
        origin=spec.origin,
        edge_order=[(edge.source, edge.target, edge.kind) for edge in spec.edges],
    )
    result.add_node(
        INPUT,
        role="input",
        size=spec.input.size,
        mean=spec.input.mean,
        std=spec.input.std,
        dataset=spec.input.dataset,
    )
    if spec.input.shape is not None:
        result.nodes[INPUT]["shape"] = list(spec.input.shape)
    for layer in spec.layers:
        result.add_node(
            layer.name,
            role="hidden",
            size=layer.size,
            activation=layer.activation,
            bias=layer.bias,
        )
        if layer.shape is not None:
            result.nodes[layer.name]["shape"] = list(layer.shape)
        result.nodes[layer.name].update(_rates_set(layer), **_inits_set(layer))
    readout = spec.readout
    result.add_node(
        READOUT,
        role="readout",
        size=readout.size,
        bias=readout.bias,
        feedback=readout.feedback,
        **_rates_set(readout),
        **_inits_set(readout),
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
            **({} if edge.block.is_default else {"block": edge.block.to_dict()}),
            **_rates_set(edge),
        )
    block = {} if readout.block.is_default else {"block": readout.block.to_dict()}
    result.add_edge(readout.source, READOUT, key=READOUT_KIND, **block)
    return result


def _rates_set(item: EdgeSpec | LayerSpec | ReadoutSpec) -> dict[str, float]:
    """The ``lr`` and ``weight_decay`` that ``item`` sets (those left to the training
    omitted)."""
    values = {key: getattr(item, key) for key in RATE_KEYS}
    return {key: value for key, value in values.items() if value is not None}


def _inits_set(item: LayerSpec | ReadoutSpec) -> dict[str, str]:
    """The initial distributions that ``item`` declares (the defaults omitted): a layer's or
    the readout's ``bias_init``, the readout's ``init``."""
    declared = {"bias_init": (item.bias_init, "zeros")}
    if isinstance(item, ReadoutSpec):
        declared["init"] = (item.init, "glorot_uniform")
    return {key: value for key, (value, default) in declared.items() if value != default}


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

    The graph needs a node ``"input"`` with a ``size`` (optional ``mean``, ``std``), hidden-layer
    nodes with a ``size`` (optional ``activation``, ``bias``, ``lr``, ``weight_decay``) and a
    node ``"readout"`` with a ``size`` and exactly one incoming edge from the layer it reads
    (optional ``feedback``, ``bias``, ``lr``, ``weight_decay``). Every other edge is an
    :class:`~topo_ep.spec.EdgeSpec`: its kind is the edge key in a
    multigraph when the key is an edge kind, else the ``kind`` attribute, else ``forward``;
    ``gain``, ``feedback``, ``learned``, ``init``, ``block``, ``lr`` and ``weight_decay`` come
    from the attributes. Layers keep the
    graph's node order; edges follow ``graph.graph["edge_order"]`` where given, then the graph's
    edge order. ``graph.graph["origin"]`` becomes the spec's origin.

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
    data: dict[str, Any] = {
        "name": name if name is not None else graph.graph.get("name") or "graph",
    }
    text = description if description is not None else graph.graph.get("description")
    if text:
        data["description"] = text
    if INPUT in graph.nodes:
        attrs = graph.nodes[INPUT]
        data["input"] = _node_dict(attrs, ("size", "mean", "std", "shape"))
        if attrs.get("dataset") is not None:
            data["input"]["dataset"] = attrs["dataset"]
    data["layers"] = [
        {
            "name": node,
            **_node_dict(attrs, ("size", "activation", "bias", "bias_init", "shape", *RATE_KEYS)),
        }
        for node, attrs in graph.nodes(data=True)
        if node not in (INPUT, READOUT)
    ]
    edges: list[dict[str, Any]] = []
    if READOUT in graph.nodes:
        readout = _node_dict(
            graph.nodes[READOUT], ("size", "feedback", "bias", "bias_init", "init", *RATE_KEYS)
        )
        sources = list(graph.predecessors(READOUT))
        if len(sources) == 1:
            readout = {"from": sources[0], **readout}
            found = graph.get_edge_data(sources[0], READOUT)
            attrs = next(iter(found.values()), {}) if graph.is_multigraph() else found
            if attrs.get("block") is not None:
                readout["block"] = attrs["block"]
        data["readout"] = readout
    multi = graph.is_multigraph()
    items = graph.edges(keys=True, data=True) if multi else graph.edges(data=True)
    for item in items:
        source, target, attrs = item[0], item[1], item[-1]
        if target == READOUT:
            continue
        key = item[2] if multi else None
        kind = key if isinstance(key, str) and key in EDGE_KINDS else None
        edge = {"source": source, "target": target, "kind": kind or attrs.get("kind", "forward")}
        for field in ("gain", "feedback", "learned", "init", "block", *RATE_KEYS):
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
