"""The one redaction function for notification secrets (``shared/notes/telegram.md``, security checklist).

A bot token sits in the request path (``/bot<TOKEN>/sendMessage``), so requests' exception texts and urllib3's DEBUG
log lines carry it: everything this package writes (logs, exceptions, spool, emails, output) goes through
:func:`redact` first.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

TOKEN_PATTERN = re.compile(r"\d+:[A-Za-z0-9_-]{30,}")
"""A Telegram bot token: numeric bot id, colon, at least 30 URL-safe characters."""
MASK = "<redacted>"
"""What a secret is replaced by."""
URL_LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry", "urllib3.connection", "requests")
"""Loggers that print request URLs (and so the token) at DEBUG level."""
LOGGER_NAME = "dqlray.notify"
"""This package's logger."""

F = TypeVar("F", bound=Callable[..., Any])


def redact(text: object, secrets: Iterable[str | None] = ()) -> str:
    """``str(text)`` with every bot-token-shaped string and every literal secret (a self-hosted server's token, an
    SMTP password; values under 4 characters are ignored, not to mangle ordinary text) replaced by ``<redacted>``."""
    out = str(text)
    # Longest first, so that a secret containing another one is masked whole.
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        out = out.replace(secret, MASK)
    return TOKEN_PATTERN.sub(MASK, out)


class RedactingFilter(logging.Filter):
    """A logging filter that renders each record's message (and exception text) once, through :func:`redact`, and
    drops its arguments, so that a handler cannot re-render the secret from ``record.args``."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        super().__init__()
        self.secrets: set[str] = {s for s in secrets if s}
        """Literal secrets masked (besides anything shaped like a bot token)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place; never drops it."""
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: keep its raw parts, still redacted
            message = f"{record.msg} {record.args}"
        record.msg, record.args = redact(message, self.secrets), None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text, record.exc_info = logging.Formatter().formatException(record.exc_info), None
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        return True


def install_log_redaction(secrets: Iterable[str | None] = (), loggers: Iterable[str] = URL_LOGGERS) -> None:
    """Attach one :class:`RedactingFilter` to each logger in ``loggers`` (idempotent; adds ``secrets`` to it): a
    logger's filters see only its own records, so they go on the loggers that print URLs, not on the root logger."""
    for name in loggers:
        logger = logging.getLogger(name)
        existing = next((f for f in logger.filters if isinstance(f, RedactingFilter)), None)
        if existing is None:
            logger.addFilter(existing := RedactingFilter())
        existing.secrets.update(s for s in secrets if s)


def never_raises(method: F) -> F:
    """A notification method that never raises (a notification must never hurt training; notify-run#30 crashed a
    day-long run): an exception is logged as a warning, redacted with the instance's ``secrets``."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            logging.getLogger(LOGGER_NAME).warning(
                "notification %s skipped: %s", method.__name__,
                redact(f"{type(exc).__name__}: {exc}", getattr(self, "secrets", ())))
            return None

    return wrapper  # type: ignore[return-value]
