"""The Bot API client against a real HTTP server on loopback that answers like Telegram."""

from __future__ import annotations

import time

import pytest
import requests
from fake_telegram import closed_port, make_fake_token

from dqlray.notify import messages
from dqlray.notify.telegram import (
    TelegramApiError,
    TelegramClient,
    TelegramRetryAfter,
    TelegramTransportError,
)

CHAT = "4242"  # the chat of conftest's `tg` fake server
EXPERIMENT = "hp_sweep_lr0.001_g0.99"


def client_for(tg, token=None, **kw):
    kw.setdefault("connect_timeout_s", 1.0)
    kw.setdefault("read_timeout_s", 2.0)
    return TelegramClient(token or tg.token, api_base=tg.url, **kw)


def test_fake_server_counts_text_length_in_utf16_after_parsing(tg, token):
    """The fake enforces Telegram's rule, so the client tests below are tested against it."""
    url = f"{tg.url}/bot{token}/sendMessage"
    ok = requests.post(url, json={"chat_id": CHAT, "text": "🚀" * 2048}, timeout=5).json()
    too_long = requests.post(url, json={"chat_id": CHAT, "text": "🚀" * 2049}, timeout=5).json()
    escaped = requests.post(url, json={"chat_id": CHAT, "text": "&lt;" * 4096, "parse_mode": "HTML"},
                            timeout=5).json()
    assert ok["ok"] is True
    assert too_long == {"ok": False, "error_code": 400, "description": "Bad Request: message is too long"}
    assert escaped["ok"] is True  # 16384 characters of HTML, 4096 after parsing


def test_get_me_checks_the_token(tg, token):
    assert client_for(tg).get_me()["username"] == "fake_dqlray_bot"
    wrong = make_fake_token()
    with pytest.raises(TelegramApiError, match=r"Telegram getMe: 401 Unauthorized") as info:
        client_for(tg, token=wrong).get_me()
    assert info.value.is_unauthorized
    assert wrong not in str(info.value)


def test_experiment_name_with_underscores_renders_in_html(tg):
    text = messages.run_start(EXPERIMENT, agent_type="dqn", episodes=20, data_file="data/test_small.csv")
    client_for(tg).send_message(CHAT, text)
    assert tg.statuses() == [200]
    [msg] = tg.messages
    assert msg["parse_mode"] == "HTML"
    assert f"Training started · {EXPERIMENT}" in msg["plain"]


def test_429_is_raised_with_retry_after_for_the_caller_to_hold_the_chat(tg):
    tg.force_429(1, retry_after=1)
    with pytest.raises(TelegramRetryAfter, match=r"429 Too Many Requests: retry after 1") as info:
        client_for(tg).send_message(CHAT, "x")
    assert info.value.retry_after == 1.0
    assert tg.messages == []


def test_edit_with_identical_text_counts_as_success(tg):
    client = client_for(tg)
    mid = client.send_message(CHAT, "📊 <b>v1</b>")
    client.edit_message_text(CHAT, mid, "📊 <b>v2</b>")
    client.edit_message_text(CHAT, mid, "📊 <b>v2</b>")  # 400 message is not modified -> fine
    assert tg.statuses("editMessageText") == [200, 400]
    assert "message is not modified" in tg.requests[-1]["description"]
    assert tg.messages[0]["plain"] == "📊 v2" and len(tg.edits) == 1


def test_edit_of_a_deleted_message_is_an_error(tg):
    with pytest.raises(TelegramApiError, match="message to edit not found") as info:
        client_for(tg).edit_message_text(CHAT, 999, "x")
    assert info.value.is_message_gone


def test_parse_error_is_retried_once_as_plain_text(tg):
    client_for(tg).send_message(CHAT, "<b>bold & broken")
    assert tg.statuses() == [400, 200]
    assert "can't parse entities" in tg.requests[0]["description"]
    [msg] = tg.messages
    assert msg["parse_mode"] is None and msg["plain"] == "bold & broken"


def test_a_message_with_too_many_parts_is_still_accepted_cut_to_the_limit(tg):
    context = {f"key {i}": "🚀" * 30 for i in range(200)}  # far over 4096 units: the builder's last resort cuts it
    text = messages.run_start(EXPERIMENT, agent_type="dqn", episodes=20, data_file="d.csv", context=context)
    client_for(tg).send_message(CHAT, text)
    assert tg.statuses() == [200]
    [msg] = tg.messages
    assert msg["plain"].startswith(f"🚀 Training started · {EXPERIMENT}") and msg["plain"].endswith("…")


def test_wrong_chat_is_chat_not_found(tg):
    with pytest.raises(TelegramApiError, match="400 Bad Request: chat not found") as info:
        client_for(tg).send_message("999", "x")
    assert info.value.is_chat_not_found


def test_refused_connection_is_a_redacted_transport_error_from_none(token):
    client = TelegramClient(token, api_base=f"http://127.0.0.1:{closed_port()}", connect_timeout_s=1.0)
    with pytest.raises(TelegramTransportError,
                       match=r"Telegram sendMessage: ConnectionError: NewConnectionError\(.*Connection refused") \
            as info:
        client.send_message(CHAT, "x")
    assert token not in str(info.value)
    assert info.value.unreachable
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_hanging_server_times_out(tg):
    tg.hang()
    t0 = time.monotonic()
    with pytest.raises(TelegramTransportError, match="ReadTimeout") as info:
        client_for(tg, read_timeout_s=0.5).send_message(CHAT, "x")
    assert time.monotonic() - t0 < 3.0
    assert not info.value.unreachable
    assert tg.hung == 1


def test_photo_upload_with_caption(tg, tmp_path):
    png = tmp_path / "equity.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 2000)
    client_for(tg).send_photo(CHAT, png, f"📈 <code>{EXPERIMENT}</code>", silent=True)
    [msg] = tg.messages
    assert msg["kind"] == "photo" and msg["photo_bytes"] == 2008 and msg["silent"]
    assert msg["plain"] == f"📈 {EXPERIMENT}"
