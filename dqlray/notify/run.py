"""The messages of a training run (:class:`RunNotifier`) and of the sweep driver (:class:`SweepNotifier`): each
method enqueues one message on the process's :class:`~dqlray.notify.sender.Notifier`, never blocks or raises, and is
a no-op when nothing is configured, so callers never need an ``if``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from dqlray.notify import messages
from dqlray.notify.redact import never_raises
from dqlray.notify.sender import Notifier

Baselines = Mapping[str, Mapping[str, Any]]
"""Test metrics of each baseline by its display name, e.g. ``{"buy&hold": {...}, "linear probe": {...}}``."""


def job_context() -> dict[str, str]:
    """Where this runs: host and SLURM job (no secrets; helps tell runs apart on the phone)."""
    ctx = {"Host": socket.gethostname()}
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        array = os.environ.get("SLURM_ARRAY_TASK_ID")
        ctx["SLURM job"] = f"{job}_{array}" if array else job
    return ctx


class _BaseNotifier:
    error_title = "Training failed"

    def __init__(self, notifier: Notifier, experiment: str) -> None:
        if not isinstance(experiment, str) or not experiment:
            raise ValueError(f"experiment={experiment!r} is not allowed: give a non-empty name")
        self.notifier = notifier
        """The process's notifier (see :func:`~dqlray.notify.sender.get_notifier`)."""
        self.experiment = experiment
        self.secrets = notifier.secrets
        self._t0 = time.monotonic()
        self._terminal_sent = False
        # Where a run got to, for the ⏰ message (a sweep driver has none).
        self._episode: int | None = None
        self._total: int | None = None
        self._checkpoint: str | None = None
        notifier.add_shutdown_hook(self._on_sigterm)

    @property
    def enabled(self) -> bool:
        """Whether notifications are configured (else every method is a no-op)."""
        return self.notifier.enabled

    def _on_sigterm(self) -> None:
        if not self._terminal_sent:
            self.time_limit(reason="Received SIGTERM (SLURM time limit, preemption or scancel).")

    @never_raises
    def error(self, exc: BaseException | str, *, title: str | None = None) -> None:
        """❌ critical: the exception and the tail of its traceback (redacted, cut to one message)."""
        self._last(messages.error_message(self.experiment, exc, title=title or self.error_title, secrets=self.secrets,
                                          context=job_context()))

    @never_raises
    def time_limit(self, reason: str = "") -> None:
        """⏰ critical: the job hit its time limit."""
        self._last(messages.time_limit_message(self.experiment, reason=reason, last_episode=self._episode,
                                               total=self._total, last_checkpoint=self._checkpoint))

    def _last(self, text: str, image_path: str | os.PathLike[str] | None = None, caption: str = "") -> None:
        """A run's last message (critical; SIGTERM then sends no ⏰), then its picture."""
        self._terminal_sent = True
        image = str(image_path) if image_path else None
        self.notifier.notify(text, critical=True, attachments=(image,) if image else ())
        if image:
            self.notifier.notify(messages.caption(caption, self.experiment), silent=True, photo_path=image)

    def flush(self, deadline_s: float = 10.0) -> bool:
        """Wait up to ``deadline_s`` for queued messages to go out; True if everything did (or was spooled)."""
        return self.notifier.flush(deadline_s)

    def close(self, deadline_s: float = 10.0) -> None:
        """Close the process's notifier: flush with ``deadline_s`` (critical messages left are spooled, and said)."""
        self.notifier.close(deadline_s)


class RunNotifier(_BaseNotifier):
    """Notifications for one training run named ``experiment``: start, progress (one message edited in place, at
    most every ``progress_interval_s``), checkpoints, completion, errors, time limit (also on SIGTERM)."""

    def __init__(self, notifier: Notifier, experiment: str, *, progress_interval_s: float = 30.0) -> None:
        if progress_interval_s < 0:
            raise ValueError(f"progress_interval_s={progress_interval_s!r} is not allowed: use a number >= 0")
        super().__init__(notifier, experiment)
        self.progress_interval_s = progress_interval_s

    @never_raises
    def start(self, *, agent_type: str, episodes: int, data_file: str, **extra: Any) -> None:
        """🚀 loud: the run started (experiment, agent type, episodes, data file, host, SLURM job)."""
        self._total, self._t0 = episodes, time.monotonic()
        ctx = {**job_context(), **{k: str(v) for k, v in extra.items()}}
        self.notifier.notify(messages.run_start(self.experiment, agent_type=agent_type, episodes=episodes,
                                                data_file=data_file, context=ctx), critical=True)

    @never_raises
    def progress(self, *, episode: int, total: int, mean_reward: float | None = None, loss: float | None = None,
                 epsilon: float | None = None, **extra: Any) -> None:
        """📊 silent, coalesced: one progress message edited in place, at most every ``progress_interval_s``."""
        self._episode, self._total = episode, total
        elapsed = time.monotonic() - self._t0
        eta = elapsed / episode * (total - episode) if episode > 0 and total >= episode else None
        text = messages.run_progress(self.experiment, episode=episode, total=total, mean_reward=mean_reward,
                                     loss=loss, epsilon=epsilon, elapsed_s=elapsed, eta_s=eta, extra=extra)
        self.notifier.notify(text, silent=True, key="progress", live=True, min_interval_s=self.progress_interval_s)

    @never_raises
    def checkpoint(self, *, episode: int, path: str | os.PathLike[str]) -> None:
        """💾 silent: a checkpoint was saved."""
        self._checkpoint, self._episode = str(path), episode
        self.notifier.notify(messages.run_checkpoint(self.experiment, episode=episode, path=str(path),
                                                     total=self._total), silent=True)

    @never_raises
    def finished(self, *, final_reward: float | None, test_metrics: Mapping[str, Any] | None,
                 baselines: Baselines | None, model_path: str | os.PathLike[str] | None,
                 image_path: str | os.PathLike[str] | None = None, statement: str = "",
                 figures: Mapping[str, Any] | None = None) -> None:
        """✅ critical: final reward, test metrics against each baseline, the verdict (``statement`` and its
        ``figures``), model path; then the equity curve picture."""
        text = messages.run_finished(self.experiment, final_reward=final_reward, test_metrics=test_metrics,
                                     baselines=baselines, model_path=str(model_path) if model_path else None,
                                     statement=statement, figures=figures, elapsed_s=time.monotonic() - self._t0)
        self._last(text, image_path, "Equity curve")


class SweepNotifier(_BaseNotifier):
    """Notifications from the sweep driver around ``Tuner.fit()``: the end result and driver errors (the live
    dashboard is :class:`~dqlray.notify.tune_callback.TelegramTuneCallback`'s)."""

    error_title = "Sweep failed"

    @never_raises
    def finished(self, *, best_config: Mapping[str, Any], test_metrics: Mapping[str, Any] | None,
                 baselines: Baselines | None, deflated_sharpe: float | Mapping[str, Any] | None, n_trials: int,
                 image_path: str | os.PathLike[str] | None = None, statement: str = "",
                 figures: Mapping[str, Any] | None = None) -> None:
        """✅ critical: the winner's config, its test result against each baseline, the verdict, and the deflated
        Sharpe (the DSR probability, or the dict from ``dqlray.metrics.deflated_sharpe``, whose ``dsr`` is used)."""
        dsr = deflated_sharpe.get("dsr") if isinstance(deflated_sharpe, Mapping) else deflated_sharpe
        text = messages.sweep_finished(self.experiment, best_config=best_config, test_metrics=test_metrics,
                                       baselines=baselines, deflated_sharpe=dsr, n_trials=n_trials,
                                       statement=statement, figures=figures, elapsed_s=time.monotonic() - self._t0)
        self._last(text, image_path, "Winner's equity curve")
