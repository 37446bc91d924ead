"""A real SMTP server on loopback (aiosmtpd) that keeps every message it receives.

Optionally with STARTTLS (a self-signed certificate made with the ``openssl`` command) and AUTH LOGIN/PLAIN.
"""

from __future__ import annotations

import email
import email.policy
import shutil
import socket
import ssl
import subprocess
import threading
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


class _Sink:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.raw: list[bytes] = []
        self.logins: list[str] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        data = envelope.original_content or envelope.content
        msg = email.message_from_bytes(data, policy=email.policy.default)
        with self.lock:
            self.raw.append(data)
            self.messages.append(msg)  # type: ignore[arg-type]
        return "250 OK"


def make_self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """(cert, key) for 127.0.0.1/localhost via the openssl command (no extra Python package needed)."""
    if shutil.which("openssl") is None:
        raise FileNotFoundError("openssl")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class SmtpSink:
    """``with SmtpSink() as smtp:`` -> ``smtp.host``, ``smtp.port``, ``smtp.messages``.

    ``tls=(cert, key)`` requires STARTTLS; ``login=(user, password)`` requires AUTH (only after STARTTLS).
    """

    def __init__(self, *, tls: tuple[Path, Path] | None = None, login: tuple[str, str] | None = None) -> None:
        self._sink = _Sink()
        with socket.socket() as s:  # aiosmtpd's readiness check cannot use port 0: pick a free port first
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.host = "127.0.0.1"
        kwargs: dict[str, Any] = {}
        if tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            kwargs.update(tls_context=ctx, require_starttls=True)
        if login is not None:
            sink = self._sink

            def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
                user = auth_data.login.decode() if isinstance(auth_data.login, bytes) else auth_data.login
                password = auth_data.password.decode() if isinstance(auth_data.password, bytes) else auth_data.password
                ok = (user, password) == login
                if ok:
                    with sink.lock:
                        sink.logins.append(user)
                return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535

            kwargs.update(authenticator=authenticator, auth_required=True, auth_require_tls=True)
        self._controller = Controller(self._sink, hostname=self.host, port=self.port, **kwargs)

    def __enter__(self) -> SmtpSink:
        self._controller.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._controller.stop()

    @property
    def messages(self) -> list[EmailMessage]:
        with self._sink.lock:
            return list(self._sink.messages)

    @property
    def raw(self) -> list[bytes]:
        with self._sink.lock:
            return list(self._sink.raw)

    @property
    def logins(self) -> list[str]:
        with self._sink.lock:
            return list(self._sink.logins)
