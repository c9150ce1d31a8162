"""topo-ep: recurrent networks declared as graphs, trained with Equilibrium Propagation."""

__version__ = "0.1.0"
