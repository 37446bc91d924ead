"""Shared fixtures: a fake bot token, a running fake Telegram Bot API server on loopback, and no stray credentials."""

import pytest
from fake_telegram import FakeTelegram, make_fake_token

from dqlray.notify import sender

CHAT = "4242"


@pytest.fixture(autouse=True)
def _no_user_notifications(monkeypatch, tmp_path):
    """No test sees the developer's own credentials or spool; the process's notifier is closed after each test."""
    for name in ("TELEGRAM_BOT_TOKEN", "TELEGRAM_CHAT_ID", "DQLRAY_NOTIFY_CONFIG", "DQLRAY_NOTIFY_SPOOL",
                 "DQLRAY_TELEGRAM_API_BASE", "DQLRAY_SMTP_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    yield
    current = sender._process.pop("notifier", None)
    if current is not None:
        current.close(1.0)


@pytest.fixture
def token():
    return make_fake_token()


@pytest.fixture
def tg(token):
    with FakeTelegram(token, chats=[CHAT]) as server:
        yield server
