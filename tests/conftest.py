"""Suite-wide fixtures and the Hypothesis profile.

The suite runs Hypothesis derandomized by default, so that a test run (CI included) draws the
same examples every time and its result does not depend on luck. Set
``TOPO_EP_HYPOTHESIS_PROFILE=explore`` for random draws, to search for new counterexamples.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

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
