"""Raw Telegram Bot API over ``requests``: sendMessage, editMessageText, sendPhoto, getMe.

Why raw HTTP: wrappers around python-telegram-bot broke silently when it went async in v20 (knockknock#84); the Bot
API's HTTPS interface is the stable dependency. Rules kept here (``shared/notes/telegram.md``):

* every call has a (connect, read) timeout; TLS verification stays on;
* HTML parse mode; dynamic values are escaped with :func:`esc` by the callers (``messages.py``);
* the 4096 limit is counted in UTF-16 code units of the text *after* entity parsing; long text is split at line
  boundaries with open tags closed and reopened (:func:`split_html`); edits are truncated (one message);
* 429 carries ``parameters.retry_after``: waited out here when short (``max_retry_wait_s``), else raised as
  :class:`TelegramRetryAfter` for the caller's rate governor;
* 400 ``message is not modified`` is a success; 400 ``can't parse entities`` is retried once as plain text;
* transport errors are re-raised ``from None`` with redacted text, because requests' messages contain the URL and
  so the token.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from dqlray.notify.redact import redact

MESSAGE_LIMIT = 4096
"""Most UTF-16 code units in a message's text after entity parsing."""
CAPTION_LIMIT = 1024
"""Most UTF-16 code units in a photo caption after entity parsing."""
PHOTO_MAX_BYTES = 10 * 1024 * 1024
"""Largest photo sendPhoto accepts."""

_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)\b[^<>]*>")
_ANY_TAG = re.compile(r"<[^<>]*>")


# --------------------------------------------------------------------------------------------------------- text ---


def esc(value: object) -> str:
    """HTML-escape ``str(value)`` for parse_mode HTML (``<``, ``>``, ``&``; quotes are harmless outside attributes)."""
    return html.escape(str(value), quote=False)


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, as Telegram counts it (an emoji outside the BMP counts 2)."""
    return len(text.encode("utf-16-le")) // 2


def html_to_plain(text: str) -> str:
    """What the user sees of an HTML message: tags dropped, entities decoded (also the plain-text fallback)."""
    return html.unescape(_ANY_TAG.sub("", text))


def visible_len(text: str) -> int:
    """UTF-16 length of ``text`` after entity parsing (what the 4096 limit applies to)."""
    return utf16_len(html_to_plain(text))


def _cut_utf16(text: str, units: int) -> str:
    """The longest prefix of plain ``text`` with at most ``units`` UTF-16 code units (never half a surrogate pair)."""
    out, used = [], 0
    for ch in text:
        n = 2 if ord(ch) > 0xFFFF else 1
        if used + n > units:
            break
        out.append(ch)
        used += n
    return "".join(out)


def tail_text(text: str, limit: int, marker: str = "…\n") -> str:
    """The end of plain ``text`` within ``limit`` UTF-16 units, cut at a line boundary where possible.

    For tracebacks: the last lines (the exception and the innermost frames) are the useful ones.
    """
    if utf16_len(text) <= limit:
        return text
    budget = limit - utf16_len(marker)
    lines = text.rstrip("\n").split("\n")
    kept: list[str] = []
    used = 0
    for line in reversed(lines):
        n = utf16_len(line) + (1 if kept else 0)
        if used + n > budget:
            break
        kept.append(line)
        used += n
    if not kept:  # a single line longer than the budget: keep its end
        last = lines[-1]
        rev = _cut_utf16(last[::-1], budget)
        return marker + rev[::-1]
    return marker + "\n".join(reversed(kept))


def _apply_tags(line: str, stack: list[tuple[str, str]]) -> None:
    for m in _TAG.finditer(line):
        closing, name = m.group(1), m.group(2).lower()
        if not closing:
            stack.append((name, m.group(0)))
            continue
        for i in range(len(stack) - 1, -1, -1):
            if stack[i][0] == name:
                del stack[i]
                break


def _close(stack: list[tuple[str, str]]) -> str:
    return "".join(f"</{name}>" for name, _ in reversed(stack))


def _reopen(stack: list[tuple[str, str]]) -> str:
    return "".join(tag for _, tag in stack)


def _hard_cut(line_html: str, limit: int) -> list[str]:
    """Cut one over-long line into plain (escaped, tag-free) pieces of at most ``limit`` visible units."""
    plain = html_to_plain(line_html)
    pieces = []
    while plain:
        piece = _cut_utf16(plain, limit)
        pieces.append(esc(piece))
        plain = plain[len(piece):]
    return pieces


def split_html(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Split HTML ``text`` into messages of at most ``limit`` visible UTF-16 units each.

    Splits at line boundaries; tags open at a boundary are closed at the end of one part and reopened at the start
    of the next (a ``<pre>`` block spanning two messages stays a ``<pre>`` block in both). A single line longer than
    ``limit`` is cut into plain-text pieces. Entities are never cut.
    """
    if limit < 16:
        raise ValueError(f"limit={limit} is too small to split into: use at least 16")
    if visible_len(text) <= limit:
        return [text]
    parts: list[str] = []
    stack: list[tuple[str, str]] = []
    cur: list[str] = []
    cur_len = 0
    for line in text.split("\n"):
        n = visible_len(line)
        if cur and cur_len + 1 + n > limit:
            parts.append("\n".join(cur) + _close(stack))
            cur, cur_len = [], 0
        if n > limit:
            if cur:
                parts.append("\n".join(cur) + _close(stack))
                cur, cur_len = [], 0
            parts.extend(_hard_cut(line, limit))
            _apply_tags(line, stack)
            continue
        if not cur:
            cur, cur_len = [_reopen(stack) + line], n
        else:
            cur.append(line)
            cur_len += 1 + n
        _apply_tags(line, stack)
    if cur:
        parts.append("\n".join(cur) + _close(stack))
    return [p for p in parts if html_to_plain(p).strip()]


def truncate_html(text: str, limit: int = MESSAGE_LIMIT, marker: str = "\n… (truncated)") -> str:
    """``text`` cut to at most ``limit`` visible units at a line boundary, tags closed, ``marker`` appended."""
    if visible_len(text) <= limit:
        return text
    return split_html(text, limit - utf16_len(marker))[0] + esc(marker)


# ------------------------------------------------------------------------------------------------------- errors ---


class TelegramError(Exception):
    """A Bot API call failed. The message is redacted (no token); ``method`` names the call."""

    def __init__(self, method: str, description: str) -> None:
        super().__init__(f"Telegram {method}: {description}")
        self.method = method
        self.description = description


class TelegramApiError(TelegramError):
    """Telegram answered ``ok: false`` (``error_code`` is the HTTP-like code, e.g. 400, 401, 403)."""

    def __init__(self, method: str, description: str, error_code: int | None, retry_after: float | None = None):
        super().__init__(method, f"{error_code} {description}")
        self.error_code = error_code
        self.api_description = description
        self.retry_after = retry_after

    @property
    def is_parse_error(self) -> bool:
        """The HTML did not parse (400 ``can't parse entities``)."""
        return self.error_code == 400 and "can't parse entities" in self.api_description.lower()

    @property
    def is_not_modified(self) -> bool:
        """An edit with identical content (400 ``message is not modified``): the message already says this."""
        return self.error_code == 400 and "message is not modified" in self.api_description.lower()

    @property
    def is_chat_not_found(self) -> bool:
        """The chat id is wrong or the bot was never added/started there."""
        return self.error_code == 400 and "chat not found" in self.api_description.lower()

    @property
    def is_unauthorized(self) -> bool:
        """The token was rejected (401, or 404 for a malformed token)."""
        return self.error_code in (401, 404)

    @property
    def is_message_gone(self) -> bool:
        """The message to edit no longer exists (deleted by the user)."""
        return self.error_code == 400 and "message to edit not found" in self.api_description.lower()

    @property
    def is_server_error(self) -> bool:
        """A 5xx: worth retrying later."""
        return self.error_code is not None and self.error_code >= 500


class TelegramRetryAfter(TelegramApiError):
    """429 Too Many Requests; wait ``retry_after`` seconds before the next call to this chat."""


class TelegramTransportError(TelegramError):
    """No answer from the API (connection refused, DNS failure, timeout, TLS error).

    ``unreachable`` is true when no connection could be made at all (compute nodes without internet): retrying soon
    will not help, so the sender falls back at once.
    """

    def __init__(self, method: str, description: str, unreachable: bool) -> None:
        super().__init__(method, description)
        self.unreachable = unreachable


def _root_cause(exc: BaseException) -> str:
    """The useful part of a requests error: urllib3's "(Caused by X)" when present, else the whole text."""
    text = str(exc)
    m = re.search(r"\(Caused by (.*)\)\s*$", text, re.DOTALL)
    return m.group(1) if m else text


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means no TCP connection could be opened (as opposed to a failure mid-request)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if not isinstance(exc, requests.ConnectionError) or isinstance(exc, requests.ReadTimeout):
        return False
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        name = type(e).__name__
        if name in ("NewConnectionError", "NameResolutionError", "ConnectTimeoutError", "ConnectionRefusedError",
                    "gaierror"):
            return True
        for nxt in (e.__cause__, e.__context__, getattr(e, "reason", None), *getattr(e, "args", ())):
            if isinstance(nxt, BaseException):
                stack.append(nxt)
    return False


# ------------------------------------------------------------------------------------------------------- client ---


class TelegramClient:
    """A small Bot API client. Not thread-safe: one owner thread (the sender) per client.

    ``max_retry_wait_s``: a 429 whose ``retry_after`` is at most this is waited out here (``sleep``) and the call
    retried, up to three times; longer ones raise :class:`TelegramRetryAfter`. The background sender uses 0 and lets
    its rate governor hold the chat instead, so that a long ``retry_after`` cannot block other work.
    """

    def __init__(
        self,
        token: str,
        *,
        api_base: str = "https://api.telegram.org",
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 15.0,
        session: requests.Session | None = None,
        max_retry_wait_s: float = 0.0,
        sleep: Callable[[float], Any] = time.sleep,
        secrets: tuple[str, ...] = (),
    ) -> None:
        self._token = token
        self._base = api_base.rstrip("/")
        self._timeout = (connect_timeout_s, read_timeout_s)
        self._session = session if session is not None else requests.Session()
        self._max_retry_wait_s = max_retry_wait_s
        self._sleep = sleep
        self._secrets = (token, *secrets)

    def __repr__(self) -> str:
        return f"TelegramClient(api_base={self._base!r})"

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()

    def call(self, method: str, payload: dict[str, Any] | None = None, *, files: dict[str, Any] | None = None,
             read_timeout_s: float | None = None) -> Any:
        """POST ``method`` and return its ``result``; raise a :class:`TelegramError` subclass (redacted)."""
        url = f"{self._base}/bot{self._token}/{method}"
        timeout = (self._timeout[0], read_timeout_s or self._timeout[1])
        for attempt in range(4):
            try:
                if files:
                    for f in files.values():  # rewind on retry
                        if hasattr(f[1], "seek"):
                            f[1].seek(0)
                    resp = self._session.post(url, data=payload or {}, files=files, timeout=timeout)
                else:
                    resp = self._session.post(url, json=payload or {}, timeout=timeout)
            except requests.RequestException as exc:
                # `from None`: the chained exception's text has the URL, and so the token.
                raise TelegramTransportError(
                    method, redact(f"{type(exc).__name__}: {_root_cause(exc)}", self._secrets), _unreachable(exc)
                ) from None
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
            params = body.get("parameters") or {}
            retry_after = params.get("retry_after")
            if code == 429:
                wait = float(retry_after if retry_after is not None else 1.0)
                if wait <= self._max_retry_wait_s and attempt < 3:
                    self._sleep(wait)
                    continue
                raise TelegramRetryAfter(method, desc, code, wait)
            raise TelegramApiError(method, desc, code, retry_after)
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    def get_me(self) -> dict[str, Any]:
        """``getMe``: the bot's own user (checks the token)."""
        result = self.call("getMe")
        return result if isinstance(result, dict) else {}

    def _text_payload(self, chat_id: str, text: str, parse_mode: str | None) -> dict[str, Any]:
        payload: dict[str, Any] = {"chat_id": chat_id, "text": text}
        if parse_mode:
            payload["parse_mode"] = parse_mode
        return payload

    def send_message(
        self,
        chat_id: str,
        text: str,
        *,
        parse_mode: str | None = "HTML",
        silent: bool = False,
        thread_id: int | None = None,
    ) -> list[int]:
        """``sendMessage``; text over the limit goes as several messages. Returns the message ids.

        A 400 ``can't parse entities`` is retried once as plain text (tags dropped, entities decoded), so a
        formatting bug costs the formatting, not the message.
        """
        parts = split_html(text) if parse_mode == "HTML" else _split_plain(text)
        ids = []
        for part in parts:
            payload = self._text_payload(chat_id, part, parse_mode)
            if silent:
                payload["disable_notification"] = True
            if thread_id is not None:
                payload["message_thread_id"] = thread_id
            try:
                result = self.call("sendMessage", payload)
            except TelegramApiError as exc:
                if not (parse_mode and exc.is_parse_error):
                    raise
                payload["text"] = html_to_plain(part)
                payload.pop("parse_mode", None)
                result = self.call("sendMessage", payload)
            ids.append(int(result["message_id"]))
        return ids

    def edit_message_text(self, chat_id: str, message_id: int, text: str, *,
                          parse_mode: str | None = "HTML") -> None:
        """``editMessageText`` (text truncated to one message). ``message is not modified`` counts as success."""
        text = truncate_html(text) if parse_mode == "HTML" else _split_plain(text)[0]
        payload = self._text_payload(chat_id, text, parse_mode)
        payload["message_id"] = int(message_id)
        try:
            try:
                self.call("editMessageText", payload)
            except TelegramApiError as exc:
                if not (parse_mode and exc.is_parse_error):
                    raise
                payload["text"] = html_to_plain(text)
                payload.pop("parse_mode", None)
                self.call("editMessageText", payload)
        except TelegramApiError as exc:
            if not exc.is_not_modified:
                raise

    def send_photo(
        self,
        chat_id: str,
        path: str | Path,
        caption: str = "",
        *,
        parse_mode: str | None = "HTML",
        silent: bool = False,
        thread_id: int | None = None,
    ) -> int:
        """``sendPhoto`` (multipart upload; caption truncated to 1024). Returns the message id."""
        path = Path(path)
        size = path.stat().st_size
        if size > PHOTO_MAX_BYTES:
            raise ValueError(f"photo {path} is {size} bytes: sendPhoto accepts at most {PHOTO_MAX_BYTES}")
        caption = truncate_html(caption, CAPTION_LIMIT) if parse_mode == "HTML" else caption[:CAPTION_LIMIT]
        payload: dict[str, Any] = {"chat_id": chat_id}
        if caption:
            payload["caption"] = caption
            if parse_mode:
                payload["parse_mode"] = parse_mode
        if silent:
            payload["disable_notification"] = "true"
        if thread_id is not None:
            payload["message_thread_id"] = str(thread_id)
        with path.open("rb") as fh:
            files = {"photo": (path.name, fh, _image_type(path))}
            read_timeout = self._timeout[1] * 4  # uploads take longer than a JSON call
            try:
                result = self.call("sendPhoto", payload, files=files, read_timeout_s=read_timeout)
            except TelegramApiError as exc:
                if not (parse_mode and caption and exc.is_parse_error):
                    raise
                payload["caption"] = html_to_plain(caption)
                payload.pop("parse_mode", None)
                result = self.call("sendPhoto", payload, files=files, read_timeout_s=read_timeout)
        return int(result["message_id"])


def _split_plain(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    parts = []
    while text:
        piece = _cut_utf16(text, limit)
        parts.append(piece)
        text = text[len(piece):]
    return parts or [""]


def _image_type(path: Path) -> str:
    return {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
            ".webp": "image/webp"}.get(path.suffix.lower(), "application/octet-stream")


__all__ = [
    "CAPTION_LIMIT", "MESSAGE_LIMIT", "TelegramApiError", "TelegramClient", "TelegramError", "TelegramRetryAfter",
    "TelegramTransportError", "esc", "html_to_plain", "split_html", "tail_text", "truncate_html",
    "utf16_len", "visible_len",
]
