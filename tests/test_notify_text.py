"""Notification texts and settings: redaction, HTML escaping, UTF-16 limits, splitting, config file rules."""

from __future__ import annotations

import logging
import os
import re
import stat

import pytest
from fake_telegram import make_fake_token, parse_html

from dqlray.errors import ConfigError
from dqlray.notify import messages
from dqlray.notify.credentials import (
    CommandLineSecretWarning,
    NotifyConfig,
    SmtpConfig,
    load_notify_config,
)
from dqlray.notify.messages import (
    MESSAGE_LIMIT,
    fit,
    html_to_plain,
    tail_text,
    utf16_len,
    visible_len,
)
from dqlray.notify.redact import MASK, RedactingFilter, redact

EXPERIMENT = "hp_sweep_lr0.001_g0.99"


def _clean_env(tmp_path, **extra):
    """An environment with no stray credentials and no default config file."""
    return {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "XDG_STATE_HOME": str(tmp_path / "state"), **extra}


# ---------------------------------------------------------------------------------------------------- redaction ---


def test_redact_masks_token_shape_and_literal_secrets():
    token = make_fake_token()
    text = f"Max retries exceeded with url: /bot{token}/sendMessage; password=hunter2-smtp"
    out = redact(text, secrets=["hunter2-smtp"])
    assert token not in out and "hunter2-smtp" not in out
    assert out == f"Max retries exceeded with url: /bot{MASK}/sendMessage; password={MASK}"
    # A self-hosted server's token need not look like Telegram's: the literal still goes.
    assert redact("x abc-def-ghi y", secrets=["abc-def-ghi"]) == f"x {MASK} y"
    # Very short "secrets" are ignored rather than mangling ordinary text.
    assert redact("a b c", secrets=["b"]) == "a b c"


def test_redacting_filter_renders_arguments_and_exceptions():
    token = make_fake_token()
    record = logging.LogRecord("urllib3.connectionpool", logging.DEBUG, __file__, 1,
                               '%s "POST /bot%s/sendMessage HTTP/1.1" %s', ("http://x", token, 200), None)
    try:
        raise RuntimeError(f"url /bot{token}/getMe")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record)
    assert token not in record.getMessage() and f"/bot{MASK}/sendMessage" in record.getMessage()
    assert record.args is None
    assert token not in record.exc_text and MASK in record.exc_text


# ------------------------------------------------------------------------------------------- escaping and size ---


def test_html_escaping_renders_experiment_name_and_odd_values():
    text = messages.run_start(EXPERIMENT, agent_type="dqn<v2>", episodes=20, data_file="data/a&b_<1>.csv",
                              context={"Host": "node_01"})
    err, plain = parse_html(text)
    assert err is None
    assert EXPERIMENT in plain
    assert "data/a&b_<1>.csv" in plain and "dqn<v2>" in plain and "node_01" in plain
    assert plain.startswith("🚀 Training started")


def test_utf16_length_counts_astral_emoji_as_two_units():
    assert utf16_len("🚀") == 2
    assert utf16_len("é") == 1
    assert utf16_len("a🚀b✅") == 5  # ✅ (U+2705) is in the BMP: one unit
    assert visible_len("<b>🚀</b> &amp;&lt;") == 5  # 2 + space + & + <


def test_fit_cuts_an_over_long_message_to_plain_text_without_breaking_entities_or_emoji():
    text = "<b>title</b> &amp;\n<pre>" + "\n".join(f"line {i} 🚀 &lt;x&gt;" for i in range(900)) + "</pre>"
    assert visible_len(text) > MESSAGE_LIMIT
    for limit in (MESSAGE_LIMIT, 1000, 1001):
        out = fit(text, limit)
        err, plain = parse_html(out)
        assert err is None, err
        assert limit - 2 <= utf16_len(plain) <= limit  # an emoji (2 units) is never cut in half
        assert plain.startswith("title &\nline 0 🚀 <x>") and plain.endswith("…")
    short = "<b>short</b> &amp; fine"
    assert fit(short) == short


def test_builders_keep_a_message_with_too_many_parts_within_the_limit():
    metrics = {f"metric_{i}": i / 7 for i in range(400)}
    text = messages.run_finished(EXPERIMENT, final_reward=0.1, test_metrics=metrics, baselines={"buy&hold": metrics},
                                 model_path="results/x/model.pt")
    err, plain = parse_html(text)
    assert err is None and utf16_len(plain) <= MESSAGE_LIMIT
    assert plain.startswith(f"✅ Training finished · {EXPERIMENT}") and plain.endswith("…")
    assert utf16_len(html_to_plain(messages.caption("Equity curve", "x" * 2000))) <= messages.CAPTION_LIMIT


def test_tail_text_keeps_the_end_of_a_traceback():
    tb = "Traceback (most recent call last):\n" + "".join(f'  File "f.py", line {i}\n' for i in range(2000)) + \
        "ValueError: the real cause"
    tail = tail_text(tb, 500)
    assert utf16_len(tail) <= 500
    assert tail.startswith("…\n") and tail.endswith("ValueError: the real cause")


def test_error_message_fits_one_message_keeps_cause_and_redacts():
    token = make_fake_token()

    def recurse(n):
        if n == 0:
            raise ValueError(f"bad request to /bot{token}/getMe <html> & stuff")
        recurse(n - 1)

    with pytest.raises(ValueError) as info:
        recurse(150)
    text = messages.error_message(EXPERIMENT, info.value, secrets=[token])
    err, plain = parse_html(text)
    assert err is None
    assert utf16_len(plain) <= MESSAGE_LIMIT
    assert token not in text
    assert plain.rstrip().endswith(f"ValueError: bad request to /bot{MASK}/getMe <html> & stuff")
    assert "recurse(n - 1)" in plain  # frames from the tail are there


def test_summarize_config_leaves_out_paths_secrets_and_objects():
    cfg = {"lr": 0.001, "gamma": 0.99, "data_file": "/home/me/prices.csv", "api_token": "abc",
           "net": {"hidden": 128, "act": "relu"}, "callback": object(), "seeds": [1, 2, 3]}
    pairs = dict(messages.summarize_config(cfg))
    assert pairs == {"lr": "0.001", "gamma": "0.99", "net.hidden": "128", "net.act": "relu", "seeds": "[1, 2, 3]"}


# ------------------------------------------------------------------------------------------------- credentials ---


def _write_config(path, text, mode):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_config_file_readable_by_others_is_refused_with_fix(tmp_path):
    token = make_fake_token()
    path = _write_config(tmp_path / "notify.yaml", f'telegram:\n  token: "{token}"\n  chat_id: 4242\n', 0o644)
    with pytest.raises(ConfigError, match=re.escape(
            f"refusing notify config {path}: mode 0644 lets other users read the bot token; "
            f"fix with: chmod 600 {path}")) as info:
        load_notify_config(config_file=path, env=_clean_env(tmp_path))
    assert token not in str(info.value)
    assert "\n" not in str(info.value)


def test_config_file_0600_loads_and_env_overrides_it(tmp_path):
    token = make_fake_token()
    path = _write_config(tmp_path / "notify.yaml",
                         f'telegram:\n  token: "{token}"\n  chat_id: -100123\nspool_dir: {tmp_path}/sp\n', 0o600)
    cfg = load_notify_config(env=_clean_env(tmp_path, DQLRAY_NOTIFY_CONFIG=str(path)))
    assert cfg is not None and cfg.token == token and cfg.chat_id == "-100123" and cfg.is_group
    assert cfg.spool_dir == tmp_path / "sp"
    cfg = load_notify_config(env=_clean_env(tmp_path, DQLRAY_NOTIFY_CONFIG=str(path), TELEGRAM_CHAT_ID="777"))
    assert cfg is not None and cfg.chat_id == "777" and not cfg.is_group
    assert token not in repr(cfg)


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to give a file away")
def test_config_file_owned_by_someone_else_is_refused(tmp_path):
    path = _write_config(tmp_path / "notify.yaml", 'telegram:\n  token: "x"\n  chat_id: 1\n', 0o600)
    os.chown(path, 54321, -1)
    with pytest.raises(ConfigError, match=r"owned by uid 54321, not you"):
        load_notify_config(config_file=path, env=_clean_env(tmp_path))


def test_config_unknown_key_is_named(tmp_path):
    path = _write_config(tmp_path / "n.yaml", 'telegram:\n  tokn: "x"\n  chat_id: 1\n', 0o600)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) telegram\.tokn; allowed: telegram\.api_base"):
        load_notify_config(config_file=path, env=_clean_env(tmp_path))


def test_nothing_configured_is_none_and_half_configured_is_an_error(tmp_path):
    assert load_notify_config(env=_clean_env(tmp_path)) is None
    with pytest.raises(ConfigError, match="a Telegram bot token is set but no chat"):
        load_notify_config(env=_clean_env(tmp_path, TELEGRAM_BOT_TOKEN=make_fake_token()))


def test_command_line_credentials_warn_about_process_lists(tmp_path):
    with pytest.warns(CommandLineSecretWarning, match=r"visible to other users \(ps, /proc/\*/cmdline"):
        cfg = load_notify_config(token=make_fake_token(), chat_id=4242, env=_clean_env(tmp_path))
    assert cfg is not None and cfg.source == "arguments"


def test_config_values_are_checked_at_construction():
    token = make_fake_token()
    with pytest.raises(ConfigError, match=r"api_base='http://example.org' is not allowed: plain http only"):
        NotifyConfig(token=token, chat_id="1", api_base="http://example.org")
    with pytest.raises(ConfigError, match=r"chat_id='my chat' is not allowed"):
        NotifyConfig(token=token, chat_id="my chat")
    with pytest.raises(ConfigError, match=r"smtp.security='tls' is not allowed: use one of starttls, ssl"):
        SmtpConfig(host="h", security="tls", recipients=("a@b",))
    with pytest.raises(ConfigError, match=r"would send the password in clear"):
        SmtpConfig(host="smtp.example.org", security="none", username="me", password="pw", recipients=("a@b",))


def test_spool_files_are_private_and_atomic(tmp_path):
    from dqlray.notify.spool import Spool

    spool = Spool(tmp_path / "spool", secrets=["hunter2-smtp"])
    path = spool.put(event_id="e1", created=1.5, text="❌ <b>x</b> hunter2-smtp")
    again = spool.put(event_id="e1", created=1.5, text="❌ <b>x</b> hunter2-smtp")
    assert path == again and spool.pending() == [path]  # the same event spooled twice is one file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
    assert "hunter2-smtp" not in path.read_text()
    assert not list((tmp_path / "spool").glob(".tmp-*"))


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_spool_stays_private_whatever_the_umask(tmp_path, umask):
    """Issue 13 item 6: the spool, the folders dqlray makes for it, its messages and picture copies are 0700/0600
    under any umask (0o000 would leave new folders world-writable, 0o277 files unreadable to their owner)."""
    from dqlray.notify.spool import Spool

    picture = tmp_path / "equity.png"
    picture.write_bytes(b"\x89PNG")
    old = os.umask(umask)
    try:
        spool = Spool(tmp_path / "state" / "dqlray" / "notify-spool")
        spool.put(event_id="e1", created=1.0, text="✅ done", attachments=[str(picture)])
    finally:
        os.umask(old)
    for folder in (tmp_path / "state", tmp_path / "state" / "dqlray", spool.directory):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    files = list(spool.directory.iterdir())
    assert len(files) == 2 and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), files
