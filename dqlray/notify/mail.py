"""Email fallback over SMTP (STARTTLS, SSL or plain to loopback), for when Telegram cannot be reached.

Named ``mail`` rather than ``email`` so that it never shadows the standard library's ``email`` package.
Everything that goes into a message (subject, body) is redacted first.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Iterable
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from dqlray.notify.credentials import SmtpConfig
from dqlray.notify.messages import html_to_plain
from dqlray.notify.redact import redact

ATTACHMENT_MAX_BYTES = 5 * 1024 * 1024


class EmailError(Exception):
    """Sending the fallback email failed (message redacted)."""


def build_email(cfg: SmtpConfig, text_html: str, *, subject: str | None = None,
                attachments: Iterable[str] = (), secrets: Iterable[str | None] = ()) -> EmailMessage:
    """An email with the plain text, an HTML alternative, and the picture attachments that exist and are small."""
    secrets = tuple(secrets)
    body_html = redact(text_html, secrets)
    plain = html_to_plain(body_html)
    first = next((line.strip() for line in plain.splitlines() if line.strip()), "dqlray notification")
    msg = EmailMessage()
    msg["Subject"] = redact(subject or first, secrets)[:150]
    msg["From"] = cfg.sender
    msg["To"] = ", ".join(cfg.recipients)
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain="dqlray.local")
    msg.set_content(plain)
    msg.add_alternative(
        "<html><body><div style=\"font-family: sans-serif; white-space: pre-wrap\">"
        + body_html.replace("\n", "<br>\n")
        + "</div></body></html>",
        subtype="html",
    )
    for item in attachments:
        path = Path(item)
        try:
            if not path.is_file() or path.stat().st_size > ATTACHMENT_MAX_BYTES:
                continue
            data = path.read_bytes()
        except OSError:
            continue
        subtype = "png" if path.suffix.lower() == ".png" else "jpeg"
        msg.add_attachment(data, maintype="image", subtype=subtype, filename=path.name)
    return msg


def send_email(cfg: SmtpConfig, text_html: str, *, subject: str | None = None,
               attachments: Iterable[str] = (), secrets: Iterable[str | None] = ()) -> None:
    """Send one fallback email; raise :class:`EmailError` (redacted, ``from None``) on any failure."""
    secrets = (*tuple(secrets), cfg.password or "")
    msg = build_email(cfg, text_html, subject=subject, attachments=attachments, secrets=secrets)
    try:
        context = ssl.create_default_context(cafile=cfg.ca_file)  # verification stays on
        smtp: smtplib.SMTP
        if cfg.security == "ssl":
            smtp = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout_s, context=context)
        else:
            smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_s)
        with smtp:
            smtp.ehlo()
            if cfg.security == "starttls":
                smtp.starttls(context=context)
                smtp.ehlo()
            if cfg.username:
                smtp.login(cfg.username, cfg.password or "")
            smtp.send_message(msg)
    except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
        raise EmailError(redact(f"email via {cfg.host}:{cfg.port} failed: {type(exc).__name__}: {exc}",
                                secrets)) from None
