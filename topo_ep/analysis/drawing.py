"""A picture of the topology graph: layers in feedforward order, edges by kind, gains.

Nodes: the input, the hidden layers (labelled with their size) and the readout, left to right
in feedforward order. Edges: forward (straight, black), skip (arc above, blue), tied feedback
(arc below, red, dashed) and random feedback (arc below, orange, dotted); the legend gives the
gains of each kind.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import networkx as nx
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from topo_ep.graph import READOUT, feedforward_order
from topo_ep.graph_io import to_graph
from topo_ep.spec import INPUT, TopologySpec

#: Drawing style per edge class: (colour, line style, arc radius).
STYLES = {
    "forward": ("black", "solid", 0.0),
    "skip": ("tab:blue", "solid", -0.35),
    "feedback (tied)": ("tab:red", "dashed", -0.3),
    "feedback (random)": ("tab:orange", "dotted", -0.3),
    "readout": ("grey", "solid", 0.0),
}


def edge_class(kind: str, feedback: str | None) -> str:
    """The drawing class of an edge: its kind, with the feedback mode for feedback edges."""
    if kind == "feedback":
        return f"feedback ({feedback or 'tied'})"
    return kind


def _gain_text(gains: list[float]) -> str:
    counts = Counter(gains)
    return ", ".join(f"{g:g} x{n}" if n > 1 else f"{g:g}" for g, n in sorted(counts.items()))


def draw_topology(spec: TopologySpec, path: str | Path) -> Path:
    """Draw the layer graph of ``spec`` into a PNG at ``path``."""
    graph = to_graph(spec)
    order = [INPUT, *feedforward_order(spec), READOUT]
    position = {name: (float(i), 0.0) for i, name in enumerate(order)}
    width = max(6.0, 1.1 * len(order))
    fig = Figure(figsize=(width, 3.6))
    ax = fig.subplots()
    labels = {INPUT: f"input\n{spec.input.size}", READOUT: f"readout\n{spec.readout.size}"}
    for layer in spec.layers:
        labels[layer.name] = f"{layer.name}\n{layer.size}"
    colours = ["#d9d9d9" if n in (INPUT, READOUT) else "#c6dbef" for n in graph.nodes]
    nx.draw_networkx_nodes(graph, position, node_color=colours, node_size=1500, ax=ax)
    nx.draw_networkx_labels(graph, position, labels=labels, font_size=8, ax=ax)
    gains: dict[str, list[float]] = {}
    for source, target, key, data in graph.edges(keys=True, data=True):
        name = "readout" if key == "readout" else edge_class(key, data.get("feedback"))
        colour, style, rad = STYLES[name]
        if name.startswith("forward") and abs(order.index(target) - order.index(source)) > 1:
            rad = -0.35  # a forward edge that jumps layers is drawn as an arc
        nx.draw_networkx_edges(
            graph,
            position,
            edgelist=[(source, target)],
            edge_color=colour,
            style=style,
            connectionstyle=f"arc3,rad={rad}",
            arrows=True,
            arrowsize=12,
            node_size=1500,
            ax=ax,
        )
        if key != "readout":
            gains.setdefault(name, []).append(float(data.get("gain", 1.0)))
    handles = [
        Line2D(
            [0], [0], color=STYLES[n][0], linestyle=STYLES[n][1], label=f"{n}: gain {_gain_text(g)}"
        )
        for n, g in gains.items()
    ]
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.02),
        ncol=2,
        fontsize=8,
        frameon=False,
    )
    ax.set_title(f"{spec.name}: layer graph", fontsize=10)
    ax.set_axis_off()
    ax.margins(x=0.05, y=0.6)
    fig.tight_layout()
    target_path = Path(path)
    fig.savefig(target_path, dpi=110, bbox_inches="tight")
    return target_path
