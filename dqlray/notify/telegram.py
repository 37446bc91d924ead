"""Raw Telegram Bot API over ``requests``: sendMessage, editMessageText, sendPhoto, getMe.

Raw HTTP because wrappers of python-telegram-bot broke silently when it went async in v20 (knockknock#84). Rules
(``shared/notes/telegram.md``): a (connect, read) timeout on every call, TLS verified; ``message is not modified`` is
a success; ``can't parse entities`` is retried once as plain text; transport errors are redacted and re-raised
``from None`` (requests' messages contain the URL, and so the token).
"""

from __future__ import annotations

import json
import mimetypes
import re
from pathlib import Path
from typing import Any

import requests

from dqlray.notify.messages import html_to_plain
from dqlray.notify.redact import redact

PHOTO_MAX_BYTES = 10 * 1024 * 1024
"""Largest photo sendPhoto accepts."""


class TelegramError(Exception):
    """A Bot API call failed (``Telegram <method>: <description>``, redacted: no token)."""

    def __init__(self, method: str, description: str) -> None:
        super().__init__(f"Telegram {method}: {description}")
        self.description = description


class TelegramApiError(TelegramError):
    """Telegram answered ``ok: false``: ``error_code`` (HTTP-like) and, as flags, what it means (a 404 is a malformed
    token)."""

    def __init__(self, method: str, description: str, error_code: int | None, retry_after: float | None = None):
        super().__init__(method, f"{error_code} {description}")
        self.error_code, self.api_description, self.retry_after = error_code, description, retry_after
        bad_request = description.lower() if error_code == 400 else ""
        self.is_parse_error = "can't parse entities" in bad_request
        self.is_not_modified = "message is not modified" in bad_request
        self.is_chat_not_found = "chat not found" in bad_request
        self.is_message_gone = "message to edit not found" in bad_request
        self.is_unauthorized = error_code in (401, 404)
        self.is_server_error = error_code is not None and error_code >= 500


class TelegramRetryAfter(TelegramApiError):
    """429 Too Many Requests; wait ``retry_after`` seconds before the next call to this chat."""


class TelegramTransportError(TelegramError):
    """No answer from the API; ``unreachable`` when no connection could be made at all (compute nodes without
    internet: the sender falls back at once)."""

    def __init__(self, method: str, description: str, unreachable: bool) -> None:
        super().__init__(method, description)
        self.unreachable = unreachable


_NO_CONNECTION = re.compile(r"NewConnectionError|NameResolutionError|ConnectTimeoutError|Connection refused|gaierror")


def _transport_error(method: str, exc: requests.RequestException, secrets: tuple[str, ...]) -> TelegramTransportError:
    """A redacted error with the useful part of requests' text (urllib3's "(Caused by X)" when present)."""
    text = str(exc)
    m = re.search(r"\(Caused by (.*)\)\s*$", text, re.DOTALL)
    unreachable = isinstance(exc, requests.ConnectTimeout) or (
        isinstance(exc, requests.ConnectionError) and not isinstance(exc, requests.ReadTimeout)
        and bool(_NO_CONNECTION.search(text)))
    return TelegramTransportError(method, redact(f"{type(exc).__name__}: {m.group(1) if m else text}", secrets),
                                  unreachable)


class TelegramClient:
    """A small Bot API client. Not thread-safe: one owner thread per client. It never waits out a 429: it raises
    :class:`TelegramRetryAfter`, and its caller holds the chat (the sender's and the relay's rate governor)."""

    def __init__(self, token: str, *, api_base: str = "https://api.telegram.org", connect_timeout_s: float = 5.0,
                 read_timeout_s: float = 15.0, secrets: tuple[str, ...] = ()) -> None:
        self._token = token
        self._base = api_base.rstrip("/")
        self._timeout = (connect_timeout_s, read_timeout_s)
        self._session = requests.Session()
        self._secrets = (token, *secrets)

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()

    def call(self, method: str, payload: dict[str, Any] | None = None, *, files: dict[str, Any] | None = None,
             read_timeout_s: float | None = None) -> Any:
        """POST ``method`` and return its ``result``; raise a :class:`TelegramError` subclass (redacted)."""
        url = f"{self._base}/bot{self._token}/{method}"
        timeout = (self._timeout[0], read_timeout_s or self._timeout[1])
        try:
            for f in (files or {}).values():  # rewind: the plain-text retry sends the file again
                f[1].seek(0)
            if files:  # a form: its values are text ("true", not Python's "True")
                form = {k: json.dumps(v) if isinstance(v, bool) else str(v) for k, v in (payload or {}).items()}
                resp = self._session.post(url, data=form, files=files, timeout=timeout)
            else:
                resp = self._session.post(url, json=payload or {}, timeout=timeout)
        except requests.RequestException as exc:
            # `from None`: the chained exception's text has the URL, and so the token.
            raise _transport_error(method, exc, self._secrets) from None
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise TelegramApiError(method, f"HTTP {resp.status_code} with a non-JSON answer", resp.status_code)
        if body.get("ok"):
            return body.get("result")
        code = body.get("error_code", resp.status_code)
        desc = redact(body.get("description", ""), self._secrets)
        retry_after = (body.get("parameters") or {}).get("retry_after")
        if code == 429:
            raise TelegramRetryAfter(method, desc, code, float(retry_after if retry_after is not None else 1.0))
        raise TelegramApiError(method, desc, code, retry_after)

    def _call_html(self, method: str, payload: dict[str, Any], field: str, **kwargs: Any) -> Any:
        """Call with parse_mode HTML; a 400 ``can't parse entities`` is retried once as plain text (tags dropped,
        entities decoded), so a formatting bug costs the formatting, not the message."""
        if not payload.get(field):
            return self.call(method, payload, **kwargs)
        try:
            return self.call(method, {**payload, "parse_mode": "HTML"}, **kwargs)
        except TelegramApiError as exc:
            if not exc.is_parse_error:
                raise
            return self.call(method, {**payload, field: html_to_plain(payload[field])}, **kwargs)

    def get_me(self) -> dict[str, Any]:
        """``getMe``: the bot's own user (checks the token)."""
        result = self.call("getMe")
        return result if isinstance(result, dict) else {}

    @staticmethod
    def _to(chat_id: str, silent: bool, thread_id: int | None, **payload: Any) -> dict[str, Any]:
        """A payload for ``chat_id`` (and its forum topic), silent or not."""
        return {"chat_id": chat_id, **payload, **({"disable_notification": True} if silent else {}),
                **({"message_thread_id": thread_id} if thread_id is not None else {})}

    def send_message(self, chat_id: str, text: str, *, silent: bool = False, thread_id: int | None = None) -> int:
        """``sendMessage`` of one HTML text (within the limit: see :mod:`~dqlray.notify.messages`); its message id."""
        return int(self._call_html("sendMessage", self._to(chat_id, silent, thread_id, text=text), "text")["message_id"])

    def edit_message_text(self, chat_id: str, message_id: int, text: str) -> None:
        """``editMessageText``; ``message is not modified`` counts as success."""
        try:
            self._call_html("editMessageText", {"chat_id": chat_id, "message_id": int(message_id), "text": text},
                            "text")
        except TelegramApiError as exc:
            if not exc.is_not_modified:
                raise

    def send_photo(self, chat_id: str, path: str | Path, caption: str = "", *, silent: bool = False,
                   thread_id: int | None = None) -> int:
        """``sendPhoto`` (multipart upload) with an HTML caption; returns the message id."""
        path = Path(path)
        size = path.stat().st_size
        if size > PHOTO_MAX_BYTES:
            raise ValueError(f"photo {path} is {size} bytes: sendPhoto accepts at most {PHOTO_MAX_BYTES}")
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        with path.open("rb") as fh:
            # Uploads take longer than a JSON call.
            result = self._call_html("sendPhoto", self._to(chat_id, silent, thread_id, caption=caption), "caption",
                                     files={"photo": (path.name, fh, kind)}, read_timeout_s=self._timeout[1] * 4)
        return int(result["message_id"])
