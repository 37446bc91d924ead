"""Warm-up of the sweep's end while its trials run (issue 14): the driver only waits on the trials, so what the end
needs can be imported then rather than after the last trial."""

from __future__ import annotations

import threading

from ray.tune import Callback


class WarmUp(Callback):
    """Imports what the sweep's end needs (the report's matplotlib, about a second) in a thread once the first
    result has come in: the trials have started by then (at the start it would slow their workers' own imports),
    and the driver only waits on them. Nothing to save: a resumed sweep warms up again."""

    def __init__(self) -> None:
        self._started = False

    def on_trial_result(self, iteration: int, trials: list, trial: object, result: dict, **info: object) -> None:
        """Start the warm-up thread, once."""
        if not self._started:
            self._started = True
            threading.Thread(target=_warm_imports, name="dqlray-warm-imports", daemon=True).start()

    def get_state(self) -> dict:
        """Nothing to carry over into a resumed sweep."""
        return {}

    def set_state(self, state: dict) -> None:
        """See :meth:`get_state`."""


def _warm_imports() -> None:
    try:
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401
        import PIL.Image  # noqa: F401
    except Exception:  # noqa: BLE001 - a failed warm-up is retried, and reported, where the report imports it
        pass
