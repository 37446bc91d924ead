"""A real HTTP server on 127.0.0.1 that answers the Bot API subset dqlray uses the way Telegram does.

Not a mock: requests goes through a real socket, the real JSON envelope and real error codes come back.

* ``/bot<TOKEN>/<method>``; a wrong token gives 401 ``Unauthorized``, an unknown path 404 ``Not Found``.
* ``{"ok": true, "result": ...}`` / ``{"ok": false, "error_code", "description", "parameters": {"retry_after"}}``.
* ``sendMessage``/``editMessageText``/``sendPhoto``/``getMe``; JSON, form or multipart bodies.
* HTML parse mode is checked like Telegram: only its tags, balanced, ``<``/``&`` escaped, else 400
  ``Bad Request: can't parse entities: ...``; text over 4096 UTF-16 units *after* parsing is 400 ``message is too
  long``; an unknown chat is 400 ``chat not found``; an identical edit is 400 ``message is not modified``.
* Rate limits: per chat ``min_interval_s`` and ``group_per_minute`` (negative chat ids), answered with 429 and
  ``retry_after``; :meth:`FakeTelegram.force_429` for the next N calls.
* Modes: ``hang`` (read the request, never answer until released), :meth:`refuse` (the port is closed: connection
  refused), :meth:`resume`.

Every accepted message, edit and photo is recorded, with its monotonic arrival time.
"""

from __future__ import annotations

import email.parser
import email.policy
import html
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

MESSAGE_LIMIT = 4096
CAPTION_LIMIT = 1024
ALLOWED_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a", "code",
                "pre", "blockquote", "tg-emoji"}
_TOKEN_RE = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)([^<>]*)>|&(#\d+|#x[0-9a-fA-F]+|[a-zA-Z]+);|[<&>]")
NOT_MODIFIED = ("Bad Request: message is not modified: specified new message content and reply markup are exactly "
                "the same as a current content and reply markup of the message")


def make_fake_token() -> str:
    """A realistic bot token made at run time (so no token-shaped literal sits in the source): digits, colon,
    'AAH' and 32 URL-safe characters, 35 after the colon, like @BotFather's."""
    return f"{secrets.randbelow(9 * 10**8) + 10**8}:AAH{secrets.token_urlsafe(32)[:32]}"


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def parse_html(text: str) -> tuple[str | None, str]:
    """Telegram's HTML rules: returns (error description or None, visible text)."""
    out: list[str] = []
    stack: list[str] = []
    pos = 0
    for m in _TOKEN_RE.finditer(text):
        out.append(text[pos:m.start()])
        pos = m.end()
        tok = m.group(0)
        offset = len(text[:m.start()].encode("utf-8"))
        if m.group(2):
            name = m.group(2).lower()
            if name not in ALLOWED_TAGS:
                return f"Bad Request: can't parse entities: Unsupported start tag \"{name}\" at byte offset " \
                       f"{offset}", ""
            if m.group(1):
                if not stack or stack[-1] != name:
                    return f"Bad Request: can't parse entities: Unexpected end tag at byte offset {offset}", ""
                stack.pop()
            else:
                stack.append(name)
        elif m.group(4):
            if not m.group(4).startswith("#") and m.group(4) not in ("lt", "gt", "amp", "quot"):
                return f"Bad Request: can't parse entities: Unsupported entity at byte offset {offset}", ""
            out.append(html.unescape(tok))
        elif tok == ">":
            out.append(">")  # Telegram tolerates a bare '>'
        else:
            return (f"Bad Request: can't parse entities: Unexpected character {tok!r} at byte offset {offset}"
                    if tok == "&" else
                    f"Bad Request: can't parse entities: Unclosed start tag at byte offset {offset}"), ""
    out.append(text[pos:])
    if stack:
        return (f"Bad Request: can't parse entities: Can't find end tag corresponding to start tag \"{stack[-1]}\"",
                "")
    return None, "".join(out)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeTelegram


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the URL holds the token
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.fake._lock:
            self.server.fake._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.fake._lock:
            self.server.fake._connections.discard(self.connection)
        super().finish()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle(b"")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        self._handle(self.rfile.read(length) if length else b"")

    def _handle(self, body: bytes) -> None:
        fake = self.server.fake
        if fake.mode == "hang":
            fake._hung += 1
            fake._release.wait(timeout=60)
            self.close_connection = True
            return  # never answer
        status, payload = fake._dispatch(self.path, self.headers.get("Content-Type", ""), body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class FakeTelegram:
    """The fake Bot API server. Use as a context manager; ``url`` is the ``api_base`` to configure."""

    def __init__(self, token: str, *, chats: Iterable[str | int] = ("4242",), min_interval_s: float | None = None,
                 group_per_minute: int | None = None, retry_after: int = 1, bot_username: str = "fake_dqlray_bot"):
        self.token = token
        self.chats = {str(c) for c in chats}
        self.min_interval_s = min_interval_s
        self.group_per_minute = group_per_minute
        self.retry_after = retry_after
        self.bot_username = bot_username
        self.mode = "ok"
        self.messages: list[dict[str, Any]] = []
        self.edits: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._next_id = 100
        self._forced_429: list[int] = []
        self._last_accept: dict[str, float] = {}
        self._window: dict[str, list[float]] = {}
        self._release = threading.Event()
        self._hung = 0
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port: int = 0

    # ---------------------------------------------------------------------------------------------- control ---

    def start(self) -> FakeTelegram:
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.fake = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:  # kept-alive connections too: a stopped server must not answer anything
            connections, self._connections = list(self._connections), set()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> FakeTelegram:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hang(self) -> None:
        """Accept connections, read requests, never answer (until :meth:`release`)."""
        self._release.clear()
        self.mode = "hang"

    def release(self) -> None:
        """End hanging: hung requests are dropped unanswered, later ones answered."""
        self.mode = "ok"
        self._release.set()

    @property
    def hung(self) -> int:
        return self._hung

    def refuse(self) -> None:
        """Close the listening port: connections are refused (as with no route, but fast)."""
        self.stop()

    def resume(self) -> None:
        """Listen again on the same port."""
        self._release.clear()
        self.mode = "ok"
        self.start()

    def force_429(self, n: int = 1, retry_after: int | None = None) -> None:
        """Answer the next ``n`` message calls with 429 and ``retry_after``."""
        with self._lock:
            self._forced_429.extend([retry_after or self.retry_after] * n)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def texts(self) -> list[str]:
        """Visible text of every accepted message (after their latest edit)."""
        return [m["plain"] for m in self.messages]

    def statuses(self, method: str | None = None) -> list[int]:
        return [r["status"] for r in self.requests if method is None or r["method"] == method]

    # ------------------------------------------------------------------------------------------------- API ---

    def _dispatch(self, path: str, content_type: str, body: bytes) -> tuple[int, dict[str, Any]]:
        now = time.monotonic()
        m = re.fullmatch(r"/bot([^/]+)/(\w+)", urlsplit(path).path)
        if not m:
            return self._log("?", 404, {"ok": False, "error_code": 404, "description": "Not Found"}, now)
        token, method = m.groups()
        if token != self.token:
            return self._log(method, 401, {"ok": False, "error_code": 401, "description": "Unauthorized"}, now)
        params, files = self._parse_body(content_type, body)
        handler = {"getMe": self._get_me, "sendMessage": self._send_message, "editMessageText": self._edit,
                   "sendPhoto": self._send_photo}.get(method)
        if handler is None:
            return self._log(method, 404, {"ok": False, "error_code": 404, "description": "Not Found"}, now)
        with self._lock:
            status, payload = handler(params, files, now)
        return self._log(method, status, payload, now, params.get("chat_id"))

    def _log(self, method: str, status: int, payload: dict[str, Any], now: float,
             chat: Any = None) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append({"method": method, "status": status, "t": now, "chat_id": chat,
                                  "description": payload.get("description")})
        return status, payload

    @staticmethod
    def _parse_body(content_type: str, body: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
        if not body:
            return {}, {}
        if content_type.startswith("application/json"):
            return json.loads(body), {}
        if content_type.startswith("application/x-www-form-urlencoded"):
            return {k: v[0] for k, v in parse_qs(body.decode()).items()}, {}
        if content_type.startswith("multipart/form-data"):
            msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
            params: dict[str, Any] = {}
            files: dict[str, bytes] = {}
            for part in msg.iter_parts():
                name = part.get_param("name", header="content-disposition")
                payload = part.get_payload(decode=True) or b""
                if part.get_filename():
                    files[name] = payload
                else:
                    params[name] = payload.decode()
            return params, files
        return {}, {}

    @staticmethod
    def _bad(description: str, code: int = 400, **parameters: Any) -> tuple[int, dict[str, Any]]:
        payload: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
        if parameters:
            payload["parameters"] = parameters
        return code, payload

    def _rate_check(self, chat: str, now: float) -> tuple[int, dict[str, Any]] | None:
        if self._forced_429:
            wait = self._forced_429.pop(0)
            return self._bad(f"Too Many Requests: retry after {wait}", 429, retry_after=wait)
        last = self._last_accept.get(chat)
        if self.min_interval_s is not None and last is not None and now - last < self.min_interval_s:
            return self._bad(f"Too Many Requests: retry after {self.retry_after}", 429, retry_after=self.retry_after)
        if self.group_per_minute is not None and chat.startswith("-"):
            window = [t for t in self._window.get(chat, []) if t > now - 60]
            self._window[chat] = window
            if len(window) >= self.group_per_minute:
                return self._bad(f"Too Many Requests: retry after {self.retry_after}", 429,
                                 retry_after=self.retry_after)
        return None

    def _accept(self, chat: str, now: float) -> None:
        self._last_accept[chat] = now
        self._window.setdefault(chat, []).append(now)

    def _render(self, text: str, parse_mode: str | None, limit: int) -> tuple[str | None, str]:
        if parse_mode and parse_mode.upper() == "HTML":
            err, plain = parse_html(text)
            if err:
                return err, ""
        elif parse_mode:
            return f"Bad Request: unsupported parse_mode {parse_mode!r} in this fake", ""
        else:
            plain = text
        if utf16_len(plain) > limit:
            return ("Bad Request: message is too long" if limit == MESSAGE_LIMIT
                    else "Bad Request: message caption is too long"), ""
        return None, plain

    def _get_me(self, params: dict[str, Any], files: dict[str, bytes], now: float) -> tuple[int, dict[str, Any]]:
        return 200, {"ok": True, "result": {"id": int(self.token.split(":")[0]), "is_bot": True,
                                            "first_name": "dqlray fake", "username": self.bot_username}}

    def _send_message(self, params: dict[str, Any], files: dict[str, bytes],
                      now: float) -> tuple[int, dict[str, Any]]:
        chat = str(params.get("chat_id", ""))
        if chat not in self.chats:
            return self._bad("Bad Request: chat not found")
        text = params.get("text") or ""
        if not str(text).strip():
            return self._bad("Bad Request: message text is empty")
        limited = self._rate_check(chat, now)
        if limited:
            return limited
        err, plain = self._render(text, params.get("parse_mode"), MESSAGE_LIMIT)
        if err:
            return self._bad(err)
        self._accept(chat, now)
        self._next_id += 1
        record = {"kind": "message", "message_id": self._next_id, "chat_id": chat, "text": text, "plain": plain,
                  "parse_mode": params.get("parse_mode"), "silent": _truthy(params.get("disable_notification")),
                  "thread_id": params.get("message_thread_id"), "t": now, "edits": []}
        self.messages.append(record)
        return 200, {"ok": True, "result": {"message_id": self._next_id, "chat": {"id": int(chat)}, "text": plain}}

    def _edit(self, params: dict[str, Any], files: dict[str, bytes], now: float) -> tuple[int, dict[str, Any]]:
        chat = str(params.get("chat_id", ""))
        if chat not in self.chats:
            return self._bad("Bad Request: chat not found")
        target = next((m for m in self.messages if m["chat_id"] == chat and
                       m["message_id"] == int(params.get("message_id", -1))), None)
        if target is None:
            return self._bad("Bad Request: message to edit not found")
        limited = self._rate_check(chat, now)
        if limited:
            return limited
        text = params.get("text") or ""
        err, plain = self._render(text, params.get("parse_mode"), MESSAGE_LIMIT)
        if err:
            return self._bad(err)
        if text == target["text"] and params.get("parse_mode") == target["parse_mode"]:
            return self._bad(NOT_MODIFIED)
        self._accept(chat, now)
        target.update(text=text, plain=plain, parse_mode=params.get("parse_mode"))
        target["edits"].append(now)
        self.edits.append({"message_id": target["message_id"], "chat_id": chat, "text": text, "t": now})
        return 200, {"ok": True, "result": {"message_id": target["message_id"], "text": plain}}

    def _send_photo(self, params: dict[str, Any], files: dict[str, bytes], now: float) -> tuple[int, dict[str, Any]]:
        chat = str(params.get("chat_id", ""))
        if chat not in self.chats:
            return self._bad("Bad Request: chat not found")
        photo = files.get("photo")
        if not photo:
            return self._bad("Bad Request: there is no photo in the request")
        limited = self._rate_check(chat, now)
        if limited:
            return limited
        err, plain = self._render(params.get("caption") or "", params.get("parse_mode"), CAPTION_LIMIT)
        if err:
            return self._bad(err)
        self._accept(chat, now)
        self._next_id += 1
        self.messages.append({"kind": "photo", "message_id": self._next_id, "chat_id": chat,
                              "text": params.get("caption") or "", "plain": plain, "photo_bytes": len(photo),
                              "parse_mode": params.get("parse_mode"),
                              "silent": _truthy(params.get("disable_notification")), "t": now, "edits": []})
        return 200, {"ok": True, "result": {"message_id": self._next_id}}


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1")


def closed_port() -> int:
    """A loopback port with nothing listening (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
