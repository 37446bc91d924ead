"""``dqlray notify test`` and ``dqlray notify relay``.

Plug into the ``dqlray`` command with :func:`add_notify_parser`; each subcommand sets ``args.func(args) -> int``
(the exit status). Output is one line per fact, redacted, never a traceback.

Exit status: 0 ok; 1 unexpected error; 2 not configured / config refused; 3 network unreachable;
4 token rejected or rate limited (relay); 5 chat wrong / message refused.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dqlray.notify.credentials import NotifyConfig, NotifyConfigError, load_notify_config
from dqlray.notify.redact import redact
from dqlray.notify.sender import RateGovernor
from dqlray.notify.spool import Spool
from dqlray.notify.telegram import (
    TelegramApiError,
    TelegramClient,
    TelegramRetryAfter,
    TelegramTransportError,
    esc,
)

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_NETWORK, EXIT_TOKEN, EXIT_CHAT = 0, 1, 2, 3, 4, 5

NOT_CONFIGURED = (
    "notifications are not configured: export TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_ID, or put them in "
    "~/.config/dqlray/notify.yaml (chmod 600)"
)


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
    test.set_defaults(func=cmd_test)

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


def _load(args: argparse.Namespace) -> NotifyConfig | None:
    cfg = load_notify_config(config_file=args.config)
    if cfg is None:
        return None
    return cfg.replace(read_timeout_s=max(1.0, float(args.timeout)),
                       connect_timeout_s=min(cfg.connect_timeout_s, max(1.0, float(args.timeout))))


def _client(cfg: NotifyConfig, max_wait: float) -> TelegramClient:
    return TelegramClient(cfg.token, api_base=cfg.api_base, connect_timeout_s=cfg.connect_timeout_s,
                          read_timeout_s=cfg.read_timeout_s, max_retry_wait_s=max_wait, secrets=cfg.secrets)


def _unreachable_msg(cfg: NotifyConfig, exc: TelegramTransportError) -> str:
    return (f"network: cannot reach {cfg.api_base} ({exc.description}). Compute nodes often have no internet: "
            "messages are spooled there; run `dqlray notify relay` on a login node.")


def cmd_test(args: argparse.Namespace) -> int:
    """Check the token (getMe) and the chat (sendMessage); one line per result; non-zero exit on failure."""
    secrets: tuple[str, ...] = ()
    try:
        cfg = _load(args)
        if cfg is None:
            _say(NOT_CONFIGURED, err=True)
            return EXIT_CONFIG
        secrets = cfg.secrets
        client = _client(cfg, max_wait=10.0)
        try:
            try:
                me = client.get_me()
            except TelegramTransportError as exc:
                _say(_unreachable_msg(cfg, exc), secrets, err=True)
                return EXIT_NETWORK
            except TelegramApiError as exc:
                if exc.is_unauthorized:
                    _say(f"token: rejected by Telegram ({exc.error_code} {exc.api_description}); check "
                         f"TELEGRAM_BOT_TOKEN against @BotFather (credentials from {cfg.source})", secrets, err=True)
                    return EXIT_TOKEN
                _say(f"token: getMe failed: {exc}", secrets, err=True)
                return EXIT_ERROR
            bot = me.get("username") or me.get("first_name") or "?"
            _say(f"token: OK, bot @{bot} (credentials from {cfg.source})", secrets)
            text = (f"🔔 <b>dqlray test message</b>\nFrom <code>{esc(socket.gethostname())}</code> at "
                    f"{esc(time.strftime('%Y-%m-%d %H:%M:%S'))}. Notifications work.")
            try:
                ids = client.send_message(cfg.chat_id, text, thread_id=cfg.message_thread_id)
            except TelegramTransportError as exc:
                _say(_unreachable_msg(cfg, exc), secrets, err=True)
                return EXIT_NETWORK
            except TelegramApiError as exc:
                if exc.is_chat_not_found:
                    _say(f"chat: {cfg.chat_id} not found: open a chat with @{bot} and send /start (or add the "
                         "bot to the group), then check TELEGRAM_CHAT_ID", secrets, err=True)
                elif exc.error_code == 403:
                    _say(f"chat: the bot may not post to {cfg.chat_id} ({exc.api_description}): unblock it or "
                         "add it to the group", secrets, err=True)
                else:
                    _say(f"chat: sendMessage to {cfg.chat_id} failed: {exc}", secrets, err=True)
                return EXIT_CHAT
            _say(f"chat: OK, test message {ids[0]} sent to {cfg.chat_id}", secrets)
            waiting = len(Spool(cfg.spool_dir).pending())
            if waiting:
                _say(f"spool: {waiting} message(s) waiting in {cfg.spool_dir}; send them with `dqlray notify relay`",
                     secrets)
            return EXIT_OK
        finally:
            client.close()
    except NotifyConfigError as exc:
        _say(f"config: {exc}", secrets, err=True)
        return EXIT_CONFIG
    except Exception as exc:  # never a traceback: it could carry the token
        _say(f"error: {type(exc).__name__}: {exc}", secrets, err=True)
        return EXIT_ERROR


def cmd_relay(args: argparse.Namespace) -> int:
    """Send each spooled message to Telegram exactly once (claim, send, delete), oldest first."""
    secrets: tuple[str, ...] = ()
    try:
        cfg = _load(args)
        if cfg is None:
            _say(NOT_CONFIGURED, err=True)
            return EXIT_CONFIG
        secrets = cfg.secrets
        spool = Spool(Path(args.spool_dir).expanduser() if args.spool_dir else cfg.spool_dir, secrets)
        if args.reclaim_after is not None:
            n = spool.reclaim_stale(args.reclaim_after)
            if n:
                _say(f"relay: gave back {n} file(s) left claimed by an earlier relay", secrets)
        client = _client(cfg, max_wait=max(0.0, float(args.max_wait)))
        governor = RateGovernor(cfg.min_interval_s, cfg.group_per_minute, time.monotonic)
        sent = 0
        status = EXIT_OK
        try:
            for path in spool.pending():
                claimed = spool.claim(path)
                if claimed is None:
                    continue  # another relay took it
                try:
                    entry = Spool.load(claimed)
                except (OSError, ValueError) as exc:
                    bad = claimed.with_suffix(".bad")
                    claimed.rename(bad)
                    _say(f"relay: {path.name} is unreadable ({type(exc).__name__}); moved to {bad.name}", secrets,
                         err=True)
                    continue
                wait = governor.next_allowed(cfg.chat_id, cfg.is_group) - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                try:
                    governor.record(cfg.chat_id, cfg.is_group)
                    if entry.photo_path and Path(entry.photo_path).is_file():
                        client.send_photo(cfg.chat_id, entry.photo_path, entry.text, silent=entry.silent,
                                          thread_id=cfg.message_thread_id)
                    else:
                        client.send_message(cfg.chat_id, entry.text, silent=entry.silent,
                                            thread_id=cfg.message_thread_id)
                except TelegramRetryAfter as exc:
                    spool.release(claimed)
                    _say(f"relay: Telegram asks to wait {exc.retry_after:.0f} s; run the relay again later",
                         secrets, err=True)
                    status = EXIT_TOKEN
                    break
                except TelegramTransportError as exc:
                    spool.release(claimed)
                    _say(_unreachable_msg(cfg, exc), secrets, err=True)
                    status = EXIT_NETWORK
                    break
                except TelegramApiError as exc:
                    spool.release(claimed)
                    _say(f"relay: Telegram refused {path.name}: {exc}", secrets, err=True)
                    status = EXIT_TOKEN if exc.is_unauthorized else EXIT_CHAT
                    break
                except BaseException:
                    spool.release(claimed)
                    raise
                spool.done(claimed)  # delivered: never again
                sent += 1
                for picture in entry.attachments:  # best effort: the text is what must arrive exactly once
                    if not Path(picture).is_file():
                        continue
                    try:
                        wait = governor.next_allowed(cfg.chat_id, cfg.is_group) - time.monotonic()
                        if wait > 0:
                            time.sleep(wait)
                        governor.record(cfg.chat_id, cfg.is_group)
                        client.send_photo(cfg.chat_id, picture, "", silent=True, thread_id=cfg.message_thread_id)
                    except Exception as exc:
                        _say(f"relay: picture {Path(picture).name} not sent: {type(exc).__name__}: {exc}",
                             secrets, err=True)
        finally:
            client.close()
        left = len(spool.pending())
        _say(f"relay: sent {sent} message(s); {left} left in {spool.directory}", secrets)
        return status
    except NotifyConfigError as exc:
        _say(f"config: {exc}", secrets, err=True)
        return EXIT_CONFIG
    except Exception as exc:  # never a traceback: it could carry the token
        _say(f"error: {type(exc).__name__}: {exc}", secrets, err=True)
        return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dqlray.notify {test,relay}`` (the same subcommands as ``dqlray notify``)."""
    parser = argparse.ArgumentParser(prog="python -m dqlray.notify")
    subparsers = parser.add_subparsers(dest="command")
    notify = add_notify_parser(subparsers)
    args = parser.parse_args(["notify", *(argv if argv is not None else sys.argv[1:])])
    if not hasattr(args, "func"):
        notify.print_help()
        return EXIT_CONFIG
    return int(args.func(args))
