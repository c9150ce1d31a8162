"""Learning methods by name: ``--method``, the CLI's choices and the docs read :data:`METHODS`.

Adding a method: one module under :mod:`topo_ep.learn` whose class implements
:class:`~topo_ep.learn.base.Method` and is decorated with ``@METHODS.register("name")``, plus
its import in ``topo_ep/learn/__init__.py``.
"""

from __future__ import annotations

from topo_ep.learn.base import Method
from topo_ep.registry import Registry
from topo_ep.spec import TopologySpec

#: Method name -> the class, built with ``from_spec(spec)``.
METHODS: Registry[type[Method]] = Registry("learning method")


def make_method(name: str, spec: TopologySpec) -> Method:
    """The method called ``name`` (a name of :data:`METHODS`) configured from the spec."""
    return METHODS.get(name).from_spec(spec)
