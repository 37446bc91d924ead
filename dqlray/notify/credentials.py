"""Notification settings and credentials: environment variables or a protected config file, never the command line.

Precedence, highest first: explicit arguments (the guide's ``--telegram_token``/``--telegram_chat_id`` flags; accepted
with a warning, because command lines are visible to other users in ``ps``, ``/proc/*/cmdline`` and
``scontrol show job``), environment variables, then the config file.

Environment variables:
    ``TELEGRAM_BOT_TOKEN``, ``TELEGRAM_CHAT_ID``, ``DQLRAY_TELEGRAM_API_BASE``, ``DQLRAY_TELEGRAM_THREAD_ID``;
    ``DQLRAY_SMTP_HOST``, ``DQLRAY_SMTP_PORT``, ``DQLRAY_SMTP_SECURITY`` (``starttls``/``ssl``/``none``),
    ``DQLRAY_SMTP_USER``, ``DQLRAY_SMTP_PASSWORD``, ``DQLRAY_SMTP_FROM``, ``DQLRAY_SMTP_TO`` (comma-separated),
    ``DQLRAY_SMTP_CA_FILE`` (PEM CA bundle for a private CA);
    ``DQLRAY_NOTIFY_SPOOL`` (spool directory); ``DQLRAY_NOTIFY_CONFIG`` (config file path).

Config file (``$DQLRAY_NOTIFY_CONFIG``, else ``$XDG_CONFIG_HOME/dqlray/notify.yaml``, else
``~/.config/dqlray/notify.yaml``), which must be mode 0600 (no group/other bits) and owned by the user::

    telegram:
      token: "123456789:AA..."
      chat_id: "-1001234567890"
      api_base: https://api.telegram.org     # optional; a self-hosted Bot API server
      message_thread_id: 7                    # optional; a forum topic
    smtp:                                     # optional fallback when Telegram cannot be reached
      host: smtp.example.org
      port: 587
      security: starttls                      # starttls | ssl | none
      username: me
      password: "..."
      from: me@example.org
      to: [me@example.org]
    spool_dir: ~/.local/state/dqlray/notify-spool
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import stat
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dqlray.errors import ConfigError

DEFAULT_API_BASE = "https://api.telegram.org"
SMTP_SECURITY = ("starttls", "ssl", "none")
_CHAT_ID = re.compile(r"^(-?\d{1,20}|@[A-Za-z][A-Za-z0-9_]{3,})$")


class NotifyConfigError(ConfigError):
    """A notification setting or config file that cannot be used (one line, says how to fix it)."""


class CommandLineSecretWarning(UserWarning):
    """A secret was passed on the command line, where other users of the machine can read it."""


def default_spool_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/dqlray/notify-spool`` or ``~/.local/state/dqlray/notify-spool`` (on the shared home, so a
    login node with internet can relay what a compute node spooled)."""
    env = os.environ if env is None else env
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "dqlray" / "notify-spool"


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/dqlray/notify.yaml`` or ``~/.config/dqlray/notify.yaml``."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dqlray" / "notify.yaml"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, kw_only=True)
class SmtpConfig:
    """SMTP fallback settings (used when Telegram fails repeatedly or cannot be reached)."""

    host: str
    """SMTP server host name."""
    port: int = 587
    """SMTP port: 587 for STARTTLS, 465 for SSL, 25 for plain."""
    security: str = "starttls"
    """``starttls``, ``ssl`` or ``none`` (``none`` with a login only to a loopback host: no password in clear)."""
    username: str | None = None
    """Login name; no login when absent."""
    password: str | None = field(default=None, repr=False)
    """Login password (never printed)."""
    sender: str = ""
    """From address; defaults to ``username`` or ``dqlray@<host>``."""
    recipients: tuple[str, ...] = ()
    """To addresses (at least one)."""
    timeout_s: float = 20.0
    """Connect/read timeout for the SMTP connection."""
    ca_file: str | None = None
    """PEM file of CA certificates to trust instead of the system's (an institution's private CA)."""

    def __post_init__(self) -> None:
        if not self.host:
            raise NotifyConfigError("smtp.host is empty: give the SMTP server's host name")
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise NotifyConfigError(f"smtp.port={self.port!r} is not allowed: use an integer in 1..65535")
        if self.security not in SMTP_SECURITY:
            raise NotifyConfigError(
                f"smtp.security={self.security!r} is not allowed: use one of {', '.join(SMTP_SECURITY)}"
            )
        if not self.recipients:
            raise NotifyConfigError("smtp.to is empty: give at least one recipient address")
        for addr in self.recipients:
            if "@" not in addr:
                raise NotifyConfigError(f"smtp.to entry {addr!r} is not an email address")
        if self.username and self.security == "none" and not _is_loopback(self.host):
            raise NotifyConfigError(
                f"smtp.security='none' with a login to {self.host!r} would send the password in clear: "
                "use security starttls or ssl"
            )
        if self.ca_file is not None and not Path(self.ca_file).expanduser().is_file():
            raise NotifyConfigError(f"smtp.ca_file={self.ca_file!r} is not a file: give a PEM file of CA certificates")
        if self.timeout_s <= 0:
            raise NotifyConfigError(f"smtp.timeout_s={self.timeout_s!r} is not allowed: use a positive number")
        if not self.sender:
            object.__setattr__(self, "sender", self.username if self.username and "@" in self.username
                               else f"dqlray@{self.host}")


@dataclass(frozen=True, kw_only=True)
class NotifyConfig:
    """Everything the notifier needs. Holds the bot token: never pickle it into a Tune callback or results file."""

    token: str = field(repr=False)
    """Telegram bot token from @BotFather (never printed; redacted from every output)."""
    chat_id: str
    """Target chat: a user or group id (groups are negative) or ``@channelname``."""
    api_base: str = DEFAULT_API_BASE
    """Bot API base URL (a self-hosted Bot API server, or a local fake in tests). https, or http to loopback only."""
    message_thread_id: int | None = None
    """Forum topic to post into, if the chat is a forum."""
    smtp: SmtpConfig | None = None
    """Email fallback; ``None`` means spool only."""
    spool_dir: Path = field(default_factory=default_spool_dir)
    """Where undeliverable critical messages are kept for ``dqlray notify relay`` (created 0700, files 0600)."""
    connect_timeout_s: float = 5.0
    """TCP connect timeout for every Bot API call (a firewall that drops packets would otherwise hang forever)."""
    read_timeout_s: float = 15.0
    """Read timeout for every Bot API call (photos get four times as long)."""
    min_interval_s: float = 1.0
    """Least time between two messages (sends and edits) to one chat; Telegram's soft limit is about 1/s."""
    group_per_minute: int = 20
    """Most messages per rolling minute to a group or channel (negative chat id or ``@name``)."""
    queue_size: int = 200
    """Most queued non-critical messages; older ones are dropped first. Critical ones are never dropped."""
    breaker_threshold: int = 3
    """Consecutive failed sends after which Telegram is given up for ``breaker_cooldown_s`` (fallback used)."""
    breaker_cooldown_s: float = 300.0
    """How long to route critical messages to email/spool before trying Telegram again."""
    retry_backoff_s: float = 2.0
    """First wait after a failed send; doubles on each consecutive failure (capped at 60 s)."""
    source: str = "arguments"
    """Where the credentials came from (for messages; never the values)."""

    def __post_init__(self) -> None:
        if not isinstance(self.token, str) or not self.token.strip():
            raise NotifyConfigError("telegram token is empty: set TELEGRAM_BOT_TOKEN or telegram.token in the "
                                    "config file")
        if any(c.isspace() or c == "/" for c in self.token):
            raise NotifyConfigError("telegram token contains whitespace or '/': copy it exactly as @BotFather "
                                    "gave it")
        chat = str(self.chat_id).strip()
        if not _CHAT_ID.match(chat):
            raise NotifyConfigError(
                f"telegram chat_id={self.chat_id!r} is not allowed: use a numeric id (negative for groups) "
                "or @channelname"
            )
        object.__setattr__(self, "chat_id", chat)
        parts = urlsplit(self.api_base)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise NotifyConfigError(f"telegram api_base={self.api_base!r} is not allowed: use an https:// URL")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise NotifyConfigError(
                f"telegram api_base={self.api_base!r} is not allowed: plain http only to a loopback host; "
                "the token travels in the URL"
            )
        object.__setattr__(self, "api_base", self.api_base.rstrip("/"))
        for name in ("connect_timeout_s", "read_timeout_s", "breaker_cooldown_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise NotifyConfigError(f"{name}={value!r} is not allowed: use a positive number of seconds")
        for name in ("min_interval_s", "retry_backoff_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise NotifyConfigError(f"{name}={value!r} is not allowed: use a number of seconds >= 0")
        for name in ("group_per_minute", "queue_size", "breaker_threshold"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise NotifyConfigError(f"{name}={value!r} is not allowed: use an integer >= 1")
        object.__setattr__(self, "spool_dir", Path(self.spool_dir).expanduser())

    @property
    def is_group(self) -> bool:
        """Whether the chat is a group or channel (stricter rate limit: ``group_per_minute``)."""
        return self.chat_id.startswith(("-", "@"))

    @property
    def secrets(self) -> tuple[str, ...]:
        """Literal secrets to redact (token, SMTP password)."""
        return tuple(s for s in (self.token, self.smtp.password if self.smtp else None) if s)

    def replace(self, **changes: Any) -> NotifyConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


def check_private_file(path: Path) -> None:
    """Refuse ``path`` unless it is a regular file owned by the current user with no group/other permission bits."""
    try:
        st = path.stat()
    except OSError as exc:
        raise NotifyConfigError(f"cannot read notify config {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise NotifyConfigError(f"notify config {path} is not a regular file")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise NotifyConfigError(
            f"refusing notify config {path}: owned by uid {st.st_uid}, not you (uid {os.getuid()}); "
            f"fix with: cp {path} ~/.config/dqlray/notify.yaml && chmod 600 ~/.config/dqlray/notify.yaml"
        )
    if st.st_mode & 0o077:
        raise NotifyConfigError(
            f"refusing notify config {path}: mode {stat.S_IMODE(st.st_mode):04o} lets other users read the bot "
            f"token; fix with: chmod 600 {path}"
        )


_TELEGRAM_KEYS = {"token", "chat_id", "api_base", "message_thread_id"}
_SMTP_KEYS = {"host", "port", "security", "username", "password", "from", "to", "timeout_s", "ca_file"}
_TOP_KEYS = {"telegram", "smtp", "spool_dir"}


def _read_config_file(path: Path) -> dict[str, Any]:
    import yaml  # local import: only needed when a file exists

    check_private_file(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        # The YAML error text may quote a line of the file (the token): give the position only.
        where = getattr(exc, "problem_mark", None)
        pos = f" at line {where.line + 1}" if where is not None else ""
        raise NotifyConfigError(f"notify config {path} is not valid YAML{pos}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise NotifyConfigError(f"notify config {path} must be a mapping with keys {sorted(_TOP_KEYS)}")
    _check_keys(path, "", data, _TOP_KEYS)
    for section, allowed in (("telegram", _TELEGRAM_KEYS), ("smtp", _SMTP_KEYS)):
        sub = data.get(section)
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise NotifyConfigError(f"notify config {path}: '{section}' must be a mapping")
        _check_keys(path, f"{section}.", sub, allowed)
    return data


def _check_keys(path: Path, prefix: str, data: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise NotifyConfigError(
            f"notify config {path}: unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"allowed: {', '.join(prefix + k for k in sorted(allowed))}"
        )


def _first(*values: Any) -> Any:
    return next((v for v in values if v not in (None, "")), None)


def _as_int(name: str, value: Any) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise NotifyConfigError(f"{name}={value!r} is not allowed: use an integer") from None


def load_notify_config(
    token: str | None = None,
    chat_id: str | int | None = None,
    config_file: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> NotifyConfig | None:
    """Load notification settings; ``None`` when nothing is configured (notifications are then off).

    ``token``/``chat_id`` are the guide's ``--telegram_token``/``--telegram_chat_id`` flags: accepted, with a
    :class:`CommandLineSecretWarning` (printed once per call site by Python's warnings machinery) because command
    lines are visible to other users. ``env`` replaces ``os.environ`` (tests). ``overrides`` set other
    :class:`NotifyConfig` fields (``min_interval_s=...``).

    Raises :class:`NotifyConfigError` (one line, says how to fix) for a config file that is not 0600 and yours, an
    unknown key, or a token without a chat id.
    """
    env = os.environ if env is None else env
    if token or chat_id:
        warnings.warn(
            "--telegram_token/--telegram_chat_id are visible to other users (ps, /proc/*/cmdline, "
            "scontrol show job); put them in TELEGRAM_BOT_TOKEN/TELEGRAM_CHAT_ID or a chmod 600 "
            "~/.config/dqlray/notify.yaml instead",
            CommandLineSecretWarning,
            stacklevel=2,
        )
    explicit = config_file or env.get("DQLRAY_NOTIFY_CONFIG")
    path = Path(explicit).expanduser() if explicit else default_config_path(env)
    data: dict[str, Any] = {}
    if path.exists():
        data = _read_config_file(path)
    elif explicit:
        raise NotifyConfigError(f"notify config {path} does not exist (from "
                                f"{'config_file' if config_file else 'DQLRAY_NOTIFY_CONFIG'})")
    tg = data.get("telegram") or {}
    sm = data.get("smtp") or {}

    tok = _first(token, env.get("TELEGRAM_BOT_TOKEN"), tg.get("token"))
    chat = _first(chat_id, env.get("TELEGRAM_CHAT_ID"), tg.get("chat_id"))
    if tok is None and chat is None:
        return None
    if tok is None:
        raise NotifyConfigError("TELEGRAM_CHAT_ID is set but no bot token: set TELEGRAM_BOT_TOKEN or "
                                f"telegram.token in {path}")
    if chat is None:
        raise NotifyConfigError("a Telegram bot token is set but no chat: set TELEGRAM_CHAT_ID or "
                                f"telegram.chat_id in {path}")
    source = "arguments" if token else ("environment" if env.get("TELEGRAM_BOT_TOKEN") else str(path))

    smtp = None
    smtp_host = _first(env.get("DQLRAY_SMTP_HOST"), sm.get("host"))
    if smtp_host:
        to = _first(env.get("DQLRAY_SMTP_TO"), sm.get("to"))
        recipients = tuple(a.strip() for a in (to.split(",") if isinstance(to, str) else (to or [])) if a.strip())
        smtp = SmtpConfig(
            host=str(smtp_host),
            port=_as_int("smtp.port", _first(env.get("DQLRAY_SMTP_PORT"), sm.get("port"))) or 587,
            security=str(_first(env.get("DQLRAY_SMTP_SECURITY"), sm.get("security")) or "starttls").lower(),
            username=_first(env.get("DQLRAY_SMTP_USER"), sm.get("username")),
            password=_first(env.get("DQLRAY_SMTP_PASSWORD"), sm.get("password")),
            sender=str(_first(env.get("DQLRAY_SMTP_FROM"), sm.get("from")) or ""),
            recipients=recipients,
            timeout_s=float(sm.get("timeout_s", 20.0)),
            ca_file=_first(env.get("DQLRAY_SMTP_CA_FILE"), sm.get("ca_file")),
        )
    kwargs: dict[str, Any] = {
        "token": str(tok).strip(),
        "chat_id": str(chat),
        "api_base": _first(env.get("DQLRAY_TELEGRAM_API_BASE"), tg.get("api_base")) or DEFAULT_API_BASE,
        "message_thread_id": _as_int("telegram.message_thread_id",
                                     _first(env.get("DQLRAY_TELEGRAM_THREAD_ID"), tg.get("message_thread_id"))),
        "smtp": smtp,
        "spool_dir": Path(_first(env.get("DQLRAY_NOTIFY_SPOOL"), data.get("spool_dir"))
                          or default_spool_dir(env)).expanduser(),
        "source": source,
    }
    kwargs.update(overrides)
    return NotifyConfig(**kwargs)
