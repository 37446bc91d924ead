"""High-level notifiers for the trainer (:class:`RunNotifier`) and the sweep driver (:class:`SweepNotifier`).

Each method formats one message and enqueues it; none blocks on the network or raises. With ``cfg=None``
(nothing configured) every method is a no-op, so callers never need an ``if``.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from dqlray.notify import messages
from dqlray.notify.credentials import NotifyConfig
from dqlray.notify.redact import redact
from dqlray.notify.sender import LOGGER_NAME, Notifier

log = logging.getLogger(LOGGER_NAME)
F = TypeVar("F", bound=Callable[..., Any])


def _never_raises(method: F) -> F:
    """Notifications must never hurt training: log (redacted) and carry on."""

    @functools.wraps(method)
    def wrapper(self: _BaseNotifier, *args: Any, **kwargs: Any) -> Any:
        if self._notifier is None:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            log.warning("notification %s skipped: %s", method.__name__,
                        redact(f"{type(exc).__name__}: {exc}", self._secrets))
            return None

    return wrapper  # type: ignore[return-value]


def job_context() -> dict[str, str]:
    """Where this runs: host and SLURM job (no secrets; helps tell runs apart on the phone)."""
    ctx = {"Host": socket.gethostname()}
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        array = os.environ.get("SLURM_ARRAY_TASK_ID")
        ctx["SLURM job"] = f"{job}_{array}" if array else job
    return ctx


class _BaseNotifier:
    def __init__(self, cfg: NotifyConfig | None, experiment: str, *, handle_sigterm: bool,
                 notifier: Notifier | None, clock: Callable[[], float]) -> None:
        if not isinstance(experiment, str) or not experiment:
            raise ValueError(f"experiment={experiment!r} is not allowed: give a non-empty name")
        self.experiment = experiment
        self._clock = clock
        self._t0 = clock()
        self._owns_notifier = notifier is None
        if notifier is not None:
            self._notifier: Notifier | None = notifier
        elif cfg is not None:
            self._notifier = Notifier(cfg, handle_sigterm=handle_sigterm)
        else:
            self._notifier = None
        self._secrets = self._notifier.config.secrets if self._notifier else ()
        self._terminal_sent = False
        if self._notifier is not None:
            self._notifier.add_shutdown_hook(self._on_sigterm)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(experiment={self.experiment!r}, enabled={self.enabled})"

    def __getstate__(self) -> None:
        raise TypeError(f"{type(self).__name__} holds credentials and a thread and must not be pickled")

    def __enter__(self) -> _BaseNotifier:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and isinstance(exc, Exception):
            self.error(exc)
        self.close()

    @property
    def enabled(self) -> bool:
        """Whether notifications are configured (else every method is a no-op)."""
        return self._notifier is not None

    @property
    def notifier(self) -> Notifier | None:
        """The underlying :class:`Notifier` (to share it with a Tune callback in the same process)."""
        return self._notifier

    def _elapsed(self) -> float:
        return self._clock() - self._t0

    def _on_sigterm(self) -> None:
        if not self._terminal_sent:
            self.time_limit(reason="Received SIGTERM (SLURM time limit, preemption or scancel).")

    @_never_raises
    def error(self, exc: BaseException | str, *, title: str = "Training failed") -> None:
        """❌ critical: the exception and the tail of its traceback (redacted, cut to one message)."""
        assert self._notifier is not None
        self._terminal_sent = True
        text = messages.error_message(self.experiment, exc, title=title, secrets=self._secrets,
                                      context=job_context())
        self._notifier.notify(text, critical=True)

    @_never_raises
    def time_limit(self, reason: str = "") -> None:
        """⏰ critical: the job hit its time limit."""
        assert self._notifier is not None
        self._terminal_sent = True
        self._notifier.notify(self._time_limit_text(reason), critical=True)

    def _time_limit_text(self, reason: str) -> str:
        return messages.time_limit_message(self.experiment, reason=reason)

    def flush(self, deadline_s: float = 10.0) -> bool:
        """Wait up to ``deadline_s`` for queued messages to go out; True if everything did (or was spooled)."""
        if self._notifier is None:
            return True
        return self._notifier.flush(deadline_s)

    def close(self, deadline_s: float = 10.0) -> None:
        """Flush with ``deadline_s`` and stop the sender (critical messages left at the deadline are spooled)."""
        if self._notifier is not None and self._owns_notifier:
            self._notifier.close(deadline_s)
        elif self._notifier is not None:
            self._notifier.flush(deadline_s)


class RunNotifier(_BaseNotifier):
    """Notifications for one training run: start, progress (one message edited in place), checkpoints, completion,
    errors, time limit.

    Args:
        cfg: from :func:`load_notify_config`; ``None`` makes every method a no-op.
        experiment: run name shown in every message.
        progress_interval_s: least time between two progress updates (newer ones replace queued ones).
        handle_sigterm: on SIGTERM send ⏰ (unless the run already ended) and flush before dying (main thread
            only). If the program installed its own SIGTERM handler first, that handler alone is run: the program
            then calls :meth:`time_limit` / :meth:`close` itself.
        notifier: share an existing :class:`Notifier` instead of starting one.
    """

    def __init__(self, cfg: NotifyConfig | None, experiment: str, *, progress_interval_s: float = 30.0,
                 handle_sigterm: bool = True, notifier: Notifier | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if progress_interval_s < 0:
            raise ValueError(f"progress_interval_s={progress_interval_s!r} is not allowed: use a number >= 0")
        super().__init__(cfg, experiment, handle_sigterm=handle_sigterm, notifier=notifier, clock=clock)
        self.progress_interval_s = progress_interval_s
        self._episode: int | None = None
        self._total: int | None = None
        self._checkpoint: str | None = None

    @_never_raises
    def start(self, *, agent_type: str, episodes: int, data_file: str, **extra: Any) -> None:
        """🚀 loud: the run started (experiment, agent type, episodes, data file, host, SLURM job)."""
        assert self._notifier is not None
        self._total = episodes
        self._t0 = self._clock()
        ctx = {**job_context(), **{k: str(v) for k, v in extra.items()}}
        text = messages.run_start(self.experiment, agent_type=agent_type, episodes=episodes, data_file=data_file,
                                  context=ctx)
        self._notifier.notify(text, fallback=True)

    @_never_raises
    def progress(self, *, episode: int, total: int, mean_reward: float | None = None, loss: float | None = None,
                 epsilon: float | None = None, **extra: Any) -> None:
        """📊 silent, coalesced: one progress message edited in place, at most every ``progress_interval_s``."""
        assert self._notifier is not None
        self._episode, self._total = episode, total
        elapsed = self._elapsed()
        eta = elapsed / episode * (total - episode) if episode > 0 and total >= episode else None
        text = messages.run_progress(self.experiment, episode=episode, total=total, mean_reward=mean_reward,
                                     loss=loss, epsilon=epsilon, elapsed_s=elapsed, eta_s=eta, extra=extra)
        self._notifier.notify(text, silent=True, key="progress", live=True,
                              min_interval_s=self.progress_interval_s)

    @_never_raises
    def checkpoint(self, *, episode: int, path: str | os.PathLike[str]) -> None:
        """💾 silent: a checkpoint was saved."""
        assert self._notifier is not None
        self._checkpoint = str(path)
        self._episode = episode
        text = messages.run_checkpoint(self.experiment, episode=episode, path=str(path), total=self._total)
        self._notifier.notify(text, silent=True)

    @_never_raises
    def finished(self, *, final_reward: float | None, test_metrics: Mapping[str, Any] | None,
                 baseline_metrics: Mapping[str, Any] | None, model_path: str | os.PathLike[str] | None,
                 image_path: str | os.PathLike[str] | None = None) -> None:
        """✅ critical: final reward, test metrics against buy-and-hold, model path; then the equity curve picture."""
        assert self._notifier is not None
        self._terminal_sent = True
        text = messages.run_finished(self.experiment, final_reward=final_reward, test_metrics=test_metrics,
                                     baseline_metrics=baseline_metrics,
                                     model_path=str(model_path) if model_path else None, elapsed_s=self._elapsed())
        image = str(image_path) if image_path else None
        self._notifier.notify(text, critical=True, attachments=(image,) if image else ())
        if image:
            caption = f"📈 Equity curve · <code>{messages.esc(self.experiment)}</code>"
            self._notifier.notify(caption, silent=True, photo_path=image)

    def _time_limit_text(self, reason: str) -> str:
        return messages.time_limit_message(self.experiment, reason=reason, last_episode=self._episode,
                                           total=self._total, last_checkpoint=self._checkpoint)


class SweepNotifier(_BaseNotifier):
    """Notifications from the sweep driver around ``Tuner.fit()``: the end result and driver errors.

    The live dashboard comes from :class:`~dqlray.notify.tune_callback.TelegramTuneCallback`.
    """

    def __init__(self, cfg: NotifyConfig | None, experiment: str, *, handle_sigterm: bool = True,
                 notifier: Notifier | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(cfg, experiment, handle_sigterm=handle_sigterm, notifier=notifier, clock=clock)

    @_never_raises
    def finished(self, best_config: Mapping[str, Any], test_metrics: Mapping[str, Any],
                 baseline_metrics: Mapping[str, Any] | None, deflated_sharpe: float | Mapping[str, Any] | None,
                 n_trials: int, image_path: str | os.PathLike[str] | None = None) -> None:
        """✅ critical: the winner's config, its test result against buy-and-hold, and the deflated Sharpe.

        ``deflated_sharpe`` is the DSR probability, or the dict from ``dqlray.metrics.deflated_sharpe`` (its
        ``dsr`` is used).
        """
        assert self._notifier is not None
        self._terminal_sent = True
        dsr = deflated_sharpe.get("dsr") if isinstance(deflated_sharpe, Mapping) else deflated_sharpe
        text = messages.sweep_finished(self.experiment, best_config=best_config, test_metrics=test_metrics,
                                       baseline_metrics=baseline_metrics, deflated_sharpe=dsr, n_trials=n_trials,
                                       elapsed_s=self._elapsed())
        image = str(image_path) if image_path else None
        self._notifier.notify(text, critical=True, attachments=(image,) if image else ())
        if image:
            caption = f"📈 Winner's equity curve · <code>{messages.esc(self.experiment)}</code>"
            self._notifier.notify(caption, silent=True, photo_path=image)

    def error(self, exc: BaseException | str, *, title: str = "Sweep failed") -> None:
        """❌ critical: the sweep driver failed."""
        super().error(exc, title=title)
