"""``dqlray notify test`` and ``dqlray notify relay``: one redacted line per fact, never a traceback.

Exit status: 0 ok; 1 unexpected error; 2 not configured / config refused; 3 network unreachable;
4 token rejected or rate limited (relay); 5 chat wrong / message refused.
"""

from __future__ import annotations

import argparse
import functools
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dqlray.errors import ConfigError
from dqlray.notify.credentials import NotifyConfig, load_notify_config
from dqlray.notify.messages import esc
from dqlray.notify.redact import redact
from dqlray.notify.sender import RateGovernor
from dqlray.notify.spool import Spool
from dqlray.notify.telegram import TelegramApiError, TelegramClient, TelegramRetryAfter, TelegramTransportError

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_NETWORK, EXIT_TOKEN, EXIT_CHAT = 0, 1, 2, 3, 4, 5


def add_notify_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``notify test`` and ``notify relay`` on an ``argparse`` subparsers object; returns the parser."""
    parser = subparsers.add_parser("notify", help="Telegram notifications: check the setup, relay the spool",
                                   description="Telegram notifications: check the setup, relay the spool.")
    sub = parser.add_subparsers(dest="notify_command", metavar="{test,relay}")
    sub.required = True
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=None,
                        help="notify config file (default: $DQLRAY_NOTIFY_CONFIG or ~/.config/dqlray/notify.yaml)")
    common.add_argument("--timeout", type=float, default=10.0, metavar="S",
                        help="read timeout per Bot API call in seconds (default 10)")
    test = sub.add_parser("test", parents=[common], help="send one test message and say what is wrong, if anything",
                          description="Check the token (getMe), then send one message to the chat.")
    test.set_defaults(func=cmd_test, max_wait=10.0)
    relay = sub.add_parser("relay", parents=[common],
                           help="send spooled messages to Telegram (run on a node with internet)",
                           description="Send every spooled message once, oldest first, and delete it.")
    relay.add_argument("--spool-dir", default=None, metavar="DIR", help="spool directory (default: from config)")
    relay.add_argument("--max-wait", type=float, default=120.0, metavar="S",
                       help="longest 429 retry_after to wait out before giving up for now (default 120)")
    relay.add_argument("--reclaim-after", type=float, default=None, metavar="S",
                       help="first give back files claimed by a relay that died more than S seconds ago "
                            "(risks one duplicate)")
    relay.set_defaults(func=cmd_relay)
    return parser


def _say(msg: str, secrets: tuple[str, ...] = (), *, err: bool = False) -> None:
    print(redact(msg, secrets), file=sys.stderr if err else sys.stdout, flush=True)


def _unreachable_msg(cfg: NotifyConfig, exc: TelegramTransportError) -> str:
    return (f"network: cannot reach {cfg.api_base} ({exc.description}). Compute nodes often have no internet: "
            "messages are spooled there; run `dqlray notify relay` on a login node.")


def _paced(cfg: NotifyConfig, client: TelegramClient, max_wait_s: float) -> Callable[..., Any]:
    """``send("send_message", text, ...)``: a call to the configured chat, paced by the sender's
    :class:`~dqlray.notify.sender.RateGovernor`; a 429 holds the chat there, as in the sender, and is waited out
    (three times at most) when it asks for at most ``max_wait_s``."""
    governor = RateGovernor(cfg.min_interval_s, cfg.group_per_minute if cfg.is_group else None)

    def send(method: str, *a: Any, **kw: Any) -> Any:
        for retries_left in (3, 2, 1, 0):
            time.sleep(max(0.0, governor.next_allowed() - time.monotonic()))
            governor.record()
            try:
                return getattr(client, method)(cfg.chat_id, *a, thread_id=cfg.message_thread_id, **kw)
            except TelegramRetryAfter as exc:
                if not retries_left or (wait := exc.retry_after or 1.0) > max_wait_s:
                    raise
                governor.block(wait)

    return send


def _command(body: Callable[[argparse.Namespace, NotifyConfig, TelegramClient], int]) -> Callable[..., int]:
    """Load the settings and open a client for ``body``; every failure becomes one redacted line and an exit status."""

    @functools.wraps(body)
    def run(args: argparse.Namespace) -> int:
        cfg = None
        try:
            cfg = load_notify_config(config_file=args.config)
            if cfg is None:
                _say("notifications are not configured: export TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_ID, or put them in "
                     "~/.config/dqlray/notify.yaml (chmod 600)", err=True)
                return EXIT_CONFIG
            timeout = max(1.0, float(args.timeout))
            client = TelegramClient(cfg.token, api_base=cfg.api_base, connect_timeout_s=min(cfg.connect_timeout_s, timeout),
                                    read_timeout_s=timeout, secrets=cfg.secrets)
            try:
                return body(args, cfg, client)
            finally:
                client.close()
        except ConfigError as exc:
            _say(f"config: {exc}", cfg.secrets if cfg else (), err=True)
            return EXIT_CONFIG
        except TelegramTransportError as exc:
            assert cfg is not None  # a transport error needs a client
            _say(_unreachable_msg(cfg, exc), cfg.secrets, err=True)
            return EXIT_NETWORK
        except Exception as exc:  # never a traceback: it could carry the token
            _say(f"error: {type(exc).__name__}: {exc}", cfg.secrets if cfg else (), err=True)
            return EXIT_ERROR

    return run


@_command
def cmd_test(args: argparse.Namespace, cfg: NotifyConfig, client: TelegramClient) -> int:
    """Check the token (getMe) and the chat (sendMessage); one line per result; non-zero exit on failure."""
    try:
        me = client.get_me()
    except TelegramApiError as exc:
        if not exc.is_unauthorized:
            _say(f"token: getMe failed: {exc}", cfg.secrets, err=True)
            return EXIT_ERROR
        _say(f"token: rejected by Telegram ({exc.error_code} {exc.api_description}); check TELEGRAM_BOT_TOKEN "
             f"against @BotFather (credentials from {cfg.source})", cfg.secrets, err=True)
        return EXIT_TOKEN
    bot = me.get("username") or me.get("first_name") or "?"
    _say(f"token: OK, bot @{bot} (credentials from {cfg.source})", cfg.secrets)
    text = (f"🔔 <b>dqlray test message</b>\nFrom <code>{esc(socket.gethostname())}</code> at "
            f"{esc(time.strftime('%Y-%m-%d %H:%M:%S'))}. Notifications work.")
    try:
        mid = _paced(cfg, client, args.max_wait)("send_message", text)
    except TelegramApiError as exc:
        if exc.is_chat_not_found:
            _say(f"chat: {cfg.chat_id} not found: open a chat with @{bot} and send /start (or add the bot to the "
                 "group), then check TELEGRAM_CHAT_ID", cfg.secrets, err=True)
        elif exc.error_code == 403:
            _say(f"chat: the bot may not post to {cfg.chat_id} ({exc.api_description}): unblock it or add it to the "
                 "group", cfg.secrets, err=True)
        else:
            _say(f"chat: sendMessage to {cfg.chat_id} failed: {exc}", cfg.secrets, err=True)
        return EXIT_CHAT
    _say(f"chat: OK, test message {mid} sent to {cfg.chat_id}", cfg.secrets)
    waiting = len(Spool(cfg.spool_dir).pending())
    if waiting:
        _say(f"spool: {waiting} message(s) waiting in {cfg.spool_dir}; send them with `dqlray notify relay`",
             cfg.secrets)
    return EXIT_OK


@_command
def cmd_relay(args: argparse.Namespace, cfg: NotifyConfig, client: TelegramClient) -> int:
    """Send each spooled message to Telegram exactly once (claim, send, delete), oldest first, then its pictures."""
    spool = Spool(Path(args.spool_dir).expanduser() if args.spool_dir else cfg.spool_dir, cfg.secrets)
    if args.reclaim_after is not None and (n := spool.reclaim_stale(args.reclaim_after)):
        _say(f"relay: gave back {n} file(s) left claimed by an earlier relay", cfg.secrets)
    send = _paced(cfg, client, args.max_wait)
    sent, status = 0, EXIT_OK
    for path in spool.pending():
        if (claimed := spool.claim(path)) is None:
            continue  # another relay took it
        try:
            entry = Spool.load(claimed)
        except (OSError, ValueError) as exc:
            claimed.rename(bad := claimed.with_suffix(".bad"))
            _say(f"relay: {path.name} is unreadable ({type(exc).__name__}); moved to {bad.name}", cfg.secrets, err=True)
            continue
        for missing in [p for p in (entry.photo_path, *entry.attachments) if p and not Path(p).is_file()]:
            _say(f"relay: picture {missing} of {path.name} not found; sending the text without it", cfg.secrets,
                 err=True)
        try:
            if entry.photo_path and Path(entry.photo_path).is_file():
                send("send_photo", entry.photo_path, entry.text, silent=entry.silent)
            else:
                send("send_message", entry.text, silent=entry.silent)
        except BaseException as exc:
            spool.release(claimed)  # a later relay retries it
            if isinstance(exc, TelegramRetryAfter):
                msg, status = f"relay: Telegram asks to wait {exc.retry_after:.0f} s; run the relay again later", EXIT_TOKEN
            elif isinstance(exc, TelegramTransportError):
                msg, status = _unreachable_msg(cfg, exc), EXIT_NETWORK
            elif isinstance(exc, TelegramApiError):
                msg, status = f"relay: Telegram refused {path.name}: {exc}", EXIT_TOKEN if exc.is_unauthorized else EXIT_CHAT
            else:
                raise
            _say(msg, cfg.secrets, err=True)
            break
        spool.done(claimed, pictures=False)  # delivered: never again
        sent += 1
        for picture in entry.attachments:  # best effort: the text is what must arrive exactly once
            try:
                if Path(picture).is_file():
                    send("send_photo", picture, "", silent=True)
            except Exception as exc:
                _say(f"relay: picture {Path(picture).name} not sent: {type(exc).__name__}: {exc}", cfg.secrets,
                     err=True)
        spool.done(claimed)
    _say(f"relay: sent {sent} message(s); {len(spool.pending())} left in {spool.directory}", cfg.secrets)
    return status

