"""Email fallback over SMTP (STARTTLS, SSL or plain to loopback), for when Telegram cannot be reached; everything in
a message is redacted first. (``mail``: ``email`` would shadow the standard library's package.)"""

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


def send_email(cfg: SmtpConfig, text_html: str, *, attachments: Iterable[str] = (),
               secrets: Iterable[str | None] = ()) -> None:
    """Send one fallback email: the plain text (its first line the subject), an HTML alternative, the pictures that
    exist and are small; raise :class:`EmailError` (redacted, ``from None``) on any failure."""
    secrets = (*tuple(secrets), cfg.password or "")
    body_html = redact(text_html, secrets)
    plain = html_to_plain(body_html)
    msg = EmailMessage()
    msg["Subject"] = next((line.strip() for line in plain.splitlines() if line.strip()), "dqlray notification")[:150]
    msg["From"], msg["To"] = cfg.sender, ", ".join(cfg.recipients)
    msg["Date"], msg["Message-ID"] = formatdate(localtime=True), make_msgid(domain="dqlray.local")
    msg.set_content(plain)
    msg.add_alternative("<html><body><div style=\"font-family: sans-serif; white-space: pre-wrap\">"
                        + body_html.replace("\n", "<br>\n") + "</div></body></html>", subtype="html")
    for path in map(Path, attachments):
        try:
            if path.is_file() and path.stat().st_size <= ATTACHMENT_MAX_BYTES:
                msg.add_attachment(path.read_bytes(), maintype="image", filename=path.name,
                                   subtype="png" if path.suffix.lower() == ".png" else "jpeg")
        except OSError:
            continue
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
