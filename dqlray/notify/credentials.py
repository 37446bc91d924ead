"""Notification settings and credentials: frozen, keyword-only sections in the style of :mod:`dqlray.config`.

Precedence: the 0600 config file (``$DQLRAY_NOTIFY_CONFIG`` or ``~/.config/dqlray/notify.yaml``) < environment
variables (:data:`KEYS`) < the guide's ``--telegram_token``/``--telegram_chat_id`` flags (with a warning: command lines
are visible to other users). Errors are :class:`~dqlray.errors.ConfigError`, naming the field, never a secret.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import stat
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dqlray.config import _check, load_yaml
from dqlray.errors import ConfigError

SMTP_SECURITY = ("starttls", "ssl", "none")
_CHAT_ID = re.compile(r"^(-?\d{1,20}|@[A-Za-z][A-Za-z0-9_]{3,})$")


class CommandLineSecretWarning(UserWarning):
    """A secret was passed on the command line, where other users of the machine can read it."""


def default_spool_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/dqlray/notify-spool`` or ``~/.local/state/dqlray/notify-spool`` (on the shared home, so a
    login node with internet can relay what a compute node spooled)."""
    base = (os.environ if env is None else env).get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "dqlray" / "notify-spool"


def _is_loopback(host: str) -> bool:
    try:  # plain http, or SMTP without TLS, only to this machine
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _numbers(obj: Any, names: tuple[str, ...], ok: Any, allowed: str) -> None:
    """``_check`` each field in ``names``: a finite number (not a bool) for which ``ok`` holds."""
    section = "smtp" if isinstance(obj, SmtpConfig) else "notify"
    for name in names:
        value = getattr(obj, name)
        _check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and ok(value),
               section, name, value, allowed)


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
        _check(bool(self.host), "smtp", "host", self.host, "the SMTP server's host name")
        _check(isinstance(self.port, int) and 0 < self.port < 65536, "smtp", "port", self.port,
               "an integer in 1..65535")
        _check(self.security in SMTP_SECURITY, "smtp", "security", self.security,
               f"use one of {', '.join(SMTP_SECURITY)}")
        _check(bool(self.recipients), "smtp", "to", self.recipients, "give at least one recipient address")
        for addr in self.recipients:
            _check("@" in addr, "smtp", "to", addr, "an email address")
        _check(not (self.username and self.security == "none" and not _is_loopback(self.host)), "smtp", "security",
               self.security, f"a login to {self.host!r} with 'none' would send the password in clear: "
               "use starttls or ssl")
        _check(self.ca_file is None or Path(self.ca_file).expanduser().is_file(), "smtp", "ca_file", self.ca_file,
               "a PEM file of CA certificates")
        _numbers(self, ("timeout_s",), lambda v: v > 0, "a positive number of seconds")
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
    api_base: str = "https://api.telegram.org"
    """Bot API base URL (a self-hosted Bot API server, or a local fake in tests). https, or http to loopback only."""
    message_thread_id: int | None = None
    """Forum topic to post into, if the chat is a forum."""
    smtp: SmtpConfig | None = None
    """Email fallback; ``None`` means spool only."""
    spool_dir: Path = field(default_factory=default_spool_dir)
    """Where undeliverable critical messages are kept for ``dqlray notify relay`` (0700, files 0600)."""
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
        # The token's value never goes into an error message.
        if not isinstance(self.token, str) or not self.token.strip():
            raise ConfigError("telegram.token is empty: set TELEGRAM_BOT_TOKEN or telegram.token in the config file")
        if any(c.isspace() or c == "/" for c in self.token):
            raise ConfigError("telegram.token contains whitespace or '/': copy it exactly as @BotFather gave it")
        chat = str(self.chat_id).strip()
        _check(bool(_CHAT_ID.match(chat)), "telegram", "chat_id", self.chat_id,
               "use a numeric id (negative for groups) or @channelname")
        object.__setattr__(self, "chat_id", chat)
        url = urlsplit(self.api_base)
        _check(url.scheme in ("https", "http") and bool(url.hostname), "telegram", "api_base", self.api_base,
               "use an https:// URL")
        _check(url.scheme == "https" or _is_loopback(url.hostname or ""), "telegram", "api_base", self.api_base,
               "plain http only to a loopback host; the token travels in the URL")
        object.__setattr__(self, "api_base", self.api_base.rstrip("/"))
        _numbers(self, ("connect_timeout_s", "read_timeout_s", "breaker_cooldown_s"), lambda v: v > 0,
                 "a positive number of seconds")
        _numbers(self, ("min_interval_s", "retry_backoff_s"), lambda v: v >= 0, "a number of seconds >= 0")
        _numbers(self, ("group_per_minute", "queue_size", "breaker_threshold"), lambda v: isinstance(v, int) and v >= 1,
                 "an integer >= 1")
        object.__setattr__(self, "spool_dir", Path(self.spool_dir).expanduser())

    @property
    def is_group(self) -> bool:
        """Whether the chat is a group or channel (stricter rate limit: ``group_per_minute``)."""
        return self.chat_id.startswith(("-", "@"))

    @property
    def secrets(self) -> tuple[str, ...]:
        """Literal secrets to redact (token, SMTP password)."""
        return tuple(s for s in (self.token, self.smtp.password if self.smtp else None) if s)


def check_private_file(path: Path) -> None:
    """Refuse ``path`` unless it is a regular file owned by the current user with no group/other permission bits."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot read notify config {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"notify config {path} is not a regular file")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise ConfigError(
            f"refusing notify config {path}: owned by uid {st.st_uid}, not you (uid {os.getuid()}); "
            f"fix with: cp {path} ~/.config/dqlray/notify.yaml && chmod 600 ~/.config/dqlray/notify.yaml")
    if st.st_mode & 0o077:
        raise ConfigError(f"refusing notify config {path}: mode {stat.S_IMODE(st.st_mode):04o} lets other users read "
                          f"the bot token; fix with: chmod 600 {path}")


KEYS: dict[str, tuple[str, str, Any]] = {
    "telegram.api_base": ("api_base", "DQLRAY_TELEGRAM_API_BASE", str),
    "telegram.chat_id": ("chat_id", "TELEGRAM_CHAT_ID", str),
    "telegram.message_thread_id": ("message_thread_id", "DQLRAY_TELEGRAM_THREAD_ID", int),
    "telegram.token": ("token", "TELEGRAM_BOT_TOKEN", lambda v: str(v).strip()),
    "smtp.ca_file": ("ca_file", "DQLRAY_SMTP_CA_FILE", str),
    "smtp.from": ("sender", "DQLRAY_SMTP_FROM", str),
    "smtp.host": ("host", "DQLRAY_SMTP_HOST", str),
    "smtp.password": ("password", "DQLRAY_SMTP_PASSWORD", str),
    "smtp.port": ("port", "DQLRAY_SMTP_PORT", int),
    "smtp.security": ("security", "DQLRAY_SMTP_SECURITY", lambda v: str(v).lower()),
    "smtp.timeout_s": ("timeout_s", "", float),
    "smtp.to": ("recipients", "DQLRAY_SMTP_TO",
                lambda v: tuple(a.strip() for a in (v.split(",") if isinstance(v, str) else v) if a.strip())),
    "smtp.username": ("username", "DQLRAY_SMTP_USER", str),
    "spool_dir": ("spool_dir", "DQLRAY_NOTIFY_SPOOL", Path),
}
"""Each config file key: the field it sets, the environment variable that overrides it, and how a value is read
(an environment variable's is text; ``smtp.to`` is a list, or comma-separated)."""
_READS = {int: "an integer", float: "a number"}


def _read_config_file(path: Path) -> dict[str, Any]:
    """The file's values by key (``telegram.token``), once its permissions and its keys are checked."""
    check_private_file(path)
    flat: dict[str, Any] = {}
    for key, value in load_yaml(path).items():
        if key not in ("telegram", "smtp"):
            flat[str(key)] = value
        elif value is not None and not isinstance(value, dict):
            raise ConfigError(f"notify config {path}: '{key}' must be a mapping")
        else:
            flat.update((f"{key}.{k}", v) for k, v in (value or {}).items())
    unknown = [key for key in flat if key not in KEYS]
    if unknown:
        raise ConfigError(f"notify config {path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(KEYS)}")
    return flat


def _first(*values: Any) -> Any:
    return next((v for v in values if v not in (None, "")), None)


def _fields(values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The fields the given ``values`` (by key) set in one section; the section's defaults hold for the rest."""
    out = {}
    for key, (name, _, read) in KEYS.items():
        if key.startswith(prefix) and key in values:
            try:
                out[name] = read(values[key])
            except (TypeError, ValueError):
                raise ConfigError(f"{key}={values[key]!r} is not allowed: use {_READS.get(read, 'text')}") from None
    return out


def load_notify_config(token: str | None = None, chat_id: str | int | None = None,
                       config_file: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None,
                       **overrides: Any) -> NotifyConfig | None:
    """Load notification settings; ``None`` when nothing is configured (notifications are then off).

    ``token``/``chat_id`` are the guide's flags (with a :class:`CommandLineSecretWarning`); ``env`` replaces
    ``os.environ`` (tests); ``overrides`` set other :class:`NotifyConfig` fields (``min_interval_s=...``). Raises
    :class:`~dqlray.errors.ConfigError` (one line, says how to fix) for a config file that is not 0600 and yours, an
    unknown key, or a token without a chat id.
    """
    env = os.environ if env is None else env
    if token or chat_id:
        warnings.warn("--telegram_token/--telegram_chat_id are visible to other users (ps, /proc/*/cmdline, "
                      "scontrol show job); put them in TELEGRAM_BOT_TOKEN/TELEGRAM_CHAT_ID or a chmod 600 "
                      "~/.config/dqlray/notify.yaml instead", CommandLineSecretWarning, stacklevel=2)
    explicit = config_file or env.get("DQLRAY_NOTIFY_CONFIG")
    path = Path(explicit or Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "dqlray/notify.yaml")
    path = path.expanduser()
    if explicit and not path.exists():
        raise ConfigError(f"notify config {path} does not exist (from "
                          f"{'config_file' if config_file else 'DQLRAY_NOTIFY_CONFIG'})")
    data = _read_config_file(path) if path.exists() else {}
    args = {"telegram.token": token, "telegram.chat_id": chat_id}
    values = {key: v for key, (_, var, _) in KEYS.items() if (v := _first(args.get(key), env.get(var), data.get(key)))}
    values.setdefault("spool_dir", default_spool_dir(env))
    if "telegram.token" not in values and "telegram.chat_id" not in values:
        return None
    if "telegram.token" not in values:
        raise ConfigError(f"TELEGRAM_CHAT_ID is set but no bot token: set TELEGRAM_BOT_TOKEN or telegram.token in {path}")
    if "telegram.chat_id" not in values:
        raise ConfigError(f"a Telegram bot token is set but no chat: set TELEGRAM_CHAT_ID or telegram.chat_id in {path}")
    smtp = SmtpConfig(**_fields(values, "smtp.")) if "smtp.host" in values else None
    source = "arguments" if token else ("environment" if env.get("TELEGRAM_BOT_TOKEN") else str(path))
    return NotifyConfig(**_fields(values, "telegram."), **_fields(values, "spool_dir"), smtp=smtp, source=source,
                        **overrides)
