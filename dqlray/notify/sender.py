"""The non-blocking notifier: ``notify()`` only enqueues; one background thread talks to Telegram.

A send inline in the training loop stalls or crashes training when Telegram is slow or absent (knockknock,
notify-run#30), and in a Tune callback it stalls every trial (ray#35721). A rate governor paces calls and holds the
chat on 429; after ``breaker_threshold`` failures, or at once when no connection can be opened, the circuit opens and
critical messages go to email and the spool.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import shlex
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dqlray.notify.credentials import NotifyConfig, load_notify_config
from dqlray.notify.redact import LOGGER_NAME, URL_LOGGERS, install_log_redaction, never_raises, redact
from dqlray.notify.spool import Spool
from dqlray.notify.telegram import TelegramApiError, TelegramClient, TelegramRetryAfter, TelegramTransportError

log = logging.getLogger(LOGGER_NAME)

MAX_BACKOFF_S = 60.0
STALL_S = 1.5
"""At exit, a call unanswered this long counts as hanging (the Bot API answers in well under a second)."""


@dataclass(kw_only=True)
class Event:
    """One message to deliver: the arguments of :meth:`Notifier.notify`; ``id`` names its spool file."""

    text: str
    critical: bool = False
    silent: bool = False
    key: str | None = None
    live: bool = False
    photo_path: str | None = None
    attachments: tuple[str, ...] = ()
    min_interval_s: float = 0.0
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: float = field(default_factory=time.time)


class RateGovernor:
    """Pacing of one chat: ``min_interval_s`` between calls, at most ``per_minute`` in any 60 s (groups; None: no
    such limit), and a 429's hold."""

    def __init__(self, min_interval_s: float, per_minute: int | None, clock: Callable[[], float] = time.monotonic):
        self.min_interval_s, self.per_minute, self._clock = min_interval_s, per_minute, clock
        self._window: collections.deque[float] = collections.deque()
        self._last = self._blocked_until = float("-inf")

    def next_allowed(self) -> float:
        """Clock time at which the next call may go."""
        while self._window and self._window[0] <= self._clock() - 60.0:
            self._window.popleft()
        t = max(self._blocked_until, self._last + self.min_interval_s)
        return max(t, self._window[0] + 60.0) if self.per_minute and len(self._window) >= self.per_minute else t

    def record(self) -> None:
        """One call went out now."""
        self._last = self._clock()
        self._window.append(self._last)

    def block(self, seconds: float) -> None:
        """Telegram said 429: no call for ``seconds``."""
        self._blocked_until = max(self._blocked_until, self._clock() + max(0.0, seconds))


class Notifier:
    """Queue + background sender for one chat. ``notify()`` never blocks on the network and never raises.

    Args:
        cfg: credentials and limits; ``None`` (nothing configured) makes every method a no-op.
        handle_sigterm: install a SIGTERM handler (main thread only; see :meth:`_on_sigterm`).
        register_atexit: close with ``exit_deadline_s`` when the interpreter exits.
        sigterm_deadline_s: SLURM sends SIGKILL about 30 s (KillWait) after SIGTERM: stay well inside it.
    """

    def __init__(self, cfg: NotifyConfig | None = None, *, handle_sigterm: bool = False, register_atexit: bool = True,
                 sigterm_deadline_s: float = 20.0, exit_deadline_s: float = 10.0) -> None:
        self.config = cfg
        """The settings (they hold the token: never store them where they are pickled); None: a no-op notifier."""
        self.enabled = cfg is not None
        self.secrets = cfg.secrets if cfg else ()
        self._cond = threading.Condition(threading.RLock())  # RLock: the SIGTERM handler may interrupt notify()
        self._queue: list[Event] = []
        self._inflight: Event | None = None
        self._inflight_since = 0.0
        self._thread: threading.Thread | None = None
        self.closed = False
        """Whether :meth:`close` ran (then nothing more is sent; critical events go to the spool)."""
        self._flushing = 0
        self._live: dict[str, tuple[int, str | None]] = {}  # key: (message id, the text it shows)
        self._key_sent_at: dict[str, float] = {}
        self._spooled: set[str] = set()
        self._shutdown_hooks: list[Callable[[], None]] = []
        self._exit_deadline_s = exit_deadline_s
        self._sigterm_deadline_s = sigterm_deadline_s
        self._prev_sigterm: Any = None
        self._atexit_registered = register_atexit and cfg is not None
        if cfg is None:
            return
        self._spool = Spool(cfg.spool_dir, self.secrets)
        self._governor = RateGovernor(cfg.min_interval_s, cfg.group_per_minute if cfg.is_group else None)
        # Circuit breaker: consecutive failures; Telegram is left alone until _open_until; retries wait for backoff.
        self._failures = 0
        self._open_until = self._backoff_until = float("-inf")
        install_log_redaction(self.secrets, (*URL_LOGGERS, LOGGER_NAME))
        if self._atexit_registered:
            atexit.register(self._atexit)
        if handle_sigterm and threading.current_thread() is threading.main_thread():
            self._prev_sigterm = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def __getstate__(self) -> None:
        raise TypeError("a Notifier holds credentials and a thread and must not be pickled")

    @never_raises
    def notify(self, text: str, *, critical: bool = False, silent: bool = False, key: str | None = None,
               live: bool = False, photo_path: str | os.PathLike[str] | None = None,
               attachments: tuple[str, ...] = (), min_interval_s: float = 0.0) -> None:
        """Enqueue one message and return at once; never raises (a failure is logged, redacted).

        ``text`` is HTML within Telegram's limit (:mod:`~dqlray.notify.messages`), a caption with ``photo_path``.
        ``critical`` ones (start, end, error, time limit) are never dropped, and are
        spooled and emailed when Telegram cannot take them; ``silent`` ones do not buzz the phone; a newer one with
        the same ``key`` replaces a queued one, and with ``live`` it is one message edited in place, at most every
        ``min_interval_s`` (ignored while flushing). ``attachments`` go with the fallback email and the relay.
        """
        if live and not key:
            raise ValueError("live=True needs a key naming the live message")
        if not self.enabled:
            return
        ev = Event(text=text, critical=critical, silent=silent, key=key, live=live,
                   photo_path=str(photo_path) if photo_path else None,
                   attachments=tuple(str(a) for a in attachments), min_interval_s=min_interval_s)
        with self._cond:
            if self.closed:  # after close (at exit): nobody will send it; keep a critical one on disk
                if ev.critical:
                    self._spool_event(ev)
                return
            self._enqueue_locked(ev)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="dqlray-notify", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def live_message_id(self, key: str) -> int | None:
        """The Telegram message id of live message ``key`` once it has been sent (for callback state)."""
        with self._cond:
            return self._live.get(key, (None,))[0]

    def set_live_message_id(self, key: str, message_id: int) -> None:
        """Adopt an existing message as live message ``key`` (a restored sweep keeps editing its dashboard)."""
        with self._cond:
            self._live[key] = (int(message_id), None)

    def add_shutdown_hook(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` (which should only enqueue) on SIGTERM, before the flush."""
        self._shutdown_hooks.append(hook)

    def pending(self) -> int:
        """Events queued or in flight."""
        with self._cond:
            return len(self._queue) + (self._inflight is not None)

    def flush(self, deadline_s: float = 10.0) -> bool:
        """Wait up to ``deadline_s`` for the queue to drain (per-key intervals ignored), but not for a call in flight
        for :data:`STALL_S` (a hanging API: the circuit opens, so later flushes end at once) nor for a 429 or backoff
        longer than that; critical events left are spooled. Returns True if everything was handled."""
        end = time.monotonic() + max(0.0, deadline_s)
        with self._cond:
            self._flushing += 1
            try:
                self._cond.notify_all()
                while (self._queue or self._inflight) and self._thread is not None and self._thread.is_alive():
                    now = time.monotonic()
                    if self._inflight is not None and now - self._inflight_since >= STALL_S:
                        self._open_until = now + self.config.breaker_cooldown_s  # a hanging API: stop trying
                        break
                    if now >= end or (self._inflight is None and not self._is_open() and self._gate() > now + STALL_S):
                        break
                    self._cond.wait(timeout=min(end - now, 0.05))
                # Still in flight now (a hanging server) is spooled too: if it lands later, the user sees it twice
                # rather than never.
                leftover = self._queue + ([self._inflight] if self._inflight else [])
                for ev in filter(lambda ev: ev.critical, leftover):
                    self._spool_event(ev)
                self._queue = [ev for ev in self._queue if not ev.critical]
                return not leftover
            finally:
                self._flushing -= 1

    def close(self, deadline_s: float = 10.0) -> None:
        """Flush with ``deadline_s``, stop the sender thread, undo the atexit/SIGTERM registration, and say in one
        stderr line how many messages wait in the spool and how to send them. Idempotent."""
        if self.closed:
            return
        try:
            self.flush(deadline_s)
        finally:
            with self._cond:
                self.closed = True
                self._queue.clear()
                self._cond.notify_all()
                spooled = len(self._spooled)
            if self._atexit_registered:
                atexit.unregister(self._atexit)
                self._atexit_registered = False
            if (self._prev_sigterm is not None and threading.current_thread() is threading.main_thread()
                    and signal.getsignal(signal.SIGTERM) == self._on_sigterm):
                signal.signal(signal.SIGTERM, self._prev_sigterm)
            if spooled:
                where = shlex.quote(str(self._spool.directory))
                print(f"dqlray notify: {spooled} message(s) could not reach Telegram and wait in the spool; send them "
                      f"from a node with internet: dqlray notify relay --spool-dir {where}", file=sys.stderr, flush=True)

    def _enqueue_locked(self, ev: Event) -> None:
        if ev.key is not None:
            for i, queued in enumerate(self._queue):
                if queued.key == ev.key:
                    ev.critical = ev.critical or queued.critical
                    self._queue[i] = ev  # latest wins, keeps its place
                    return
        routine = [e for e in self._queue if not e.critical]
        if not ev.critical and len(routine) >= self.config.queue_size:
            self._queue.remove(next((e for e in routine if e.silent), routine[0]))
        self._queue.append(ev)

    def _next_locked(self) -> tuple[Event | None, float | None]:
        """The event to deliver now, or how long to wait (None: until notified)."""
        if not self._queue:
            return None, None
        if self._is_open():
            return self._queue[0], None  # straight to fallback / drop
        now, gate = time.monotonic(), self._gate()
        if gate > now:
            return None, gate - now
        best: Event | None = None
        wake: float | None = None
        for ev in self._queue:
            if ev.key is not None and ev.min_interval_s > 0 and not self._flushing:
                due = self._key_sent_at.get(ev.key, float("-inf")) + ev.min_interval_s
                if due > now:
                    wake = due - now if wake is None else min(wake, due - now)
                    continue
            if best is None or (best.live and not ev.live):
                best = ev
                if not ev.live:
                    break
        return best, (None if best is not None else wake)

    def _run(self) -> None:
        cfg = self.config
        client = TelegramClient(cfg.token, api_base=cfg.api_base, connect_timeout_s=cfg.connect_timeout_s,
                                read_timeout_s=cfg.read_timeout_s, secrets=self.secrets)
        try:
            while True:
                with self._cond:
                    while True:
                        if self.closed:
                            return
                        ev, wait = self._next_locked()
                        if ev is not None:
                            self._queue.remove(ev)
                            self._inflight, self._inflight_since = ev, time.monotonic()
                            break
                        self._cond.wait(timeout=wait if wait is None else max(0.01, wait))
                try:
                    self._deliver(client, ev)
                except Exception as exc:  # a bug must not kill the sender; keep critical events on disk
                    log.warning("notification delivery failed: %s", redact(f"{type(exc).__name__}: {exc}", self.secrets))
                    self._fallback(ev)
                finally:
                    with self._cond:
                        self._inflight = None
                        self._cond.notify_all()
        finally:
            client.close()

    def _is_open(self) -> bool:
        return time.monotonic() < self._open_until

    def _gate(self) -> float:
        """When the next call may go: the governor's pacing, a 429 hold, or the backoff after a failure (not while
        flushing: at exit one retry now, and a hanging one stalls the flush, beats waiting out the backoff first)."""
        backoff = float("-inf") if self._flushing else self._backoff_until
        return max(backoff, self._governor.next_allowed())

    def _deliver(self, client: TelegramClient, ev: Event) -> None:
        if self._is_open():
            self._fallback(ev)
            return
        try:
            self._send(client, ev)
        except TelegramRetryAfter as exc:
            with self._cond:
                self._governor.block(exc.retry_after or 1.0)
                self._requeue_locked(ev)
            log.info("Telegram asked to wait %.0f s (429); holding messages to this chat", exc.retry_after or 1.0)
        except TelegramApiError as exc:
            if ev.live and exc.is_message_gone:
                with self._cond:  # the user deleted the live message: start a new one
                    self._live.pop(ev.key or "", None)
                    self._requeue_locked(ev)
            elif exc.is_server_error or exc.is_unauthorized or exc.is_chat_not_found or exc.error_code == 403:
                # A wrong token/chat: nothing will get through, fall back now; a 5xx: retry later.
                self._failure(ev, str(exc), immediate=not exc.is_server_error)
            else:
                log.warning("Telegram refused a message: %s", redact(exc, self.secrets))
                self._fallback(ev)
        except TelegramTransportError as exc:
            self._failure(ev, str(exc), immediate=exc.unreachable)
        else:
            with self._cond:
                self._failures, self._open_until, self._backoff_until = 0, float("-inf"), float("-inf")
                if ev.key is not None:
                    self._key_sent_at[ev.key] = time.monotonic()

    def _send(self, client: TelegramClient, ev: Event) -> None:
        cfg = self.config
        with self._cond:
            mid, shown = self._live.get(ev.key or "", (None, None)) if ev.live else (None, None)
        if mid is not None and shown == ev.text:
            return  # the live message already says this: no call at all
        self._governor.record()
        if ev.photo_path and Path(ev.photo_path).is_file():
            client.send_photo(cfg.chat_id, ev.photo_path, ev.text, silent=ev.silent, thread_id=cfg.message_thread_id)
        elif mid is not None:
            client.edit_message_text(cfg.chat_id, mid, ev.text)
        else:
            mid = client.send_message(cfg.chat_id, ev.text, silent=ev.silent, thread_id=cfg.message_thread_id)
        if ev.live and mid is not None:
            with self._cond:
                self._live[ev.key or ""] = (mid, ev.text)

    def _requeue_locked(self, ev: Event) -> None:
        if not any(ev.key is not None and q.key == ev.key for q in self._queue):  # else a newer version is queued
            self._queue.insert(0, ev)

    def _failure(self, ev: Event, reason: str, *, immediate: bool) -> None:
        with self._cond:
            self._failures += 1
            opened = immediate or self._failures >= self.config.breaker_threshold
            if opened:  # after breaker_threshold failures, or at once when no connection can be opened
                self._open_until = time.monotonic() + self.config.breaker_cooldown_s
            else:
                delay = min(MAX_BACKOFF_S, self.config.retry_backoff_s * 2 ** (self._failures - 1))
                self._backoff_until = time.monotonic() + delay
                self._requeue_locked(ev)
        if opened:
            log.warning("Telegram unavailable (%s); for the next %.0f s critical messages go to %s",
                        redact(reason, self.secrets), self.config.breaker_cooldown_s,
                        f"email and the spool {self._spool.directory}" if self.config.smtp
                        else f"the spool {self._spool.directory} (relay them with: dqlray notify relay)")
            self._fallback(ev)

    def _fallback(self, ev: Event) -> None:
        """Email and spool a critical event; drop a routine one."""
        if not ev.critical:
            return
        self._spool_event(ev)
        smtp = self.config.smtp
        if smtp is None:
            return
        from dqlray.notify.mail import EmailError, send_email

        try:
            send_email(smtp, ev.text, attachments=(*ev.attachments, *filter(None, [ev.photo_path])),
                       secrets=self.secrets)
        except EmailError as exc:
            log.warning("%s", redact(exc, self.secrets))

    def _spool_event(self, ev: Event) -> None:
        try:
            self._spool.put(event_id=ev.id, created=ev.created, text=ev.text, silent=ev.silent,
                            photo_path=ev.photo_path, attachments=ev.attachments)
            with self._cond:
                self._spooled.add(ev.id)
        except Exception as exc:
            log.error("could not spool a critical notification to %s: %s", self._spool.directory,
                      redact(f"{type(exc).__name__}: {exc}", self.secrets))

    def _atexit(self) -> None:
        self._atexit_registered = False
        self.close(self._exit_deadline_s)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        """The program's own SIGTERM handler, if it has one, runs at once (a graceful stop that will report and close
        us; blocking here would eat SLURM's KillWait); an ignored SIGTERM stays ignored; else run the shutdown hooks
        (⏰ message), flush with ``sigterm_deadline_s`` and die of SIGTERM as before."""
        prev = self._prev_sigterm
        if callable(prev):
            prev(signum, frame)
            return
        if prev == signal.SIG_IGN:
            return
        for hook in list(self._shutdown_hooks):
            try:
                hook()
            except Exception as exc:
                log.warning("shutdown hook failed: %s", redact(exc, self.secrets))
        self.close(self._sigterm_deadline_s)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)  # exit status 143 for SLURM and the shell, as without us


# Deliberately process-wide, against the no-global-state rule (issue 15): a process has one SIGTERM handler and one
# exit, and a Tune callback unpickled by ``Tuner.restore`` must find the notifier the sweep driver made.
_process: dict[str, Notifier] = {}


def get_notifier(*, token: str | None = None, chat_id: str | int | None = None,
                 config_file: str | os.PathLike[str] | None = None) -> Notifier:
    """This process's notifier, shared by the run, the sweep driver and the Tune callback: made on first use (and
    after :meth:`Notifier.close`) by :func:`~dqlray.notify.credentials.load_notify_config` with these arguments, with
    the SIGTERM handler; a no-op one when nothing is configured. Later calls ignore the arguments."""
    current = _process.get("notifier")
    if current is None or current.closed:
        current = _process["notifier"] = Notifier(load_notify_config(token, chat_id, config_file),
                                                  handle_sigterm=True)
    return current
