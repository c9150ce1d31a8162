"""Suite-wide fixtures and the Hypothesis profile.

The suite runs Hypothesis derandomized by default, so that a test run (CI included) draws the
same examples every time and its result does not depend on luck. Set
``TOPO_EP_HYPOTHESIS_PROFILE=explore`` for random draws, to search for new counterexamples.

Derandomized is not enough on its own. Hypothesis (6.131 and later) biases its draws towards
constants it reads from the local modules loaded so far (``sys.modules``): a test that ran
earlier and imported a module lazily changed the examples of every test after it, so a property
failed in one test order and passed in another. Every local module, the package's and the
suite's, is therefore imported here, before any test runs: the pool of constants is then the
same whatever runs, in whatever order.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

REPO = Path(__file__).resolve().parents[1]


def local_module_names() -> list[str]:
    """Every module of ``topo_ep`` (but ``__main__``, which runs the CLI) and of the suite."""
    names = []
    for path in sorted((REPO / "topo_ep").rglob("*.py")):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        if name != "topo_ep.__main__":
            names.append(name)
    names += [f"tests.{path.stem}" for path in sorted((REPO / "tests").glob("*.py"))]
    return [name for name in names if name != "tests.conftest"]


for _name in local_module_names():
    importlib.import_module(_name)

settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("TOPO_EP_HYPOTHESIS_PROFILE", "repeatable"))


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Run torch on one thread: the suite's tensors are tiny, and on a shared 2-core machine
    two threads made small float64 GEMMs about 30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
