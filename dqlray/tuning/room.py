"""Room on a sweep's storage for what Tune writes there (issue 13).

Tune writes its experiment state, the trials' logs and their checkpoints into the experiment folder itself, and a
full disk cuts those files short (the next ``--resume`` then ends in an EOFError). dqlray cannot make Tune's writes
atomic, so it keeps them from running out of room: a sweep is refused up front, in one line naming the folder and
the space needed, when the filesystem lacks room for the running trials' next checkpoints and Tune's state; it stops
with its state saved (exit 74, resumable) as soon as the free space falls below that; and a trial does not hand Tune
a checkpoint that would not fit (:mod:`dqlray.tuning.trainable`). Imported only after Ray's settings are in place.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ray.tune import Callback

from dqlray.runinfo import free_bytes, human_bytes, short_of_space

STATE_RESERVE = 512 * 1024  # Tune's experiment state and trial logs, the sweep's tables and report
CHECKPOINTS_PER_TRIAL = 3  # Tune keeps two per trial (CheckpointConfig(num_to_keep=2)); the third is being written


@dataclass(frozen=True)
class SweepRoom:
    """The space a sweep needs on its storage: ``reserve`` to go on, ``total`` (about) for all it has left."""

    checkpoint: int
    reserve: int
    total: int

    @classmethod
    def estimate(cls, checkpoint: int, remaining: int, concurrent: int) -> SweepRoom:
        """For ``remaining`` trials, ``concurrent`` at a time, each checkpoint about ``checkpoint`` bytes."""
        running = min(remaining, max(concurrent, 1))
        return cls(checkpoint, running * CHECKPOINTS_PER_TRIAL * checkpoint + STATE_RESERVE,
                   remaining * (CHECKPOINTS_PER_TRIAL - 1) * checkpoint + STATE_RESERVE)

    def check_before_start(self, folder: Path, out: Callable[[str], None] = print) -> None:
        """Refuse to start (one line) when ``folder``'s filesystem lacks the reserve; warn when it lacks the total."""
        free = free_bytes(folder)
        if free is None:
            return
        if free < self.reserve:
            raise short_of_space(folder, "the sweep's checkpoints and state", self.reserve)
        if free < self.total:
            out(f"warning: {folder}: {human_bytes(free)} free, the rest of the sweep may write about "
                f"{human_bytes(self.total)}; it stops with its state saved if the space runs out")

    def raise_if_short(self, folder: Path, what: str, error: BaseException | None, hint: str = "") -> None:
        """Raise the one-line failure if ``folder``'s filesystem has less than the reserve free; else return."""
        free = free_bytes(folder)
        if free is not None and free < self.reserve:
            raise short_of_space(folder, what, self.reserve, hint) from error


class RoomWatch(Callback):
    """Interrupts the sweep, as SIGUSR1 does (Tune saves its state, the sweep can be resumed), once the storage has
    less than ``reserve`` bytes free. A ``Stopper`` would not do: Tune ends the experiment for good when one says
    ``stop_all``, marking trials that have not started as finished."""

    def __init__(self, folder: str, reserve: int) -> None:
        self.folder = folder
        self.reserve = reserve
        self._sent = False

    def on_trial_result(self, iteration: int, trials: list, trial: object, result: dict, **info: object) -> None:
        """Check the room after every reported episode."""
        free = free_bytes(self.folder)
        if not self._sent and free is not None and free < self.reserve:
            self._sent = True
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune's own handler: stop and save the experiment state

    def get_state(self) -> dict:
        """Nothing to carry over into a resumed sweep."""
        return {}

    def set_state(self, state: dict) -> None:
        """See :meth:`get_state`."""
