"""Telegram notifications that never hurt training (issue 5), one notifier per process (issue 15): for example
``RunNotifier(get_notifier(), experiment="x").start(...)``, a no-op when nothing is configured.
``TelegramTuneCallback`` (lazy: it needs Ray) keeps a sweep's dashboard; ``dqlray notify test|relay`` is the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dqlray.notify.credentials import CommandLineSecretWarning, NotifyConfig, SmtpConfig, load_notify_config
from dqlray.notify.redact import redact
from dqlray.notify.run import RunNotifier, SweepNotifier
from dqlray.notify.sender import Notifier, get_notifier

if TYPE_CHECKING:
    from dqlray.notify.tune_callback import TelegramTuneCallback

__all__ = ["CommandLineSecretWarning", "NotifyConfig", "Notifier", "RunNotifier", "SmtpConfig", "SweepNotifier",
           "TelegramTuneCallback", "get_notifier", "load_notify_config", "redact"]


def __getattr__(name: str) -> Any:
    # Lazy: importing Ray takes seconds, and `dqlray notify test` or a single run does not need it.
    if name == "TelegramTuneCallback":
        from dqlray.notify.tune_callback import TelegramTuneCallback

        return TelegramTuneCallback
    raise AttributeError(f"module 'dqlray.notify' has no attribute {name!r}")
