"""Learners: Equilibrium Propagation and the gradient baselines on the same compiled network.

Every method implements :class:`~topo_ep.learn.base.Method`: ``gradients(net, x, y)`` writes
``.grad`` of every learned tensor (so any ``torch.optim`` optimizer applies it) and
``logits(net, x)`` gives the prediction the method trains.
"""

from topo_ep.learn.base import BatchResult, Method, make_method

__all__ = ["BatchResult", "Method", "make_method"]
