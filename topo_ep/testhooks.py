"""A test-only pause, so that a test can kill a training process at an exact point.

When the environment variable :data:`PAUSE_ENV` reads ``POINT=FLAG`` or ``POINT@EPOCH=FLAG`` and
the process reaches that point (of that epoch), it creates the file ``FLAG`` (holding its process
id) and sleeps for :data:`PAUSE_SECONDS` (or ``$TOPO_EP_TEST_PAUSE_SECONDS``); the test waits
for the file and kills the process.
Without the variable nothing happens. The points:

``mid-epoch``
    after the first optimizer step of an epoch (weights changed, nothing saved);
``before-rename``
    in :func:`topo_ep.checkpoint.save_atomic`, after the temporary file is written and flushed,
    before it is renamed over ``checkpoint.pt``;
``before-metrics``
    after the checkpoint of an epoch, before its line is appended to ``metrics.jsonl``;
``after-epoch``
    after an epoch is committed (checkpoint and metrics);
``after-partial``
    after a mid-epoch checkpoint of the epoch is written (``--checkpoint-minutes``);
``resumed``
    after ``--resume`` has loaded the checkpoint, before the first epoch (EPOCH: the next one).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

#: The environment variable read by :func:`pause_point`.
PAUSE_ENV = "TOPO_EP_TEST_PAUSE"
#: The environment variable that sets the pause's length in seconds.
SECONDS_ENV = "TOPO_EP_TEST_PAUSE_SECONDS"
#: How long a paused process sleeps before it goes on, unless :data:`SECONDS_ENV` says.
PAUSE_SECONDS = 60.0


def pause_point(point: str, epoch: int | None = None) -> None:
    """Pause here if :data:`PAUSE_ENV` asks for ``point`` (at ``epoch``); see the module doc."""
    request = os.environ.get(PAUSE_ENV)
    if not request:
        return
    where, _, flag = request.partition("=")
    name, _, at = where.partition("@")
    if name != point or not flag:
        return
    if at and (epoch is None or at != str(epoch)):
        return
    Path(flag).write_text(f"{os.getpid()}\n", encoding="utf-8")
    try:
        seconds = float(os.environ.get(SECONDS_ENV, PAUSE_SECONDS))
    except ValueError:
        seconds = PAUSE_SECONDS
    time.sleep(seconds)
