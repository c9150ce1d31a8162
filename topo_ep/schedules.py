"""Update schedules: in which groups, and in which order, a relaxation step updates the layers.

A schedule is registered by name in :data:`SCHEDULES` as a function of the spec that returns
ordered groups of layer names. One step of the engine updates the groups in turn; the layers of
one group are updated together from the current state. The compiled network builds each
schedule's groups once and keeps them (:meth:`topo_ep.compiler.CompiledNetwork.schedule`).

Adding a schedule: a function ``(spec) -> groups`` here (or in a module of its own that is
imported by this one), decorated with ``@SCHEDULES.register("name")``.
"""

from __future__ import annotations

from collections.abc import Callable

from topo_ep.graph import feedforward_order, update_groups
from topo_ep.registry import Registry
from topo_ep.spec import TopologySpec

#: Ordered groups of layer names.
LayerGroups = tuple[tuple[str, ...], ...]

#: Schedule name -> builder of its groups.
SCHEDULES: Registry[Callable[[TopologySpec], LayerGroups]] = Registry("schedule")


@SCHEDULES.register("synchronous")
def synchronous(spec: TopologySpec) -> LayerGroups:
    """One group with every layer, all computed from the previous state (the paper)."""
    return (spec.layer_names,)


@SCHEDULES.register("sweep")
def sweep(spec: TopologySpec) -> LayerGroups:
    """One group per layer in feedforward order, each using the newest state before it."""
    return tuple((name,) for name in feedforward_order(spec))


@SCHEDULES.register("colour")
def colour(spec: TopologySpec) -> LayerGroups:
    """The groups of a proper colouring of the layer graph (no edge inside a group).

    See :func:`topo_ep.graph.update_groups`: on a balanced topology each group update minimises
    the energy exactly (:mod:`topo_ep.energy`); otherwise it is block Gauss-Seidel with a correct
    grouping.
    """
    return tuple(tuple(group) for group in update_groups(spec))


@SCHEDULES.register("top-down-sweep")
def top_down_sweep(spec: TopologySpec) -> LayerGroups:
    """One group per layer in reverse feedforward order, each using the newest state before it.

    Meant for the nudged phase (``dynamics.nudged_schedule``): the nudge enters at the top
    layer, so one top-down step carries it to every layer, as a backward pass would.
    """
    return tuple((name,) for name in reversed(feedforward_order(spec)))
