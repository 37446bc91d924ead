"""Shared fixtures: a fake bot token and a running fake Telegram Bot API server on loopback."""

import pytest
from fake_telegram import FakeTelegram, make_fake_token

CHAT = "4242"


@pytest.fixture
def token():
    return make_fake_token()


@pytest.fixture
def tg(token):
    with FakeTelegram(token, chats=[CHAT]) as server:
        yield server
