"""Message texts (Telegram HTML): pure functions, values in, escaped HTML out.

The one home of message length (issue 15): every builder returns at most :data:`MESSAGE_LIMIT` visible UTF-16 units
(an emoji outside the BMP counts 2; captions :data:`CAPTION_LIMIT`); no sender or client cuts again. Values go
through :func:`esc` (HTML needs only ``<>&`` escaped, so ``hp_sweep_lr0.001_g0.99`` renders as it is, unlike
Markdown); configs are summarized, never dumped (no paths, nested objects or credentials).
"""

from __future__ import annotations

import html
import math
import re
import traceback
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dqlray.formatting import fmt
from dqlray.notify.redact import redact

MESSAGE_LIMIT = 4096
"""Most UTF-16 code units in a message's text after entity parsing."""
CAPTION_LIMIT = 1024
"""Most UTF-16 code units in a photo caption after entity parsing."""

_ANY_TAG = re.compile(r"<[^<>]*>")
_SECRETISH = re.compile(r"(token|secret|passw|credential|api[_-]?key|auth)", re.IGNORECASE)
_MAX_VALUE_CHARS = 40

def esc(value: object) -> str:
    """HTML-escape ``str(value)`` for parse_mode HTML (``<``, ``>``, ``&``; quotes are harmless outside attributes)."""
    return html.escape(str(value), quote=False)


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, as Telegram counts it (an emoji outside the BMP counts 2)."""
    return len(text.encode("utf-16-le")) // 2


def html_to_plain(text: str) -> str:
    """What the user sees of an HTML message: tags dropped, entities decoded (also the plain-text fallback)."""
    return html.unescape(_ANY_TAG.sub("", text))


def visible_len(text: str) -> int:
    """UTF-16 length of ``text`` after entity parsing (what the limits apply to)."""
    return utf16_len(html_to_plain(text))


def _cut_utf16(text: str, units: int) -> str:
    """The longest prefix of plain ``text`` with at most ``units`` UTF-16 code units (never half a surrogate pair)."""
    used = 0
    for i, ch in enumerate(text):
        used += 2 if ord(ch) > 0xFFFF else 1
        if used > units:
            return text[:i]
    return text


def tail_text(text: str, limit: int, marker: str = "…\n") -> str:
    """The end of plain ``text`` within ``limit`` UTF-16 units, cut at a line boundary where possible (a traceback's
    last lines, the exception and the innermost frames, are the useful ones)."""
    if utf16_len(text) <= limit:
        return text
    budget = limit - utf16_len(marker)
    lines = text.rstrip("\n").split("\n")
    kept: list[str] = []
    used = 0
    for line in reversed(lines):
        used += utf16_len(line) + (1 if kept else 0)
        if used > budget:
            break
        kept.append(line)
    if not kept:  # a single line longer than the budget: keep its end
        return marker + _cut_utf16(lines[-1][::-1], budget)[::-1]
    return marker + "\n".join(reversed(kept))


def fit(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` if within ``limit`` visible units, else its start as escaped plain text ending in ``…``: the last
    resort for a message whose parts did not fit (a cut never breaks a tag, an entity or a surrogate pair)."""
    if visible_len(text) <= limit:
        return text
    return esc(_cut_utf16(html_to_plain(text), limit - 1) + "…")


def _message(emoji: str, title: str, experiment: str, *lines: str | None, tb: str = "", tb_label: str = "",
             secrets: tuple[str, ...] = ()) -> str:
    """One message: a header naming the experiment, the lines (empty ones left out), then as much of the end of
    traceback ``tb`` (redacted) as fits in the limit."""
    text = "\n".join([f"{emoji} <b>{esc(title)}</b> · <code>{esc(experiment)}</code>", *(line for line in lines if line)])
    budget = MESSAGE_LIMIT - visible_len(text + tb_label) - 8
    if tb and budget > 200:
        text += f"\n{tb_label}<pre>{esc(tail_text(redact(tb, secrets).rstrip(), budget))}</pre>"
    return fit(text)


def fmt_num(value: Any) -> str:
    """A number for humans: :func:`dqlray.formatting.fmt`'s four significant digits with an ASCII minus, ints with
    separators, a missing or non-finite one ``n/a``."""
    if isinstance(value, bool):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else fmt(value, missing="n/a", plain=True)


def fmt_duration(seconds: float | None) -> str:
    """``1d 02h``, ``1h 02m``, ``3m 05s``, ``12s``; ``n/a`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "n/a"
    s = int(round(seconds))
    for unit, sub, big, small in ((86400, 3600, "d", "h"), (3600, 60, "h", "m"), (60, 1, "m", "s")):
        if s >= unit:
            return f"{s // unit}{big} {s % unit // sub:02d}{small}"
    return f"{s}s"


def _short(value: Any) -> str | None:
    """A config value fit for a message, or None to leave it out (paths, nested objects, long strings)."""
    if isinstance(value, (bool, int, float)) or value is None:
        return fmt_num(value)
    if isinstance(value, str):
        return None if "/" in value or "\\" in value or len(value) > _MAX_VALUE_CHARS else value
    if isinstance(value, (list, tuple)) and len(value) <= 6 and all(isinstance(v, (int, float)) for v in value):
        return "[" + ", ".join(fmt_num(v) for v in value) + "]"
    return None


def summarize_config(config: Mapping[str, Any] | None, max_items: int = 12) -> list[tuple[str, str]]:
    """``(name, value)`` pairs of a config: scalars only, one level of nesting flattened, credentials left out."""
    out: list[tuple[str, str]] = []
    for key, value in (config or {}).items():
        for sub, v in value.items() if isinstance(value, Mapping) else [(None, value)]:
            name = f"{key}.{sub}" if sub is not None else str(key)
            shown = None if _SECRETISH.search(name) else _short(v)
            if shown is not None:
                out.append((name, shown))
    if len(out) > max_items:
        out = out[:max_items] + [("…", f"{len(out) - max_items} more")]
    return out


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def _context_lines(context: Mapping[str, Any] | None) -> list[str]:
    return [f"{esc(k)}: {esc(v)}" for k, v in (context or {}).items() if v not in (None, "")]


def _table(rows: Sequence[Sequence[str]]) -> str:
    """A monospace table in ``<pre>`` (columns padded; cells escaped)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in rows]
    return "<pre>" + esc("\n".join(lines)) + "</pre>"


def _results(label: str, metrics: Mapping[str, Any] | None, baselines: Mapping[str, Mapping[str, Any]] | None,
             statement: str, figures: Mapping[str, Any] | None) -> list[str]:
    """The test result: the agent's metrics with a column per baseline (``{"buy&hold": {...}}``), then the verdict
    as data (a sentence and its numbers)."""
    baselines = baselines or {}
    rows = [[str(k), fmt_num(v), *(fmt_num(b.get(k)) for b in baselines.values())]
            for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return [*([label, _table([["metric", "agent", *baselines], *rows])] if rows else []),
            f"<b>{esc(statement)}</b>" if statement else "",
            *(f"{esc(k)}: {esc(fmt_num(v))}" for k, v in (figures or {}).items())]


def _duration(elapsed_s: float | None) -> str | None:
    return f"Duration: {fmt_duration(elapsed_s)}" if elapsed_s is not None else None


def run_start(experiment: str, *, agent_type: str, episodes: int, data_file: str,
              context: Mapping[str, Any] | None = None) -> str:
    """🚀 a training run started."""
    return _message("🚀", "Training started", experiment, f"Agent: {esc(agent_type)}",
                    f"Episodes: {fmt_num(episodes)}", f"Data: <code>{esc(data_file)}</code>", *_context_lines(context))


def run_progress(experiment: str, *, episode: int, total: int, mean_reward: float | None = None,
                 loss: float | None = None, epsilon: float | None = None, elapsed_s: float | None = None,
                 eta_s: float | None = None, extra: Mapping[str, Any] | None = None) -> str:
    """📊 progress of a run (one message, edited in place)."""
    pct = 100.0 * episode / total if total else float("nan")
    values = (("Mean reward", mean_reward), ("Loss", loss), ("Epsilon", epsilon), *(extra or {}).items())
    return _message("📊", "Progress", experiment, f"Episode: {fmt_num(episode)}/{fmt_num(total)} ({pct:.1f}%)",
                    *(f"{esc(label)}: {esc(fmt_num(v))}" for label, v in values if v is not None),
                    f"Elapsed: {fmt_duration(elapsed_s)}" + (f" · ETA {fmt_duration(eta_s)}" if eta_s else "")
                    if elapsed_s is not None else None)


def run_checkpoint(experiment: str, *, episode: int, path: str, total: int | None = None) -> str:
    """💾 a checkpoint was saved."""
    ep = f"{fmt_num(episode)}/{fmt_num(total)}" if total else fmt_num(episode)
    return _message("💾", "Checkpoint saved", experiment, f"Episode: {ep}", f"Path: <code>{esc(path)}</code>")


def run_finished(experiment: str, *, final_reward: float | None, test_metrics: Mapping[str, Any] | None,
                 baselines: Mapping[str, Mapping[str, Any]] | None, model_path: str | None,
                 statement: str = "", figures: Mapping[str, Any] | None = None,
                 elapsed_s: float | None = None) -> str:
    """✅ a run finished: final reward, test metrics against each baseline, the verdict, model path."""
    return _message("✅", "Training finished", experiment,
                    f"Final reward: {fmt_num(final_reward)}" if final_reward is not None else None,
                    *_results("Test set:", test_metrics, baselines, statement, figures),
                    f"Model: <code>{esc(model_path)}</code>" if model_path else None, _duration(elapsed_s))


def caption(title: str, experiment: str) -> str:
    """A picture's caption."""
    return fit(f"📈 {esc(title)} · <code>{esc(experiment)}</code>", CAPTION_LIMIT)


def error_message(experiment: str, exc: BaseException | str, *, title: str = "Training failed",
                  secrets: Iterable[str | None] = (), context: Mapping[str, Any] | None = None) -> str:
    """❌ an error: exception line and the tail of the traceback, redacted, cut to fit one message."""
    secrets = tuple(secrets)
    if isinstance(exc, BaseException):
        summary = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    else:
        summary, tb = str(exc).strip().splitlines()[-1] if str(exc).strip() else "error", str(exc)
    summary = redact(summary, secrets).splitlines()[0] if summary else "error"
    return _message("❌", title, experiment, *_context_lines(context), f"<b>{esc(_clip(summary, 301))}</b>", tb=tb,
                    secrets=secrets)


def time_limit_message(experiment: str, *, reason: str = "", last_episode: int | None = None,
                       total: int | None = None, last_checkpoint: str | None = None) -> str:
    """⏰ the job hit its time limit (or got SIGTERM); where it got to and the last checkpoint."""
    return _message("⏰", "Time limit reached", experiment, esc(reason),
                    f"Last episode: {fmt_num(last_episode)}" + (f"/{fmt_num(total)}" if total else "")
                    if last_episode is not None else None,
                    f"Last checkpoint: <code>{esc(last_checkpoint)}</code>" if last_checkpoint else None)


_STATUS_MARK = {"running": "▶", "finished": "✓", "stopped": "✂", "errored": "✗", "pending": "…"}


def _config(label: str, config: Mapping[str, Any]) -> list[str]:
    pairs = summarize_config(config)
    return [label, _table(pairs)] if pairs else []


def sweep_start(experiment: str, *, metric: str, mode: str, num_samples: int | None,
                space_summary: Mapping[str, Any] | None, resources: Mapping[str, Any] | None,
                max_t: int | None = None, context: Mapping[str, Any] | None = None) -> str:
    """🚀 a sweep started: search space, number of samples, budget per trial in episodes, cluster resources."""
    items = list((space_summary or {}).items())[:16]
    space = ["Search space:", *(f"• {esc(k)}: {esc(_clip(str(v), 80))}" for k, v in items)] if items else []
    cluster = ", ".join(f"{fmt_num(v)} {k}" for k, v in (resources or {}).items())
    return _message("🚀", "Sweep started", experiment,
                    f"Trials: {fmt_num(num_samples) if num_samples and num_samples > 0 else 'open-ended'}"
                    f" · metric <code>{esc(metric)}</code> ({esc(mode)})",
                    f"Budget per trial: {fmt_num(max_t)} episodes (ASHA)" if max_t else None, *space,
                    f"Cluster: {esc(cluster)}" if cluster else None, *_context_lines(context))


def sweep_dashboard(experiment: str, *, metric: str, mode: str, counts: Mapping[str, int],
                    top: Sequence[tuple[str, Mapping[str, Any]]], elapsed_s: float | None, eta_s: float | None,
                    updated: str | None = None, final: bool = False) -> str:
    """📊 the live dashboard: status counts, the ``top`` trials (id and ``status``, ``metric``, ``std``,
    ``val_return``, ``episodes``, ``config``), the best config, elapsed and estimated remaining time."""
    rows = [["", "trial", metric, "±std", "val_ret", "episodes"]] + [
        [_STATUS_MARK.get(t["status"], "?"), tid, fmt_num(t["metric"]),
         *("" if t.get(k) is None else fmt_num(t[k]) for k in ("std", "val_return", "episodes"))] for tid, t in top]
    table = [f"Top {len(top)} by <code>{esc(metric)}</code> ({esc(mode)}):", _table(rows),
             *_config(f"Best config ({esc(top[0][0])}):", top[0][1].get("config") or {})] if top else ["No results yet."]
    return _message("📊", "Sweep finished (trials)" if final else "Sweep dashboard", experiment,
                    f"▶ running {counts.get('running', 0)} · ✓ finished {counts.get('finished', 0)} · "
                    f"✂ stopped by ASHA {counts.get('stopped', 0)} · ✗ errored {counts.get('errored', 0)} · "
                    f"… pending {counts.get('pending', 0)}", *table,
                    f"Elapsed: {fmt_duration(elapsed_s)}" + ("" if final else f" · remaining ≈ {fmt_duration(eta_s)}"),
                    f"<i>updated {esc(updated)}</i>" if updated else None)


def sweep_errors(experiment: str, errors: Sequence[tuple[str, Mapping[str, Any], str]], *,
                 total_errored: int, tail: str | None = None, secrets: Iterable[str | None] = ()) -> str:
    """❌ one digest for a burst of errored trials: one line each, and the traceback tail of the first."""
    secrets = tuple(secrets)
    n = len(errors)
    lines = [f"• <code>{esc(trial_id)}</code> {esc(' '.join(f'{k}={v}' for k, v in summarize_config(config, 4)))}: "
             f"{esc(_clip(redact(last_line, secrets), 160))}" for trial_id, config, last_line in errors[:10]]
    return _message("❌", f"{n} trial{'s' if n != 1 else ''} errored", experiment, f"Errored so far: {total_errored}",
                    *lines, f"… and {n - 10} more" if n > 10 else None, tb=tail or "", secrets=secrets,
                    tb_label=f"First traceback ({esc(errors[0][0])}):\n" if errors else "")


def sweep_finished(experiment: str, *, best_config: Mapping[str, Any], test_metrics: Mapping[str, Any] | None,
                   baselines: Mapping[str, Mapping[str, Any]] | None, deflated_sharpe: float | None, n_trials: int,
                   statement: str = "", figures: Mapping[str, Any] | None = None,
                   elapsed_s: float | None = None) -> str:
    """✅ a sweep finished: the winner's config, its test result against each baseline, the verdict, the DSR."""
    return _message("✅", "Sweep finished", experiment, f"Trials: {fmt_num(n_trials)}",
                    *_config("Best config:", best_config),
                    *_results("Winner on the test set:", test_metrics, baselines, statement, figures),
                    f"Deflated Sharpe ratio: {fmt_num(deflated_sharpe)} (probability the Sharpe is real after "
                    f"{fmt_num(n_trials)} trials)" if deflated_sharpe is not None else None, _duration(elapsed_s))
