"""The non-blocking notifier: ``notify()`` only enqueues; one background thread talks to Telegram.

Why: a send inline in the training loop stalls or crashes training when Telegram is slow or absent
(knockknock, notify-run#30), and a blocking send in a Tune callback stalls every trial (ray#35721).

* Bounded queue; critical events (error, finished, time limit) are never dropped; keyed events are coalesced,
  latest wins (progress, dashboard); when full, the oldest routine event goes first.
* First in, first out, except that live (edited-in-place) updates yield to everything else: they are snapshots
  whose place in the chat does not matter, while start/checkpoint/error/end should read in order.
* Per-chat rate governor: at least ``min_interval_s`` between messages (edits count) and at most
  ``group_per_minute`` per rolling minute to a group; a 429 holds the chat for ``retry_after``.
* Circuit breaker: after ``breaker_threshold`` consecutive failures, or at once when no connection can be opened,
  Telegram is left alone for ``breaker_cooldown_s`` and critical events go to email and the disk spool.
* ``flush(deadline_s)`` at exit (atexit) and on SIGTERM: whatever critical is still queued at the deadline is spooled.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dqlray.notify.credentials import NotifyConfig
from dqlray.notify.redact import URL_LOGGERS, install_log_redaction, redact
from dqlray.notify.spool import Spool
from dqlray.notify.telegram import (
    MESSAGE_LIMIT,
    TelegramApiError,
    TelegramClient,
    TelegramRetryAfter,
    TelegramTransportError,
    split_html,
    truncate_html,
)

LOGGER_NAME = "dqlray.notify"
log = logging.getLogger(LOGGER_NAME)

MAX_BACKOFF_S = 60.0


@dataclass
class Event:
    """One message to deliver. Built by :class:`Notifier.notify`; text is HTML with dynamic values escaped."""

    text: str
    """HTML text (a photo's caption when ``photo_path`` is set)."""
    critical: bool = False
    """Never dropped; spooled (and emailed) when Telegram cannot take it."""
    silent: bool = False
    """``disable_notification``: routine updates do not buzz the phone."""
    key: str | None = None
    """Coalescing key: a newer event with the same key replaces a queued one (latest wins)."""
    live: bool = False
    """With ``key``: one message that is sent once, then edited in place."""
    photo_path: str | None = None
    """Send this picture with ``text`` as its caption."""
    fallback: bool = False
    """Also email/spool this non-critical event when Telegram cannot take it (start messages)."""
    attachments: tuple[str, ...] = ()
    """Pictures attached to the fallback email and sent after the text by the relay."""
    min_interval_s: float = 0.0
    """With ``key``: least time between two deliveries of this key (ignored while flushing)."""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    """Unique id (names the spool file, so spooling twice writes one file)."""
    created: float = field(default_factory=time.time)
    """Unix time of creation."""

    @property
    def to_fallback(self) -> bool:
        """Whether this event goes to email/spool when Telegram cannot take it."""
        return self.critical or self.fallback


class RateGovernor:
    """Per-chat pacing: ``min_interval_s`` between calls, ``group_per_minute`` in any 60 s to groups, 429 holds."""

    def __init__(self, min_interval_s: float, group_per_minute: int, clock: Callable[[], float]) -> None:
        self.min_interval_s = min_interval_s
        self.group_per_minute = group_per_minute
        self._clock = clock
        self._last: dict[str, float] = {}
        self._window: dict[str, collections.deque[float]] = {}
        self._blocked_until: dict[str, float] = {}

    def next_allowed(self, chat: str, is_group: bool) -> float:
        """Clock time at which the next call to ``chat`` may go."""
        t = self._blocked_until.get(chat, float("-inf"))
        last = self._last.get(chat)
        if last is not None:
            t = max(t, last + self.min_interval_s)
        if is_group:
            window = self._window.get(chat)
            if window:
                now = self._clock()
                while window and window[0] <= now - 60.0:
                    window.popleft()
                if len(window) >= self.group_per_minute:
                    t = max(t, window[0] + 60.0)
        return t

    def record(self, chat: str, is_group: bool) -> None:
        """One call to ``chat`` went out now."""
        now = self._clock()
        self._last[chat] = now
        if is_group:
            self._window.setdefault(chat, collections.deque()).append(now)

    def block(self, chat: str, seconds: float) -> None:
        """Telegram said 429: nothing to ``chat`` for ``seconds``."""
        self._blocked_until[chat] = max(self._blocked_until.get(chat, 0.0), self._clock() + max(0.0, seconds))


class CircuitBreaker:
    """Closed (use Telegram) until ``threshold`` consecutive failures; then open for ``cooldown_s``; then one try."""

    def __init__(self, threshold: int, cooldown_s: float, clock: Callable[[], float]) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self.failures = 0
        self.open_until: float | None = None

    def is_open(self) -> bool:
        """Whether Telegram is being left alone right now."""
        return self.open_until is not None and self._clock() < self.open_until

    def record_success(self) -> None:
        """A call went through: close."""
        self.failures = 0
        self.open_until = None

    def record_failure(self, *, immediate: bool = False) -> bool:
        """A call failed; returns True if the breaker (re)opened now."""
        self.failures += 1
        if immediate or self.failures >= self.threshold:
            self.open_until = self._clock() + self.cooldown_s
            return True
        return False


class Notifier:
    """Queue + background sender for one chat. ``notify()`` never blocks on the network and never raises.

    Args:
        cfg: credentials and limits.
        clock: monotonic clock (injectable for tests).
        handle_sigterm: install a SIGTERM handler (main thread only). If the program already has its own
            handler, SIGTERM goes straight to it (the program stays in charge and reports/closes itself); if the
            default action (death) was in force, the handler runs the shutdown hooks (⏰ message), flushes with
            ``sigterm_deadline_s`` and then dies of SIGTERM as before; an ignored SIGTERM stays ignored.
        register_atexit: flush with ``exit_deadline_s`` when the interpreter exits.
        sigterm_deadline_s: SLURM sends SIGKILL about 30 s (KillWait) after SIGTERM; stay well inside it.
        exit_deadline_s: flush deadline at interpreter exit.
    """

    def __init__(
        self,
        cfg: NotifyConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        handle_sigterm: bool = False,
        register_atexit: bool = True,
        sigterm_deadline_s: float = 20.0,
        exit_deadline_s: float = 10.0,
    ) -> None:
        self._cfg = cfg
        self._clock = clock
        self._secrets = cfg.secrets
        self._spool = Spool(cfg.spool_dir, self._secrets)
        self._cond = threading.Condition(threading.RLock())  # RLock: the SIGTERM handler may interrupt notify()
        self._queue: list[Event] = []
        self._inflight: Event | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        self._flushing = 0
        self._live_ids: dict[str, int] = {}
        self._live_text: dict[str, str] = {}
        self._key_sent_at: dict[str, float] = {}
        self._governor = RateGovernor(cfg.min_interval_s, cfg.group_per_minute, clock)
        self._breaker = CircuitBreaker(cfg.breaker_threshold, cfg.breaker_cooldown_s, clock)
        self._backoff_until = float("-inf")
        self._stats: collections.Counter[str] = collections.Counter()
        self._shutdown_hooks: list[Callable[[], None]] = []
        self._exit_deadline_s = exit_deadline_s
        self._sigterm_deadline_s = sigterm_deadline_s
        self._prev_sigterm: Any = None
        self._sigterm_installed = False
        install_log_redaction(self._secrets, (*URL_LOGGERS, LOGGER_NAME))
        if register_atexit:
            atexit.register(self._atexit)
        self._atexit_registered = register_atexit
        if handle_sigterm:
            self._install_sigterm()

    def __repr__(self) -> str:
        return f"Notifier(chat={self._cfg.chat_id!r}, api_base={self._cfg.api_base!r})"

    def __getstate__(self) -> None:
        raise TypeError("a Notifier holds credentials and a thread and must not be pickled")

    # ------------------------------------------------------------------------------------------- public API ---

    @property
    def config(self) -> NotifyConfig:
        """The configuration (holds the token: do not store it anywhere that is pickled)."""
        return self._cfg

    @property
    def spool(self) -> Spool:
        """The fallback spool."""
        return self._spool

    def notify(
        self,
        text: str,
        *,
        critical: bool = False,
        silent: bool = False,
        key: str | None = None,
        live: bool = False,
        photo_path: str | os.PathLike[str] | None = None,
        fallback: bool = False,
        attachments: tuple[str, ...] = (),
        min_interval_s: float = 0.0,
    ) -> None:
        """Enqueue one message and return at once; never raises (a failure is logged, redacted)."""
        try:
            if live and not key:
                raise ValueError("live=True needs a key naming the live message")
            ev = Event(text=text, critical=critical, silent=silent, key=key, live=live,
                       photo_path=str(photo_path) if photo_path else None, fallback=fallback,
                       attachments=tuple(str(a) for a in attachments), min_interval_s=min_interval_s)
            self.submit(ev)
        except Exception as exc:  # never let a notification hurt the caller
            log.warning("notification not queued: %s", redact(f"{type(exc).__name__}: {exc}", self._secrets))

    def submit(self, ev: Event) -> None:
        """Enqueue a prepared :class:`Event` (split into several if its text is too long for one message)."""
        if ev.photo_path or ev.live:
            events = [ev]
            if ev.live:
                ev.text = truncate_html(ev.text)  # a live message is edited in place: it must stay one message
        else:
            parts = split_html(ev.text, MESSAGE_LIMIT)
            events = [ev] if len(parts) <= 1 else [
                Event(text=p, critical=ev.critical, silent=ev.silent, fallback=ev.fallback,
                      attachments=ev.attachments if i == len(parts) - 1 else (), created=ev.created,
                      id=f"{ev.id}-{i}")
                for i, p in enumerate(parts)
            ]
        with self._cond:
            if self._closed:
                # After close (at exit): nobody will send it; keep critical ones on disk.
                for e in events:
                    if e.to_fallback:
                        self._spool_event(e)
                return
            for e in events:
                self._enqueue_locked(e)
            self._ensure_thread_locked()
            self._cond.notify_all()

    def live_message_id(self, key: str) -> int | None:
        """The Telegram message id of live message ``key`` once it has been sent (for callback state)."""
        with self._cond:
            return self._live_ids.get(key)

    def set_live_message_id(self, key: str, message_id: int | None, text: str | None = None) -> None:
        """Adopt an existing message as live message ``key`` (a restored sweep keeps editing its dashboard)."""
        with self._cond:
            if message_id is None:
                self._live_ids.pop(key, None)
                self._live_text.pop(key, None)
            else:
                self._live_ids[key] = int(message_id)
                if text is not None:
                    self._live_text[key] = text

    def add_shutdown_hook(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` (which should only enqueue) on SIGTERM, before the flush."""
        self._shutdown_hooks.append(hook)

    def stats(self) -> dict[str, int]:
        """Counters: sent, edited, photos, dropped, coalesced, spooled, emailed, failures, rate_limited."""
        with self._cond:
            return dict(self._stats)

    def pending(self) -> int:
        """Events queued or in flight."""
        with self._cond:
            return len(self._queue) + (self._inflight is not None)

    def flush(self, deadline_s: float = 10.0) -> bool:
        """Wait up to ``deadline_s`` for the queue to drain (per-key intervals ignored). At the deadline, critical
        and fallback events still queued or in flight are spooled. Returns True if everything was handled."""
        end = self._clock() + max(0.0, deadline_s)
        with self._cond:
            self._flushing += 1
            try:
                self._cond.notify_all()
                while self._queue or self._inflight is not None:
                    if self._thread is None or not self._thread.is_alive():
                        break
                    remaining = end - self._clock()
                    if remaining <= 0:
                        break
                    self._cond.wait(timeout=min(remaining, 0.5))
                leftover = list(self._queue)
                if self._inflight is not None:
                    # Still in flight at the deadline (a hanging server): spool it as well. If the request does
                    # land later, the user sees it twice rather than never.
                    leftover.append(self._inflight)
                done = not leftover
                for ev in leftover:
                    if ev.to_fallback:
                        if ev in self._queue:
                            self._queue.remove(ev)
                        self._spool_event(ev)
                return done
            finally:
                self._flushing -= 1

    def close(self, deadline_s: float = 10.0) -> None:
        """Flush with ``deadline_s``, stop the sender thread, undo the atexit/SIGTERM registration. Idempotent."""
        with self._cond:
            if self._closed:
                return
        try:
            self.flush(deadline_s)
        finally:
            with self._cond:
                self._closed = True
                self._stopping = True
                dropped = len(self._queue)
                self._queue.clear()
                self._stats["dropped"] += dropped
                self._cond.notify_all()
            if self._atexit_registered:
                atexit.unregister(self._atexit)
                self._atexit_registered = False
            self._uninstall_sigterm()

    # ----------------------------------------------------------------------------------------------- queue ---

    def _enqueue_locked(self, ev: Event) -> None:
        if ev.key is not None:
            for i, queued in enumerate(self._queue):
                if queued.key == ev.key:
                    ev.critical = ev.critical or queued.critical
                    self._queue[i] = ev  # latest wins, keeps its place
                    self._stats["coalesced"] += 1
                    return
        if not ev.critical:
            routine = [e for e in self._queue if not e.critical]
            if len(routine) >= self._cfg.queue_size:
                victim = next((e for e in routine if e.silent), routine[0])
                self._queue.remove(victim)
                self._stats["dropped"] += 1
        self._queue.append(ev)

    def _ensure_thread_locked(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="dqlray-notify", daemon=True)
            self._thread.start()

    def _next_locked(self) -> tuple[Event | None, float | None]:
        """The event to deliver now, or how long to wait (None: until notified)."""
        if not self._queue:
            return None, None
        now = self._clock()
        if self._breaker.is_open():
            return self._queue[0], None  # straight to fallback / drop
        gate = max(self._backoff_until,
                   self._governor.next_allowed(self._cfg.chat_id, self._cfg.is_group))
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
        client = TelegramClient(
            self._cfg.token,
            api_base=self._cfg.api_base,
            connect_timeout_s=self._cfg.connect_timeout_s,
            read_timeout_s=self._cfg.read_timeout_s,
            max_retry_wait_s=0.0,  # 429s are the governor's business, so they never block other work here
            secrets=self._secrets,
        )
        try:
            while True:
                with self._cond:
                    while True:
                        if self._stopping:
                            return
                        ev, wait = self._next_locked()
                        if ev is not None:
                            self._queue.remove(ev)
                            self._inflight = ev
                            break
                        self._cond.wait(timeout=wait if wait is None else max(0.01, wait))
                try:
                    self._deliver(client, ev)
                except Exception as exc:  # a bug must not kill the sender; keep critical events on disk
                    log.warning("notification delivery failed: %s",
                                redact(f"{type(exc).__name__}: {exc}", self._secrets))
                    self._fallback(ev)
                finally:
                    with self._cond:
                        self._inflight = None
                        self._cond.notify_all()
        finally:
            client.close()

    # -------------------------------------------------------------------------------------------- delivery ---

    def _deliver(self, client: TelegramClient, ev: Event) -> None:
        if self._breaker.is_open():
            self._fallback(ev)
            return
        cfg = self._cfg
        try:
            self._send(client, ev)
        except TelegramRetryAfter as exc:
            with self._cond:
                self._stats["rate_limited"] += 1
                self._governor.block(cfg.chat_id, exc.retry_after or 1.0)
                self._requeue_locked(ev)
            log.info("Telegram asked to wait %.0f s (429); holding messages to this chat", exc.retry_after or 1.0)
        except TelegramApiError as exc:
            if ev.live and exc.is_message_gone:
                with self._cond:  # the user deleted the live message: start a new one
                    self._live_ids.pop(ev.key or "", None)
                    self._live_text.pop(ev.key or "", None)
                    self._requeue_locked(ev)
            elif exc.is_server_error:
                self._failure(ev, str(exc), immediate=False)
            elif exc.is_unauthorized or exc.is_chat_not_found or exc.error_code == 403:
                # Nothing will get through with this token/chat: fall back now, say why once.
                self._failure(ev, str(exc), immediate=True)
            else:
                log.warning("Telegram refused a message: %s", redact(exc, self._secrets))
                with self._cond:
                    self._stats["refused"] += 1
                if ev.to_fallback:
                    self._fallback(ev)
        except TelegramTransportError as exc:
            self._failure(ev, str(exc), immediate=exc.unreachable)
        else:
            with self._cond:
                self._breaker.record_success()
                self._backoff_until = float("-inf")
                if ev.key is not None:
                    self._key_sent_at[ev.key] = self._clock()

    def _send(self, client: TelegramClient, ev: Event) -> None:
        cfg = self._cfg
        thread_id = cfg.message_thread_id
        if ev.photo_path and Path(ev.photo_path).is_file():
            self._governor.record(cfg.chat_id, cfg.is_group)
            client.send_photo(cfg.chat_id, ev.photo_path, ev.text, silent=ev.silent, thread_id=thread_id)
            self._count("photos")
            return
        if ev.live and ev.key:
            with self._cond:
                mid = self._live_ids.get(ev.key)
                same = self._live_text.get(ev.key) == ev.text
            if mid is not None and same:
                return  # the message already says this: no call at all
            self._governor.record(cfg.chat_id, cfg.is_group)
            if mid is not None:
                client.edit_message_text(cfg.chat_id, mid, ev.text)
                self._count("edited")
            else:
                ids = client.send_message(cfg.chat_id, ev.text, silent=ev.silent, thread_id=thread_id)
                self._count("sent")
                with self._cond:
                    self._live_ids[ev.key] = ids[0]
            with self._cond:
                self._live_text[ev.key] = ev.text
            return
        self._governor.record(cfg.chat_id, cfg.is_group)
        client.send_message(cfg.chat_id, ev.text, silent=ev.silent, thread_id=thread_id)
        self._count("sent")

    def _count(self, name: str, n: int = 1) -> None:
        with self._cond:
            self._stats[name] += n

    def _requeue_locked(self, ev: Event) -> None:
        if ev.key is not None and any(q.key == ev.key for q in self._queue):
            return  # a newer version is already queued
        self._queue.insert(0, ev)

    def _failure(self, ev: Event, reason: str, *, immediate: bool) -> None:
        with self._cond:
            self._stats["failures"] += 1
            opened = self._breaker.record_failure(immediate=immediate)
            if not opened:
                delay = min(MAX_BACKOFF_S, self._cfg.retry_backoff_s * 2 ** (self._breaker.failures - 1))
                self._backoff_until = self._clock() + delay
                self._requeue_locked(ev)
        if opened:
            log.warning(
                "Telegram unavailable (%s); for the next %.0f s critical messages go to %s",
                redact(reason, self._secrets), self._cfg.breaker_cooldown_s,
                f"email and the spool {self._spool.directory}" if self._cfg.smtp
                else f"the spool {self._spool.directory} (relay them with: dqlray notify relay)",
            )
            self._fallback(ev)

    def _fallback(self, ev: Event) -> None:
        """Email and spool a critical/fallback event; drop a routine one."""
        if not ev.to_fallback:
            self._count("dropped")
            return
        self._spool_event(ev)
        smtp = self._cfg.smtp
        if smtp is None:
            return
        from dqlray.notify.mail import EmailError, send_email

        attachments = (*ev.attachments, *((ev.photo_path,) if ev.photo_path else ()))
        try:
            send_email(smtp, ev.text, attachments=attachments, secrets=self._secrets)
            self._count("emailed")
        except EmailError as exc:
            log.warning("%s", redact(exc, self._secrets))

    def _spool_event(self, ev: Event) -> None:
        try:
            self._spool.put(event_id=ev.id, created=ev.created, text=ev.text, silent=ev.silent,
                            photo_path=ev.photo_path, attachments=ev.attachments)
            self._count("spooled")
        except Exception as exc:
            log.error("could not spool a critical notification to %s: %s", self._spool.directory,
                      redact(f"{type(exc).__name__}: {exc}", self._secrets))

    # -------------------------------------------------------------------------------------- exit and signals ---

    def _atexit(self) -> None:
        self._atexit_registered = False
        self.close(self._exit_deadline_s)

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        try:
            self._prev_sigterm = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._on_sigterm)
            self._sigterm_installed = True
        except (ValueError, OSError):
            self._sigterm_installed = False

    def _uninstall_sigterm(self) -> None:
        if not self._sigterm_installed or threading.current_thread() is not threading.main_thread():
            return
        try:
            if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
                signal.signal(signal.SIGTERM, self._prev_sigterm or signal.SIG_DFL)
        except (ValueError, OSError):
            pass
        self._sigterm_installed = False

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        prev = self._prev_sigterm
        if callable(prev):
            # The program handles SIGTERM itself (e.g. a graceful stop that checkpoints first): let it, at once.
            # It goes on running and will report and close us; blocking here would eat SLURM's KillWait.
            prev(signum, frame)
            return
        if prev == signal.SIG_IGN:
            return  # the program chose to ignore SIGTERM: it is not ending
        # The process was about to die of SIGTERM: say so, deliver what is queued, then die of it as before.
        for hook in list(self._shutdown_hooks):
            try:
                hook()
            except Exception as exc:
                log.warning("shutdown hook failed: %s", redact(exc, self._secrets))
        self.close(self._sigterm_deadline_s)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)  # exit status 143 for SLURM and the shell, as without us
