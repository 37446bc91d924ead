"""The background notifier, the fallback (real SMTP on loopback + disk spool), the relay, and the command line."""

from __future__ import annotations

import logging
import os
import re
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from fake_telegram import FakeTelegram, closed_port, make_fake_token
from smtp_sink import SmtpSink

from dqlray.cli import main as dqlray_main
from dqlray.notify import Notifier, NotifyConfig, RunNotifier, SmtpConfig, SweepNotifier
from dqlray.notify.sender import RateGovernor
from dqlray.notify.spool import Spool

CHAT = "4242"
EXPERIMENT = "hp_sweep_lr0.001_g0.99"
REPO = Path(__file__).resolve().parents[1]


def notify_main(argv: list[str]) -> int:
    """``dqlray notify ...``"""
    return dqlray_main(["notify", *argv])


def make_cfg(tg, tmp_path, **kw) -> NotifyConfig:
    kw.setdefault("min_interval_s", 0.0)
    kw.setdefault("connect_timeout_s", 1.0)
    kw.setdefault("read_timeout_s", 2.0)
    kw.setdefault("retry_backoff_s", 0.05)
    return NotifyConfig(token=tg.token, chat_id=CHAT, api_base=tg.url, spool_dir=tmp_path / "spool", **kw)


def _work(iterations: int, rn: RunNotifier | None = None) -> float:
    """A stand-in training loop: a fixed amount of CPU work per episode, notifying every episode."""
    t0 = time.perf_counter()
    acc = 0
    for i in range(iterations):
        acc += sum(j * j for j in range(4000))
        if rn is not None:
            rn.progress(episode=i + 1, total=iterations, mean_reward=0.01, loss=0.002, epsilon=0.3)
            if i % 25 == 0:
                rn.checkpoint(episode=i, path=f"results/x/checkpoints/ckpt_{i:06d}")
    assert acc > 0
    return time.perf_counter() - t0


def test_training_loop_is_not_slowed_by_a_hanging_server(tg, tmp_path):
    before = _work(300)
    tg.hang()
    rn = RunNotifier(Notifier(make_cfg(tg, tmp_path, read_timeout_s=5.0)), EXPERIMENT, progress_interval_s=0)
    rn.start(agent_type="dqn", episodes=300, data_file="data/test_small.csv")
    with_hang = _work(300, rn)
    rn.error(RuntimeError("diverged"))
    t0 = time.perf_counter()
    rn.close(deadline_s=1.0)
    closing = time.perf_counter() - t0
    baseline = max(before, _work(300))  # bracket the measured run: machine load varies
    assert tg.hung >= 1  # the sender really was stuck on the server
    # A blocking send would take the 5 s read timeout on the first notify alone.
    assert with_hang < baseline * 1.5 + 0.5, (baseline, with_hang)
    assert closing < 2.0
    # Undelivered at the deadline: the start (in flight) and the critical error are on disk, routine ones are not.
    texts = [Spool.load(p).text for p in Spool(tmp_path / "spool").pending()]
    assert any("Training started" in t for t in texts) and any("diverged" in t for t in texts)
    assert not any("Progress" in t or "Checkpoint" in t for t in texts)


def test_disabled_notifier_is_a_no_op():
    rn = RunNotifier(Notifier(), EXPERIMENT)
    assert not rn.enabled
    rn.start(agent_type="dqn", episodes=1, data_file="x")
    rn.progress(episode=1, total=1)
    rn.finished(final_reward=0.0, test_metrics={}, baselines={}, model_path=None)
    rn.error(ValueError("x"))
    rn.close()


def test_429_is_honoured_by_the_background_sender(tg, tmp_path):
    tg.force_429(1, retry_after=1)
    n = Notifier(make_cfg(tg, tmp_path), register_atexit=False)
    n.notify("first")
    n.notify("second")
    assert n.flush(10.0)
    n.close(1.0)
    assert tg.texts() == ["first", "second"]
    statuses = [(r["status"], r["t"]) for r in tg.requests]
    assert [s for s, _ in statuses] == [429, 200, 200]
    assert statuses[1][1] - statuses[0][1] >= 1.0


def test_progress_is_coalesced_latest_wins_into_one_live_message(tg, tmp_path):
    rn = RunNotifier(Notifier(make_cfg(tg, tmp_path)), EXPERIMENT, progress_interval_s=60.0)
    for ep in range(1, 201):
        rn.progress(episode=ep, total=200, mean_reward=ep / 100)
    rn.close(5.0)
    [msg] = tg.messages
    assert len(tg.requests) <= 2  # one send, at most one edit, for 200 updates
    assert "Episode: 200/200 (100.0%)" in msg["plain"] and msg["silent"]


def test_critical_events_are_never_dropped_when_the_queue_is_full(tg, tmp_path):
    cfg = make_cfg(tg, tmp_path, queue_size=5, min_interval_s=30.0)  # the governor holds all after the first
    n = Notifier(cfg, register_atexit=False)
    n.notify("first goes out")
    assert tg.wait_for(lambda: len(tg.messages) == 1 and n.pending() == 0)
    for i in range(50):
        n.notify(f"routine {i}", silent=True)
    for i in range(3):
        n.notify(f"❌ critical {i}", critical=True)
    assert n.pending() == 5 + 3  # 45 routine ones dropped
    n.close(deadline_s=0.2)  # the governor would wait 30 s: criticals go to the spool instead
    spooled = sorted(Spool.load(p).text for p in Spool(tmp_path / "spool").pending())
    assert spooled == [f"❌ critical {i}" for i in range(3)]


def test_rate_governor_paces_chats_and_groups():
    now = [0.0]
    for per_minute, most in ((20, 20), (None, 60)):  # a group: 1/s and at most 20 in any minute; a user: 1/s
        gov = RateGovernor(1.0, per_minute, lambda: now[0])
        sent = []
        for _ in range(180):
            now[0] = max(now[0], gov.next_allowed())
            gov.record()
            sent.append(now[0])
        assert all(b - a >= 1.0 for a, b in zip(sent, sent[1:], strict=False))
        assert max(sum(1 for t in sent if s <= t < s + 60) for s in sent) == most
    gov.block(7.0)
    assert gov.next_allowed() == now[0] + 7.0


def test_token_never_leaks_to_output_logs_spool_or_email(tg, tmp_path, capfd, caplog):
    caplog.set_level(logging.DEBUG)  # urllib3 logs every request path at DEBUG: /bot<TOKEN>/sendMessage
    token = tg.token
    with SmtpSink() as smtp:
        smtp_cfg = SmtpConfig(host=smtp.host, port=smtp.port, security="none", recipients=("me@example.org",))
        rn = RunNotifier(Notifier(make_cfg(tg, tmp_path, smtp=smtp_cfg)), EXPERIMENT)
        rn.start(agent_type="dqn", episodes=2, data_file="d.csv")
        assert rn.flush(5.0)
        tg.refuse()  # now the network is gone
        rn.progress(episode=1, total=2)
        rn.error(RuntimeError(f"request to https://api.telegram.org/bot{token}/sendMessage failed"))
        rn.finished(final_reward=0.1, test_metrics={"sharpe": 1.0}, baselines={"buy&hold": {"sharpe": 0.5}},
                    model_path="m.pt")
        rn.close(10.0)
        emails = smtp.raw
    out, err = capfd.readouterr()
    spool_files = list((tmp_path / "spool").iterdir())
    # The failures really happened and really went through the redaction:
    assert len(emails) == 2 and len(spool_files) == 2
    assert "/bot<redacted>/sendMessage" in caplog.text
    assert "Telegram unavailable" in caplog.text
    for where, text in [("stdout", out), ("stderr", err), ("log", caplog.text),
                        *[(p.name, p.read_text()) for p in spool_files],
                        *[(f"email {i}", raw.decode("utf-8", "replace")) for i, raw in enumerate(emails)]]:
        assert token not in text, f"token leaked to {where}"
        assert token.split(":")[1] not in text, f"token secret part leaked to {where}"


def test_fallback_emails_and_spools_every_critical_event_once_then_relay_delivers_once(
        tmp_path, monkeypatch, capsys, token):
    port = closed_port()
    spool_dir = tmp_path / "spool"
    with SmtpSink() as smtp:
        smtp_cfg = SmtpConfig(host=smtp.host, port=smtp.port, security="none", recipients=("me@example.org",))
        cfg = NotifyConfig(token=token, chat_id=CHAT, api_base=f"http://127.0.0.1:{port}", spool_dir=spool_dir,
                           smtp=smtp_cfg, connect_timeout_s=1.0, min_interval_s=0.0)
        rn = RunNotifier(Notifier(cfg), EXPERIMENT)
        rn.start(agent_type="dqn", episodes=20, data_file="data/test_small.csv")
        rn.progress(episode=10, total=20, mean_reward=0.01)
        rn.checkpoint(episode=10, path="results/x/checkpoints/ckpt_000010")
        rn.error(ValueError("loss is NaN"))
        rn.time_limit()
        rn.finished(final_reward=0.05, test_metrics={"sharpe": 1.1}, baselines={"buy&hold": {"sharpe": 0.4}},
                    model_path="results/x/model.pt")
        rn.close(10.0)
        subjects = [m["Subject"] for m in smtp.messages]
    expected = ["Training started", "Training failed", "Time limit reached", "Training finished"]
    assert [s.split(" · ")[0][2:] for s in subjects] == expected  # each once, in order, emoji first
    assert all(EXPERIMENT in s for s in subjects)
    files = Spool(spool_dir).pending()
    assert len(files) == 4
    assert stat.S_IMODE(spool_dir.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)

    # Later, from a node with internet: the relay sends each spooled message exactly once.
    with FakeTelegram(token, chats=[CHAT]) as tg:
        for key, value in {"TELEGRAM_BOT_TOKEN": token, "TELEGRAM_CHAT_ID": CHAT, "DQLRAY_TELEGRAM_API_BASE": tg.url,
                           "DQLRAY_NOTIFY_SPOOL": str(spool_dir), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("DQLRAY_NOTIFY_CONFIG", raising=False)
        assert notify_main(["relay"]) == 0
        assert notify_main(["relay"]) == 0
        out = capsys.readouterr().out
        assert [t.split("\n")[0].split(" · ")[0][2:] for t in tg.texts()] == expected
        assert set(tg.statuses()) == {200}
    assert "relay: sent 4 message(s); 0 left" in out and "relay: sent 0 message(s); 0 left" in out
    assert Spool(spool_dir).pending() == [] and Spool(spool_dir).claimed() == []


def _cli_env(monkeypatch, tmp_path, token, api_base, chat=CHAT):
    for key, value in {"TELEGRAM_BOT_TOKEN": token, "TELEGRAM_CHAT_ID": chat, "DQLRAY_TELEGRAM_API_BASE": api_base,
                       "DQLRAY_NOTIFY_SPOOL": str(tmp_path / "spool"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")
                       }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DQLRAY_NOTIFY_CONFIG", raising=False)


@pytest.mark.parametrize(
    ("case", "code", "expected"),
    [
        ("ok", 0, r"token: OK, bot @fake_dqlray_bot .*\nchat: OK, test message \d+ sent to 4242"),
        ("wrong_chat", 5, r"chat: 999 not found: open a chat with @fake_dqlray_bot and send /start"),
        ("wrong_token", 4, r"token: rejected by Telegram \(401 Unauthorized\); check TELEGRAM_BOT_TOKEN"),
        ("no_network", 3, r"network: cannot reach http://127\.0\.0\.1:\d+ \(ConnectionError: .*"),
        ("not_configured", 2, r"notifications are not configured: export TELEGRAM_BOT_TOKEN"),
    ],
)
def test_notify_test_command_says_what_is_wrong(case, code, expected, tg, tmp_path, monkeypatch, capsys):
    token = tg.token if case != "wrong_token" else make_fake_token()
    api = tg.url if case != "no_network" else f"http://127.0.0.1:{closed_port()}"
    _cli_env(monkeypatch, tmp_path, token, api, chat="999" if case == "wrong_chat" else CHAT)
    if case == "not_configured":
        monkeypatch.delenv("TELEGRAM_BOT_TOKEN")
        monkeypatch.delenv("TELEGRAM_CHAT_ID")
    assert notify_main(["test", "--timeout", "2"]) == code
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert re.search(expected, output), output
    assert token not in output and "Traceback" not in output
    if case == "ok":
        assert tg.texts()[0].startswith("🔔 dqlray test message")


def test_notify_test_refuses_a_readable_config_file(tmp_path, monkeypatch, capsys, token):
    path = tmp_path / "notify.yaml"
    path.write_text(f'telegram:\n  token: "{token}"\n  chat_id: 4242\n')
    os.chmod(path, 0o644)
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
    monkeypatch.delenv("TELEGRAM_CHAT_ID", raising=False)
    assert notify_main(["test", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"config: refusing notify config {path}: mode 0644 lets other users read the bot token; " \
                          f"fix with: chmod 600 {path}"


def test_sigterm_flushes_pending_messages_then_dies_of_it(tg, tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        from dqlray.notify import Notifier, NotifyConfig, RunNotifier
        cfg = NotifyConfig(token=os.environ["FAKE_TG_TOKEN"], chat_id="{CHAT}", api_base="{tg.url}",
                           spool_dir="{tmp_path / 'spool'}", min_interval_s=0.0)
        rn = RunNotifier(Notifier(cfg, handle_sigterm=True), "{EXPERIMENT}")
        rn.start(agent_type="dqn", episodes=100, data_file="d.csv")
        rn.checkpoint(episode=40, path="results/x/ckpt_000040")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(20)
        sys.exit(7)
    """)
    env = {**os.environ, "FAKE_TG_TOKEN": tg.token, "PYTHONPATH": str(REPO)}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=30, text=True)
    assert proc.returncode == -15, proc.stderr  # died of SIGTERM, as it would have without the notifier
    assert time.monotonic() - t0 < 10
    texts = tg.texts()
    assert [t.split(" · ")[0] for t in texts] == ["🚀 Training started", "💾 Checkpoint saved",
                                                  "⏰ Time limit reached"]
    assert "Received SIGTERM" in texts[2] and "results/x/ckpt_000040" in texts[2]
    assert tg.token not in proc.stdout + proc.stderr


def test_email_fallback_over_starttls_with_login_verifies_the_certificate(tmp_path):
    from smtp_sink import make_self_signed_cert

    from dqlray.notify.mail import EmailError, send_email

    try:
        cert, key = make_self_signed_cert(tmp_path)
    except FileNotFoundError:
        pytest.skip("the openssl command is not installed")
    password = "correct horse battery staple"
    with SmtpSink(tls=(cert, key), login=("me@example.org", password)) as smtp:
        cfg = SmtpConfig(host=smtp.host, port=smtp.port, security="starttls", username="me@example.org",
                         password=password, recipients=("me@example.org",), ca_file=str(cert), timeout_s=10)
        send_email(cfg, f"✅ <b>Training finished</b> · <code>{EXPERIMENT}</code>")
        # Without trusting the self-signed certificate, TLS verification refuses the server.
        untrusted = SmtpConfig(host=smtp.host, port=smtp.port, security="starttls", username="me@example.org",
                               password=password, recipients=("me@example.org",), timeout_s=10)
        with pytest.raises(EmailError, match=r"email via 127\.0\.0\.1:\d+ failed: SSLCertVerificationError") as info:
            send_email(untrusted, "x")
        wrong = SmtpConfig(host=smtp.host, port=smtp.port, security="starttls", username="me@example.org",
                           password="wrong password!", recipients=("me@example.org",), ca_file=str(cert),
                           timeout_s=10)
        with pytest.raises(EmailError, match=r"SMTPAuthenticationError") as wrong_info:
            send_email(wrong, "x")
        assert smtp.logins == ["me@example.org"]
        [msg] = smtp.messages
    assert msg["Subject"] == f"✅ Training finished · {EXPERIMENT}"
    assert password not in str(info.value) and "wrong password!" not in str(wrong_info.value)


def test_sigterm_goes_straight_to_the_programs_own_graceful_stop_handler(tg, tmp_path):
    """The trainer's own SIGTERM handler (checkpoint, then stop) runs at once; the notifier neither blocks it nor
    sends ⏰ itself: the trainer reports the time limit once and closes."""
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        from dqlray.notify import Notifier, NotifyConfig, RunNotifier
        stop = []
        signal.signal(signal.SIGTERM, lambda s, f: stop.append(time.monotonic()))
        cfg = NotifyConfig(token=os.environ["FAKE_TG_TOKEN"], chat_id="{CHAT}", api_base="{tg.url}",
                           spool_dir="{tmp_path / 'spool'}", min_interval_s=0.0)
        rn = RunNotifier(Notifier(cfg, handle_sigterm=True), "{EXPERIMENT}")
        rn.start(agent_type="dqn", episodes=100, data_file="d.csv")
        sent = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(200):
            if stop:
                break
            time.sleep(0.01)
        assert stop and stop[0] - sent < 0.5, "the program's handler was delayed"
        rn.time_limit(reason="stopped at episode 40 after SIGTERM; resume with --resume")
        rn.close(10)
        sys.exit(0)
    """)
    env = {**os.environ, "FAKE_TG_TOKEN": tg.token, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=30, text=True)
    assert proc.returncode == 0, proc.stderr
    texts = tg.texts()
    assert [t.split(" · ")[0] for t in texts] == ["🚀 Training started", "⏰ Time limit reached"]
    assert "resume with --resume" in texts[1]


def test_finished_messages_carry_metrics_and_the_equity_curve(tg, tmp_path):
    png = tmp_path / "equity.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"1" * 500)
    rn = RunNotifier(Notifier(make_cfg(tg, tmp_path)), EXPERIMENT)
    rn.finished(final_reward=0.05, test_metrics={"sharpe": 1.1, "total_return": 0.05, "max_drawdown": -0.12},
                baselines={"buy&hold": {"sharpe": 0.4, "total_return": 0.02}}, model_path="results/x/model.pt",
                image_path=png)
    rn.close(5.0)
    sn = SweepNotifier(Notifier(make_cfg(tg, tmp_path)), "sweep_27")
    sn.finished(best_config={"lr": 0.001, "gamma": 0.99, "data_file": "/data/prices.csv"},
                test_metrics={"sharpe": 1.3}, baselines={"buy&hold": {"sharpe": 0.4}},
                deflated_sharpe={"dsr": 0.93, "sr0": 1.2, "sharpe": 1.3, "n_trials": 27}, n_trials=27,
                image_path=None)
    sn.close(5.0)
    run_msg, photo, sweep_msg = tg.messages
    assert not run_msg["silent"] and photo["kind"] == "photo" and photo["silent"] and photo["photo_bytes"] == 508
    lines = run_msg["plain"].splitlines()
    assert lines[0] == f"✅ Training finished · {EXPERIMENT}"
    assert "metric        agent  buy&hold" in lines and "sharpe        1.1    0.4" in lines
    assert "max_drawdown  -0.12  n/a" in lines and "Model: results/x/model.pt" in lines
    assert sweep_msg["plain"].startswith("✅ Sweep finished · sweep_27\nTrials: 27")
    assert "Deflated Sharpe ratio: 0.93" in sweep_msg["plain"] and "/data/prices.csv" not in sweep_msg["plain"]


def _spool_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("dqlray notify:")]


def test_exit_with_a_hanging_api_spools_at_once_and_says_so_in_one_line(tg, tmp_path, capfd):
    """Issue 13 item 4: a hanging Bot API costs a flush STALL_S, not its deadline; once the circuit is open the next
    flush spools at once; what was spooled is announced in one stderr line with the relay command."""
    tg.hang()
    n = Notifier(make_cfg(tg, tmp_path, read_timeout_s=60.0), register_atexit=False)
    n.notify("🚀 start", critical=True)
    assert tg.wait_for(lambda: tg.hung == 1)
    n.notify("✅ finished", critical=True)
    t0 = time.monotonic()
    assert not n.flush(deadline_s=30.0)  # the dashboard callback's flush at the end of a sweep
    first = time.monotonic() - t0
    n.notify("❌ failed", critical=True)
    t0 = time.monotonic()
    n.close(deadline_s=30.0)  # the driver's exit: the call is still hanging, the circuit is open
    second = time.monotonic() - t0
    assert first < 15 and second < 15, (first, second)  # neither waited out its 30 s deadline
    texts = sorted(Spool.load(p).text for p in Spool(tmp_path / "spool").pending())
    assert texts == ["✅ finished", "❌ failed", "🚀 start"]
    err = capfd.readouterr().err
    assert _spool_lines(err) == [
        f"dqlray notify: 3 message(s) could not reach Telegram and wait in the spool; send them from a node with "
        f"internet: dqlray notify relay --spool-dir {tmp_path / 'spool'}"], err
    assert tg.token not in err


def test_exit_with_a_429_backlog_spools_at_once_and_says_so(tg, tmp_path, capfd):
    tg.force_429(1, retry_after=30)
    n = Notifier(make_cfg(tg, tmp_path), register_atexit=False)
    n.notify("✅ finished", critical=True)
    assert tg.wait_for(lambda: tg.statuses() == [429])
    n.notify("⏰ time limit", critical=True)
    t0 = time.monotonic()
    n.close(deadline_s=20.0)
    assert time.monotonic() - t0 < 10  # Telegram holds the chat for 30 s: no point waiting 20
    assert len(Spool(tmp_path / "spool").pending()) == 2
    assert len(_spool_lines(capfd.readouterr().err)) == 1


def test_relay_holds_the_chat_on_a_429_as_the_sender_does_and_loses_nothing(tmp_path, monkeypatch, capsys, token):
    spool = Spool(tmp_path / "spool")
    for i in range(2):
        spool.put(event_id=f"e{i}", created=float(i + 1), text=f"⏰ <b>message {i}</b>")
    with FakeTelegram(token, chats=[CHAT]) as tg:
        _cli_env(monkeypatch, tmp_path, token, tg.url)
        tg.force_429(1, retry_after=2)
        assert notify_main(["relay", "--max-wait", "1"]) == 4  # asks for longer than allowed: give up for now
        assert len(spool.pending()) == 2 and tg.messages == []
        assert "relay: Telegram asks to wait 2 s; run the relay again later" in capsys.readouterr().err
        tg.force_429(1, retry_after=2)
        assert notify_main(["relay"]) == 0
        assert [r["status"] for r in tg.requests] == [429, 429, 200, 200]
        assert tg.requests[2]["t"] - tg.requests[1]["t"] >= 2.0  # retry_after, not the 1 s pacing
        assert tg.texts() == ["⏰ message 0", "⏰ message 1"]
    assert spool.pending() == [] and spool.claimed() == []


def test_relay_from_another_directory_sends_the_picture_and_reports_a_missing_one(tmp_path, monkeypatch, capsys,
                                                                                 token):
    """Issue 13 item 5: the spool keeps its own copy of the picture, so a relay run elsewhere (later, on a login node)
    still sends it; a picture that cannot be found is reported, not silently dropped."""
    png = b"\x89PNG\r\n\x1a\n" + b"2" * 300
    run_dir = tmp_path / "job"
    (run_dir / "results").mkdir(parents=True)
    (run_dir / "results" / "equity.png").write_bytes(png)
    monkeypatch.chdir(run_dir)
    cfg = NotifyConfig(token=token, chat_id=CHAT, api_base=f"http://127.0.0.1:{closed_port()}",
                       spool_dir=tmp_path / "spool", connect_timeout_s=1.0)
    rn = RunNotifier(Notifier(cfg), EXPERIMENT)
    rn.finished(final_reward=0.1, test_metrics={"sharpe": 1.0}, baselines={"buy&hold": {"sharpe": 0.5}},
                model_path="results/model.pt", image_path="results/equity.png")  # relative, as the CLI passes it
    rn.close(5.0)
    Spool(tmp_path / "spool").put(event_id="old", created=time.time(), text="⏰ <b>old</b>",
                                  attachments=["results/missing.png"])
    (run_dir / "results" / "equity.png").unlink()  # the results moved on
    login = tmp_path / "login"
    login.mkdir()
    monkeypatch.chdir(login)
    with FakeTelegram(token, chats=[CHAT]) as tg:
        _cli_env(monkeypatch, tmp_path, token, tg.url)
        assert notify_main(["relay"]) == 0
    [photo] = [m for m in tg.messages if m["kind"] == "photo"]
    assert photo["photo_bytes"] == len(png) and photo["silent"]
    assert [t.split(" · ")[0] for t in tg.texts() if t] == ["✅ Training finished", "⏰ old"]
    err = capsys.readouterr().err
    assert re.search(r"relay: picture \S*missing\.png of \S+-old\.json not found; sending the text without it", err)
    assert list((tmp_path / "spool").iterdir()) == []  # delivered messages and their pictures are gone
