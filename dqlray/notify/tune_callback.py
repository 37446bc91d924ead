"""A Ray Tune callback that keeps one live Telegram dashboard for a sweep.

Tune calls callbacks inside the driver's event loop, so a blocking send would stall every trial (ray#35721): every
hook here only updates in-memory counters and *enqueues*; a :class:`~dqlray.notify.sender.Notifier` thread sends.
Tune pickles callbacks with the experiment (``tuner.pkl``) and restores their ``get_state()`` on
``Tuner.restore``: the token, the notifier and its thread are never pickled (``__getstate__``); after a restore the
credentials are loaded again from the environment / config file, and the saved state (dashboard ``message_id``,
what was already sent) makes the resumed sweep edit the same dashboard and resend nothing.

Messages: 🚀 start (loud), 📊 one dashboard edited at most every ``edit_interval_s`` (silent), ❌ one digest per
burst of errored trials (loud), and a final dashboard edit at the end.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ray.tune import Callback

from dqlray.metrics import finite_or_none
from dqlray.notify import messages
from dqlray.notify.credentials import NotifyConfig, NotifyConfigError, load_notify_config
from dqlray.notify.redact import redact
from dqlray.notify.sender import LOGGER_NAME, Notifier

log = logging.getLogger(LOGGER_NAME)

DASHBOARD_KEY = "dashboard"
STATE_VERSION = 1
_RUNTIME_ATTRS = ("_cfg", "_notifier", "_clock", "_wall")


def _chat_fingerprint(cfg: NotifyConfig | None) -> str | None:
    """A short hash naming the chat (and API server) without storing the chat id itself."""
    if cfg is None:
        return None
    return hashlib.sha256(f"{cfg.api_base}|{cfg.chat_id}".encode()).hexdigest()[:16]




def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _last_error_line(trial: Any) -> str:
    """The exception line of an errored trial: from ``error_msg`` (tests, older Ray) or the tail of ``error_file``
    (a small local file; Ray 2.60 writes it before calling ``on_trial_error``)."""
    msg = getattr(trial, "error_msg", None)
    text = str(msg) if msg else ""
    if not text:
        path = getattr(trial, "error_file", None)
        if path:
            try:
                with open(path, "rb") as fh:
                    fh.seek(0, 2)
                    size = fh.tell()
                    fh.seek(max(0, size - 8192))
                    text = fh.read().decode("utf-8", "replace")
            except OSError:
                text = ""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "error (no message)"


def _error_text(trial: Any) -> str | None:
    msg = getattr(trial, "error_msg", None)
    if msg:
        return str(msg)
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        try:
            data = Path(path).read_bytes()[-16384:]
        except OSError:
            return None
        return data.decode("utf-8", "replace")
    return None


class TelegramTuneCallback(Callback):
    """Live Telegram dashboard for a Ray Tune sweep. Unit-testable without a cluster: hooks need only objects with
    ``trial_id``, ``config`` and ``last_result``.

    Args:
        cfg: from :func:`~dqlray.notify.load_notify_config`; ``None`` turns the callback into a no-op. Not pickled:
            after ``Tuner.restore`` the credentials are loaded again (``config_file``, environment).
        experiment: sweep name shown in every message.
        metric, mode: the metric trials are ranked by (``val_sharpe``, ``max``).
        num_samples: number of trials (else Tune's ``total_num_samples`` from ``setup``).
        space_summary: ``{name: description}`` of the search space for the start message (not raw config).
        max_t: ASHA's budget in ``time_attr`` units; a trial that completes below it was stopped early by ASHA.
        time_attr: the result key ASHA schedules on (``env_steps``).
        edit_interval_s: least time between two dashboard edits (Telegram: about 1 message/s per chat, 20/min to
            groups; 30 s keeps a 27-trial sweep far below that).
        error_digest_s: errored trials within this window after the first one are reported in one message.
        top_k: trials listed in the dashboard.
        resources: cluster resources for the start message; default ``ray.cluster_resources()``.
        config_file: notify config file to reload credentials from after a restore.
        end_flush_s: at ``on_experiment_end`` wait at most this long for the last messages (trials are done then).
        notifier: share a :class:`Notifier` (e.g. the :class:`SweepNotifier`'s) instead of starting one.
        clock, wall_clock: injectable clocks (tests).
    """

    def __init__(
        self,
        cfg: NotifyConfig | None,
        *,
        experiment: str,
        metric: str = "val_sharpe",
        mode: str = "max",
        num_samples: int | None = None,
        space_summary: Mapping[str, Any] | str | None = None,
        max_t: int | None = None,
        time_attr: str = "env_steps",
        edit_interval_s: float = 30.0,
        error_digest_s: float = 60.0,
        top_k: int = 5,
        resources: Mapping[str, Any] | str | None = None,
        config_file: str | None = None,
        end_flush_s: float = 10.0,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not experiment:
            raise ValueError(f"experiment={experiment!r} is not allowed: give a non-empty name")
        if mode not in ("max", "min"):
            raise ValueError(f"mode={mode!r} is not allowed: use 'max' or 'min'")
        if edit_interval_s < 0 or error_digest_s < 0 or end_flush_s < 0:
            raise ValueError(
                f"edit_interval_s={edit_interval_s!r}, error_digest_s={error_digest_s!r}, "
                f"end_flush_s={end_flush_s!r}: each must be >= 0 seconds"
            )
        if top_k < 1:
            raise ValueError(f"top_k={top_k!r} is not allowed: use an integer >= 1")
        if max_t is not None and max_t <= 0:
            raise ValueError(f"max_t={max_t!r} is not allowed: use a positive budget or None")
        self.experiment = experiment
        self.metric = metric
        self.mode = mode
        self.num_samples = num_samples
        self.space_summary = dict(space_summary) if isinstance(space_summary, Mapping) else space_summary
        self.max_t = max_t
        self.time_attr = time_attr
        self.edit_interval_s = float(edit_interval_s)
        self.error_digest_s = float(error_digest_s)
        self.top_k = top_k
        self.resources = dict(resources) if isinstance(resources, Mapping) else resources
        self.config_file = str(config_file) if config_file else None
        self.end_flush_s = float(end_flush_s)
        self._enabled = cfg is not None or notifier is not None
        # Runtime-only (dropped by __getstate__): credentials, the sender, clocks.
        self._cfg = cfg if cfg is not None else (notifier.config if notifier else None)
        self._notifier: Notifier | None = notifier
        self._owns_notifier = notifier is None
        self._clock = clock
        self._wall = wall_clock
        # Pickled state (also what get_state returns): nothing secret.
        self._chat_fp = _chat_fingerprint(self._cfg)
        self._start_sent = False
        self._started_at: float | None = None
        self._trials: dict[str, dict[str, Any]] = {}
        self._errors_reported: list[str] = []
        self._burst: list[str] = []
        self._dashboard_id: int | None = None
        self._restored_dashboard_id: int | None = None
        self._burst_started: float | None = None
        self._last_dashboard: float | None = None
        self._dirty = False

    # ---------------------------------------------------------------------------------------------- pickling ---

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in _RUNTIME_ATTRS:
            state.pop(name, None)
        state["_owns_notifier"] = True
        state["_burst_started"] = None
        state["_last_dashboard"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cfg = None
        self._notifier = None
        self._clock = time.monotonic
        self._wall = time.time

    def get_state(self) -> dict[str, Any] | None:
        """What a restored sweep needs to edit the same dashboard and resend nothing (no secrets)."""
        if self._notifier is not None:
            live = self._notifier.live_message_id(DASHBOARD_KEY)
            if live is not None:
                self._dashboard_id = live
        return {
            "version": STATE_VERSION,
            "experiment": self.experiment,
            "chat": self._chat_fp,
            "dashboard_message_id": self._dashboard_id,
            "start_sent": self._start_sent,
            "started_at": self._started_at,
            "trials": {tid: dict(info) for tid, info in self._trials.items()},
            "errors_reported": list(self._errors_reported),
            "errors_pending": list(self._burst),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`'s dict (Tune calls this before ``setup`` on ``Tuner.restore``)."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            log.warning("ignoring Telegram callback state of an unknown version")
            return
        self._start_sent = bool(state.get("start_sent"))
        self._started_at = state.get("started_at")
        self._trials = {str(k): dict(v) for k, v in (state.get("trials") or {}).items()}
        self._errors_reported = list(state.get("errors_reported") or [])
        self._burst = list(state.get("errors_pending") or [])
        self._burst_started = self._clock() if self._burst else None
        saved_chat = state.get("chat")
        self._restored_dashboard_id = _int(state.get("dashboard_message_id"))
        self._dashboard_id = self._restored_dashboard_id
        if self._chat_fp is None:
            self._chat_fp = saved_chat
        elif saved_chat is not None and saved_chat != self._chat_fp:
            self._restored_dashboard_id = self._dashboard_id = None  # another chat: its message ids mean nothing
        if self._notifier is not None:
            self._adopt_dashboard()
        self._dirty = True

    # --------------------------------------------------------------------------------------------- notifier ---

    def _ensure_notifier(self) -> Notifier | None:
        if self._notifier is not None or not self._enabled:
            return self._notifier
        cfg = self._cfg
        if cfg is None:  # unpickled by Tuner.restore: load the credentials again (never pickled)
            try:
                cfg = load_notify_config(config_file=self.config_file)
            except NotifyConfigError as exc:
                log.warning("Telegram sweep notifications off after restore: %s", exc)
                cfg = None
            if cfg is None:
                log.warning("Telegram sweep notifications off: no credentials found after restore "
                            "(set TELEGRAM_BOT_TOKEN/TELEGRAM_CHAT_ID or the notify config file)")
                self._enabled = False
                return None
            fp = _chat_fingerprint(cfg)
            if self._chat_fp is not None and fp != self._chat_fp:
                self._restored_dashboard_id = self._dashboard_id = None
            self._chat_fp = fp
            self._cfg = cfg
        # The driver's SIGTERM belongs to Tune and the SweepNotifier; this sender only flushes at exit.
        self._notifier = Notifier(cfg, handle_sigterm=False)
        self._owns_notifier = True
        self._adopt_dashboard()
        return self._notifier

    def _adopt_dashboard(self) -> None:
        if self._notifier is not None and self._restored_dashboard_id is not None:
            self._notifier.set_live_message_id(DASHBOARD_KEY, self._restored_dashboard_id)

    def _send(self, text: str, **kwargs: Any) -> None:
        notifier = self._ensure_notifier()
        if notifier is not None:
            notifier.notify(text, **kwargs)

    # ------------------------------------------------------------------------------------------------ hooks ---

    def setup(self, stop: Any = None, num_samples: int | None = None, total_num_samples: int | None = None,
              **info: Any) -> None:
        """Send the 🚀 start message (once per sweep, not again after a restore)."""
        try:
            if self.num_samples is None:
                self.num_samples = total_num_samples or num_samples
            if self._started_at is None:
                self._started_at = self._wall()
            if self._start_sent or self._ensure_notifier() is None:
                return
            resources = self.resources if self.resources is not None else _cluster_resources()
            text = messages.sweep_start(self.experiment, metric=self.metric, mode=self.mode,
                                        num_samples=self.num_samples, space_summary=self.space_summary,
                                        resources=resources, max_t=self.max_t, time_attr=self.time_attr)
            self._send(text, fallback=True)
            self._start_sent = True
        except Exception as exc:  # a notification bug must never break the sweep
            self._log_skip("setup", exc)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Count the trial as running."""
        try:
            info_ = self._trial(trial)
            if info_["status"] not in ("errored",):
                info_["status"] = "running"
            self._dirty = True
            self._tick()
        except Exception as exc:
            self._log_skip("on_trial_start", exc)

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        """Record the trial's latest metrics; edit the dashboard if ``edit_interval_s`` has passed."""
        try:
            self._record_result(self._trial(trial), result)
            self._trials[str(trial.trial_id)]["status"] = "running"
            self._dirty = True
            self._tick()
        except Exception as exc:
            self._log_skip("on_trial_result", exc)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Count the trial as finished, or as stopped by ASHA when it ended below ``max_t``."""
        try:
            info_ = self._trial(trial)
            last = getattr(trial, "last_result", None) or {}
            self._record_result(info_, last)
            steps = info_.get("env_steps")
            stopped = self.max_t is not None and steps is not None and steps < self.max_t
            info_["status"] = "stopped" if stopped else "finished"
            self._dirty = True
            self._tick()
        except Exception as exc:
            self._log_skip("on_trial_complete", exc)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Count the trial as errored and add it to the current burst (one ❌ digest per burst)."""
        try:
            info_ = self._trial(trial)
            self._record_result(info_, getattr(trial, "last_result", None) or {})
            info_["status"] = "errored"
            secrets = self._cfg.secrets if self._cfg else ()
            info_["error"] = redact(_last_error_line(trial)[:500], secrets)
            tid = str(trial.trial_id)
            if tid not in self._errors_reported and tid not in self._burst:
                self._burst.append(tid)
                info_["error_text"] = redact((_error_text(trial) or "")[-4000:], secrets)
                if self._burst_started is None:
                    self._burst_started = self._clock()
            self._dirty = True
            self._tick()
        except Exception as exc:
            self._log_skip("on_trial_error", exc)

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        """Time-based work: the pending error digest and the throttled dashboard edit."""
        try:
            self._tick()
        except Exception as exc:
            self._log_skip("on_step_end", exc)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """Send the error digest and the final dashboard, then wait at most ``end_flush_s`` for delivery."""
        try:
            for trial in trials or []:
                status = str(getattr(trial, "status", ""))
                tid = str(getattr(trial, "trial_id", ""))
                if tid in self._trials and status == "ERROR" and self._trials[tid]["status"] != "errored":
                    self._trials[tid]["status"] = "errored"
            self._dirty = True  # the final edit says "finished" and drops the estimate, even with no new result
            self._tick(force=True, final=True)
        except Exception as exc:
            self._log_skip("on_experiment_end", exc)
        finally:
            if self._notifier is not None:
                if self._owns_notifier:
                    self._dashboard_id = self._notifier.live_message_id(DASHBOARD_KEY) or self._dashboard_id
                    self._notifier.close(self.end_flush_s)
                    self._dashboard_id = self._notifier.live_message_id(DASHBOARD_KEY) or self._dashboard_id
                    self._restored_dashboard_id = self._dashboard_id
                    self._notifier = None
                else:
                    self._notifier.flush(self.end_flush_s)

    # -------------------------------------------------------------------------------------------- internals ---

    def _log_skip(self, hook: str, exc: BaseException) -> None:
        secrets = self._cfg.secrets if self._cfg else ()
        log.warning("Telegram callback %s skipped: %s", hook, redact(f"{type(exc).__name__}: {exc}", secrets))

    def _trial(self, trial: Any) -> dict[str, Any]:
        tid = str(trial.trial_id)
        info = self._trials.get(tid)
        if info is None:
            config = getattr(trial, "config", None) or {}
            info = {
                "status": "pending",
                "config": dict(messages.summarize_config(config, max_items=8)),
                "metric": None, "std": None, "val_return": None, "env_steps": None,
            }
            self._trials[tid] = info
        return info

    def _record_result(self, info: dict[str, Any], result: Mapping[str, Any]) -> None:
        if not result:
            return
        metric = finite_or_none(result.get(self.metric))
        if metric is not None:
            info["metric"] = metric
        std = finite_or_none(result.get(f"{self.metric}_std"))
        if std is not None:
            info["std"] = std
        val_return = finite_or_none(result.get("val_return"))
        if val_return is not None:
            info["val_return"] = val_return
        steps = _int(result.get(self.time_attr))
        if steps is not None:
            info["env_steps"] = steps

    def counts(self) -> dict[str, int]:
        """Trials per status: running, finished, stopped (by ASHA), errored, pending."""
        c = {"running": 0, "finished": 0, "stopped": 0, "errored": 0, "pending": 0}
        for info in self._trials.values():
            c[info["status"]] = c.get(info["status"], 0) + 1
        total = self.num_samples if self.num_samples and self.num_samples > 0 else len(self._trials)
        c["pending"] = max(c["pending"], total - sum(v for k, v in c.items() if k != "pending"))
        return c

    def _top(self) -> list[messages.TrialRow]:
        scored = [(tid, info) for tid, info in self._trials.items() if info.get("metric") is not None]
        sign = -1.0 if self.mode == "max" else 1.0
        scored.sort(key=lambda item: (sign * item[1]["metric"], item[0]))
        return [
            messages.TrialRow(trial_id=tid, metric=info["metric"], metric_std=info.get("std"),
                              val_return=info.get("val_return"), env_steps=info.get("env_steps"),
                              status=info["status"], config=info.get("config") or {})
            for tid, info in scored[: self.top_k]
        ]

    def _eta(self, elapsed: float | None, counts: Mapping[str, int]) -> float | None:
        """Remaining time from the share of the total budget consumed so far (an overestimate under ASHA, which
        stops most trials early)."""
        if elapsed is None or elapsed <= 0:
            return None
        total = sum(counts.values())
        done = 0.0
        for info in self._trials.values():
            if info["status"] in ("finished", "stopped", "errored"):
                done += 1.0
            elif info["status"] == "running" and self.max_t and info.get("env_steps"):
                done += min(1.0, info["env_steps"] / self.max_t)
        if done <= 0 or total <= 0:
            return None
        return elapsed * max(0.0, total - done) / done

    def dashboard_text(self, *, final: bool = False) -> str:
        """The dashboard as it would be sent now."""
        counts = self.counts()
        elapsed = self._wall() - self._started_at if self._started_at is not None else None
        updated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self._wall()))
        return messages.sweep_dashboard(self.experiment, metric=self.metric, mode=self.mode, counts=counts,
                                        top=self._top(), elapsed_s=elapsed, eta_s=self._eta(elapsed, counts),
                                        updated=updated, final=final)

    def _tick(self, *, force: bool = False, final: bool = False) -> None:
        now = self._clock()
        burst_due = self._burst_started is None or now - self._burst_started >= self.error_digest_s
        if self._burst and (force or burst_due):
            self._send_error_digest()
        dash_due = self._last_dashboard is None or now - self._last_dashboard >= self.edit_interval_s
        if self._dirty and (force or dash_due):
            if self._ensure_notifier() is None:
                return
            self._send(self.dashboard_text(final=final), silent=True, key=DASHBOARD_KEY, live=True)
            self._last_dashboard = now
            self._dirty = False

    def _send_error_digest(self) -> None:
        burst, self._burst, self._burst_started = self._burst, [], None
        errors = [(tid, self._trials.get(tid, {}).get("config") or {}, self._trials.get(tid, {}).get("error", ""))
                  for tid in burst]
        total_errored = sum(1 for info in self._trials.values() if info["status"] == "errored")
        tail = self._trials.get(burst[0], {}).pop("error_text", None) if burst else None
        for tid in burst[1:]:
            self._trials.get(tid, {}).pop("error_text", None)
        secrets = self._cfg.secrets if self._cfg else ()
        text = messages.sweep_errors(self.experiment, errors, total_errored=total_errored, tail=tail,
                                     secrets=secrets)
        self._send(text, critical=True)
        self._errors_reported.extend(burst)


def _cluster_resources() -> dict[str, Any] | None:
    """``{"nodes": n, "CPU": c, "GPU": g}`` from the running Ray cluster, or None (a quick local GCS query)."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        res = ray.cluster_resources()
        out: dict[str, Any] = {"nodes": sum(1 for n in ray.nodes() if n.get("Alive"))}
        for key in ("CPU", "GPU"):
            if res.get(key):
                out[key] = res[key]
        return out
    except Exception:
        return None
