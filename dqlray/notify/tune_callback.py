"""A Ray Tune callback that keeps one live Telegram dashboard for a sweep, counting configurations.

Tune calls callbacks inside the driver's event loop, so a blocking send would stall every trial (ray#35721): hooks
only count and enqueue, and never raise. Tune pickles callbacks: the notifier (and so the token) is never pickled; a
restored callback uses the process's notifier (:func:`~dqlray.notify.sender.get_notifier`) and its saved state, so a
resumed sweep edits the same dashboard and resends nothing. Progress is in episodes; a packed trial (issue 14)
counts as its configurations, each with its part of the pack's result (``members``).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from ray.tune import Callback

from dqlray.metrics import finite_or_none
from dqlray.notify import messages
from dqlray.notify.credentials import NotifyConfig
from dqlray.notify.redact import LOGGER_NAME, never_raises, redact
from dqlray.notify.sender import Notifier, get_notifier
from dqlray.tuning.members import members_of

log = logging.getLogger(LOGGER_NAME)

DASHBOARD_KEY = "dashboard"
STATE_VERSION = 1
_RUNTIME = {"_notifier": None, "_burst_started": None, "_last_dashboard": None, "_clock": time.monotonic}
"""Attributes that are not pickled (the notifier holds the token; the timers are of this process), and their value
after unpickling."""
_SAVED = ("chat", "dashboard_message_id", "start_sent", "started_at", "trials", "errors_reported", "errors_pending")
"""The attributes :meth:`TelegramTuneCallback.get_state` saves, by their keys in the state."""
_MEMBER_STATUS = {"active": "running", "finished": "finished", "stopped": "stopped", "diverged": "errored"}
"""A packed trial's configuration status (:mod:`dqlray.pack`) as the dashboard counts it."""


def _chat_fingerprint(cfg: NotifyConfig | None) -> str | None:
    """A short hash naming the chat (and API server) without storing the chat id itself."""
    return hashlib.sha256(f"{cfg.api_base}|{cfg.chat_id}".encode()).hexdigest()[:16] if cfg else None


def _error_text(trial: Any) -> str:
    """An errored trial's error: ``error_msg`` (tests, older Ray) or the tail of ``error_file`` (a small local file;
    Ray 2.60 writes it before calling ``on_trial_error``)."""
    msg = getattr(trial, "error_msg", None)
    if msg:
        return str(msg)
    try:
        with open(getattr(trial, "error_file", None) or "", "rb") as fh:
            fh.seek(max(0, fh.seek(0, 2) - 16384))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


class TelegramTuneCallback(Callback):
    """Live Telegram dashboard for a Ray Tune sweep. Unit-testable without a cluster: hooks need only objects with
    ``trial_id``, ``config`` and ``last_result``.

    Args:
        experiment: sweep name shown in every message.
        notifier: the process's notifier; by default (and after ``Tuner.restore``) :func:`get_notifier`'s.
        metric, mode: the metric trials are ranked by (``val_sharpe``, ``max``).
        num_samples: number of configurations (else Tune's ``total_num_samples`` from ``setup``).
        space_summary: ``{name: description}`` of the search space for the start message (not raw config).
        max_t: ASHA's budget in episodes; a trial that completes below it was stopped early by ASHA.
        edit_interval_s: least time between two dashboard edits (30 s: far below Telegram's 20/min to groups).
        error_digest_s: errored trials within this window after the first one are reported in one message.
        top_k: trials listed in the dashboard.
        resources: cluster resources for the start message; default ``ray.cluster_resources()``.
        end_flush_s: at ``on_experiment_end`` wait at most this long for the last messages (trials are done then).
        clock: the monotonic clock of the throttles (tests step it instead of sleeping).
    """

    def __init__(self, *, experiment: str, notifier: Notifier | None = None, metric: str = "val_sharpe",
                 mode: str = "max", num_samples: int | None = None,
                 space_summary: Mapping[str, Any] | None = None, max_t: int | None = None,
                 edit_interval_s: float = 30.0, error_digest_s: float = 60.0, top_k: int = 5,
                 resources: Mapping[str, Any] | None = None, end_flush_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not experiment:
            raise ValueError(f"experiment={experiment!r} is not allowed: give a non-empty name")
        if mode not in ("max", "min"):
            raise ValueError(f"mode={mode!r} is not allowed: use 'max' or 'min'")
        if min(edit_interval_s, error_digest_s, end_flush_s) < 0:
            raise ValueError(f"edit_interval_s={edit_interval_s!r}, error_digest_s={error_digest_s!r}, "
                             f"end_flush_s={end_flush_s!r}: each must be >= 0 seconds")
        if top_k < 1:
            raise ValueError(f"top_k={top_k!r} is not allowed: use an integer >= 1")
        if max_t is not None and max_t <= 0:
            raise ValueError(f"max_t={max_t!r} is not allowed: use a positive budget in episodes or None")
        self.experiment, self.metric, self.mode, self.num_samples = experiment, metric, mode, num_samples
        self.space_summary = dict(space_summary) if space_summary else None
        self.max_t, self.top_k = max_t, top_k
        self.edit_interval_s, self.error_digest_s = float(edit_interval_s), float(error_digest_s)
        self.resources = dict(resources) if resources is not None else None
        self.end_flush_s = float(end_flush_s)
        self._notifier, self._burst_started, self._last_dashboard = notifier, None, None
        self._clock = clock
        # The saved state (get_state): nothing secret. ``chat`` names the chat the dashboard message is in.
        self.chat = _chat_fingerprint(notifier.config) if notifier else None
        self.dashboard_message_id: int | None = None
        self.start_sent = False
        self.started_at: float | None = None
        self.trials: dict[str, dict[str, Any]] = {}
        self.errors_reported: list[str] = []
        self.errors_pending: list[str] = []
        self._dirty = False

    # ----------------------------------------------------------------------------------------------- state ---

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in _RUNTIME}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, **_RUNTIME)

    @property
    def notifier(self) -> Notifier:
        """The notifier given; after ``Tuner.restore`` (which unpickles this callback without one) the process's."""
        if self._notifier is None:
            self._notifier = get_notifier()
            self._adopt_dashboard()
        return self._notifier

    @property
    def secrets(self) -> tuple[str, ...]:
        """Literal secrets to redact (none while no notifier is attached; never raises: used to log failures)."""
        return self._notifier.secrets if self._notifier else ()

    def _adopt_dashboard(self) -> None:
        """Keep editing the saved dashboard message, if it is in this notifier's chat."""
        fp = _chat_fingerprint(self.notifier.config)
        if fp is None:
            return  # notifications off: keep the saved ids for a later restore that has credentials
        if fp != self.chat:
            self.dashboard_message_id = None  # another chat: its message ids mean nothing
        self.chat = fp
        if self.dashboard_message_id is not None:
            self.notifier.set_live_message_id(DASHBOARD_KEY, self.dashboard_message_id)

    @never_raises
    def get_state(self) -> dict[str, Any] | None:
        """What a restored sweep needs to edit the same dashboard and resend nothing (no secrets)."""
        self.dashboard_message_id = self.notifier.live_message_id(DASHBOARD_KEY) or self.dashboard_message_id
        return copy.deepcopy({"version": STATE_VERSION, "experiment": self.experiment,
                              **{key: getattr(self, key) for key in _SAVED}})

    @never_raises
    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`'s dict (Tune calls this before ``setup`` on ``Tuner.restore``)."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            log.warning("ignoring Telegram callback state of an unknown version")
            return
        for key in _SAVED:
            setattr(self, key, copy.deepcopy(state.get(key, getattr(self, key))))
        for info in self.trials.values():  # before issue 15 the episode count was stored as "env_steps"
            info.setdefault("episodes", info.pop("env_steps", None))
        self._burst_started = self._clock() if self.errors_pending else None
        self._adopt_dashboard()
        self._dirty = True

    # ------------------------------------------------------------------------------------------------ hooks ---

    @never_raises
    def setup(self, stop: Any = None, num_samples: int | None = None, total_num_samples: int | None = None,
              **info: Any) -> None:
        """Send the 🚀 start message (once per sweep, not again after a restore)."""
        if self.num_samples is None:
            self.num_samples = total_num_samples or num_samples
        if self.started_at is None:
            self.started_at = time.time()
        if self.start_sent or not self.notifier.enabled:
            return
        resources = self.resources if self.resources is not None else _cluster_resources()
        self.notifier.notify(messages.sweep_start(self.experiment, metric=self.metric, mode=self.mode,
                                                  num_samples=self.num_samples, space_summary=self.space_summary,
                                                  resources=resources, max_t=self.max_t), critical=True)
        self.start_sent = True

    @never_raises
    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Count the trial's configurations as running (those that have not already ended)."""
        for _, entry, _ in self._configs(trial, {}):
            if entry["status"] == "pending":
                entry["status"] = "running"
        self._tick(dirty=True)

    @never_raises
    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        """Record the latest metrics of the trial's configurations; edit the dashboard if ``edit_interval_s`` has
        passed."""
        for _, entry, part in self._configs(trial, result):
            self._record(entry, part, "running")
        self._tick(dirty=True)

    @never_raises
    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Count the trial's configurations as finished, or as stopped by ASHA when they ended below ``max_t``
        episodes (a pack's result says how each one ended)."""
        for _, entry, part in self._configs(trial, getattr(trial, "last_result", None) or {}):
            self._record(entry, part, entry["status"])
            if entry["status"] in ("pending", "running"):
                episodes = entry.get("episodes")
                entry["status"] = "stopped" if self.max_t and episodes is not None and episodes < self.max_t \
                    else "finished"
        self._tick(dirty=True)

    @never_raises
    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Count the trial's unfinished configurations as errored and add them to the current burst (one ❌ digest
        per burst)."""
        text, secrets = _error_text(trial), self.notifier.secrets
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        error = redact((lines[-1] if lines else "error (no message)")[:500], secrets)
        for key, entry, part in self._configs(trial, getattr(trial, "last_result", None) or {}):
            self._record(entry, part, entry["status"])
            if entry["status"] in ("finished", "stopped") and key != str(trial.trial_id):
                continue  # it had left its pack before the pack failed
            entry["status"], entry["error"] = "errored", error
            if key not in self.errors_reported and key not in self.errors_pending:
                self.errors_pending.append(key)
                entry["error_text"] = redact(text[-4000:], secrets)
                if self._burst_started is None:
                    self._burst_started = self._clock()
        self._tick(dirty=True)

    @never_raises
    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        """Time-based work: the pending error digest and the throttled dashboard edit."""
        self._tick()

    @never_raises
    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """Send the error digest and the final dashboard, then wait at most ``end_flush_s`` for delivery."""
        try:
            for trial in trials or []:
                tid = str(getattr(trial, "trial_id", ""))
                if tid in self.trials and str(getattr(trial, "status", "")) == "ERROR":
                    self.trials[tid]["status"] = "errored"
            # The final edit says "finished" and drops the estimate, even with no new result.
            self._tick(dirty=True, force=True, final=True)
        finally:
            self.notifier.flush(self.end_flush_s)
            self.dashboard_message_id = self.notifier.live_message_id(DASHBOARD_KEY) or self.dashboard_message_id

    # -------------------------------------------------------------------------------------------- internals ---

    def _configs(self, trial: Any, result: Mapping[str, Any]) -> list[tuple[str, dict[str, Any], Any]]:
        """What the dashboard counts in a trial, as ``(key, entry, its part of result)``: each configuration of a
        pack (issue 14; None where the result has no part for it), else the trial itself (the whole result)."""
        config = getattr(trial, "config", None) or {}
        pack = config.get("pack") if isinstance(config, Mapping) else None
        if not isinstance(pack, list):
            return [(str(trial.trial_id), self._entry(str(trial.trial_id), config), result)]
        parts = members_of(dict(result))
        return [(str(m["id"]), self._entry(str(m["id"]), m.get("params") or {}), parts.get(str(m["id"])))
                for m in pack]

    def _entry(self, key: str, config: Mapping[str, Any]) -> dict[str, Any]:
        """The dashboard's entry of one configuration (made pending on first sight)."""
        if key not in self.trials:
            self.trials[key] = {"status": "pending", "config": dict(messages.summarize_config(config, max_items=8)),
                                 "metric": None, "std": None, "val_return": None, "episodes": None}
        return self.trials[key]

    def _record(self, entry: dict[str, Any], result: Mapping[str, Any] | None, status: str) -> None:
        """Take the metrics of ``result`` (None: nothing to take); the status is a pack member's own, else ``status``."""
        if result is None:
            return
        for name, key in (("metric", self.metric), ("std", f"{self.metric}_std"), ("val_return", "val_return"),
                          ("episodes", "episodes")):
            value = finite_or_none(result.get(key))
            if value is not None:
                entry[name] = int(value) if name == "episodes" else value
        entry["status"] = _MEMBER_STATUS.get(str(result.get("status")), status)

    def counts(self) -> dict[str, int]:
        """Configurations per status: running, finished, stopped (by ASHA), errored, pending."""
        c = {"running": 0, "finished": 0, "stopped": 0, "errored": 0, "pending": 0}
        for info in self.trials.values():
            c[info["status"]] = c.get(info["status"], 0) + 1
        total = self.num_samples if self.num_samples and self.num_samples > 0 else len(self.trials)
        c["pending"] = max(c["pending"], total - sum(v for k, v in c.items() if k != "pending"))
        return c

    def _eta(self, elapsed: float | None, counts: Mapping[str, int]) -> float | None:
        """Remaining time from the share of the total budget consumed so far (an overestimate under ASHA, which
        stops most trials early)."""
        if elapsed is None or elapsed <= 0:
            return None
        done = 0.0
        for info in self.trials.values():
            if info["status"] in ("finished", "stopped", "errored"):
                done += 1.0
            elif info["status"] == "running" and self.max_t and info.get("episodes"):
                done += min(1.0, info["episodes"] / self.max_t)
        total = sum(counts.values())
        return elapsed * max(0.0, total - done) / done if done > 0 and total > 0 else None

    def dashboard_text(self, *, final: bool = False) -> str:
        """The dashboard as it would be sent now: the ``top_k`` configurations by the metric, best first."""
        counts = self.counts()
        elapsed = time.time() - self.started_at if self.started_at is not None else None
        sign = -1.0 if self.mode == "max" else 1.0
        top = sorted(((tid, info) for tid, info in self.trials.items() if info.get("metric") is not None),
                     key=lambda item: (sign * item[1]["metric"], item[0]))[: self.top_k]
        return messages.sweep_dashboard(self.experiment, metric=self.metric, mode=self.mode, counts=counts, top=top,
                                        elapsed_s=elapsed, eta_s=self._eta(elapsed, counts), final=final,
                                        updated=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time())))

    def _tick(self, *, dirty: bool = False, force: bool = False, final: bool = False) -> None:
        self._dirty = self._dirty or dirty
        now = self._clock()
        if self.errors_pending and (force or self._burst_started is None or now - self._burst_started >= self.error_digest_s):
            self._send_error_digest()
        if self._dirty and (force or self._last_dashboard is None or now - self._last_dashboard >= self.edit_interval_s):
            self.notifier.notify(self.dashboard_text(final=final), silent=True, key=DASHBOARD_KEY, live=True)
            self._last_dashboard, self._dirty = now, False

    def _send_error_digest(self) -> None:
        burst, self.errors_pending, self._burst_started = self.errors_pending, [], None
        entries = [self.trials.get(tid, {}) for tid in burst]
        errors = [(tid, e.get("config") or {}, e.get("error", "")) for tid, e in zip(burst, entries, strict=True)]
        tails = [e.pop("error_text", None) for e in entries]  # the tails are sent once, never saved
        total_errored = sum(1 for info in self.trials.values() if info["status"] == "errored")
        self.notifier.notify(messages.sweep_errors(self.experiment, errors, total_errored=total_errored, tail=tails[0],
                                                   secrets=self.notifier.secrets), critical=True)
        self.errors_reported.extend(burst)


def _cluster_resources() -> dict[str, Any] | None:
    """``{"nodes": n, "CPU": c, "GPU": g}`` from the running Ray cluster, or None (a quick local GCS query)."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        res = ray.cluster_resources()
        return {"nodes": sum(1 for n in ray.nodes() if n.get("Alive")), **{k: res[k] for k in ("CPU", "GPU") if res.get(k)}}
    except Exception:
        return None
