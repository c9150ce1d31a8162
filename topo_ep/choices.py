"""Names a user can choose from: learning methods and relaxation schedules.

Read from the registries when the package has them (``topo_ep.learn.registry``,
``topo_ep.schedules``), else from the tuples of the older layout, so that the command line and
the checkpoint checks stay valid across that change.
"""

from __future__ import annotations


def method_names() -> tuple[str, ...]:
    """Names accepted by ``--method`` and stored in checkpoints."""
    try:
        import topo_ep.learn  # noqa: F401  (registers every method)
        from topo_ep.learn.registry import METHODS
    except ImportError:
        from topo_ep.learn.base import METHODS as NAMES

        return tuple(NAMES)
    return tuple(METHODS.names())


def schedule_names() -> tuple[str, ...]:
    """Names accepted by ``dynamics.schedule`` and ``--schedule``."""
    try:
        from topo_ep.schedules import SCHEDULES
    except ImportError:
        from topo_ep.spec import SCHEDULES as NAMES

        return tuple(NAMES)
    return tuple(SCHEDULES.names())
