"""Learners: Equilibrium Propagation and the gradient baselines on the same compiled network.

Every method implements :class:`~topo_ep.learn.base.Method`: ``gradients(net, x, y)`` writes
``.grad`` of every learned tensor (so any ``torch.optim`` optimizer applies it) and
``logits(net, x)`` gives the prediction the method trains. Importing this package registers
every method in :data:`~topo_ep.learn.registry.METHODS`.
"""

from topo_ep.learn import bp, bptt, ep, implicit
from topo_ep.learn.base import BatchResult, Method
from topo_ep.learn.registry import METHODS, make_method

__all__ = ["METHODS", "BatchResult", "Method", "bp", "bptt", "ep", "implicit", "make_method"]
