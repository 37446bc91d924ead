"""Message texts (Telegram HTML). Pure functions: values in, escaped HTML out.

Every dynamic value goes through :func:`esc` (HTML parse mode needs only ``<``, ``>``, ``&`` escaped, so names such as
``hp_sweep_lr0.001_g0.99`` render as they are, unlike Markdown). Config dicts are summarized, never dumped: paths,
nested objects and anything that looks like a credential stay out (``shared/notes/telegram.md``, security checklist).
Emojis follow the guide: 🚀 start, 📊 progress/dashboard, 💾 checkpoint, ✅ done, ❌ error, ⏰ time limit.
"""

from __future__ import annotations

import math
import re
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dqlray.notify.redact import redact
from dqlray.notify.telegram import MESSAGE_LIMIT, esc, tail_text, visible_len

_SECRETISH = re.compile(r"(token|secret|passw|credential|api[_-]?key|auth)", re.IGNORECASE)
_MAX_VALUE_CHARS = 40


def fmt_num(value: Any) -> str:
    """A number for humans: 4 significant digits, ints with separators, NaN/None as ``n/a``."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(x) or math.isinf(x):
        return "n/a" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if x == int(x) and abs(x) < 1e15 and abs(x) >= 1:
        return f"{int(x):,}"
    return f"{x:.4g}"


def fmt_duration(seconds: float | None) -> str:
    """``1h 02m``, ``3m 05s``, ``12s``; ``n/a`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "n/a"
    s = int(round(seconds))
    if s >= 86400:
        return f"{s // 86400}d {s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


def _short(value: Any) -> str | None:
    """A config value fit for a message, or None to leave it out (paths, nested objects, long strings)."""
    if isinstance(value, (bool, int, float)) or value is None:
        return fmt_num(value)
    if isinstance(value, str):
        if "/" in value or "\\" in value or len(value) > _MAX_VALUE_CHARS:
            return None
        return value
    if isinstance(value, (list, tuple)) and len(value) <= 6 and all(isinstance(v, (int, float)) for v in value):
        return "[" + ", ".join(fmt_num(v) for v in value) + "]"
    return None


def summarize_config(config: Mapping[str, Any] | None, max_items: int = 12) -> list[tuple[str, str]]:
    """``(name, value)`` pairs of a config: scalars only, one level of nesting flattened, credentials left out."""
    if not config:
        return []
    out: list[tuple[str, str]] = []
    for key, value in config.items():
        items = value.items() if isinstance(value, Mapping) else [(None, value)]
        for sub, v in items:
            name = f"{key}.{sub}" if sub is not None else str(key)
            if _SECRETISH.search(name):
                continue
            shown = _short(v)
            if shown is not None:
                out.append((name, shown))
    if len(out) > max_items:
        out = out[:max_items] + [("…", f"{len(out) - max_items} more")]
    return out


def config_inline(config: Mapping[str, Any] | None, max_items: int = 6) -> str:
    """``lr=0.001 gamma=0.99`` (escaped) for one-line trial descriptions."""
    return esc(" ".join(f"{k}={v}" for k, v in summarize_config(config, max_items)))


def _header(emoji: str, title: str, experiment: str) -> str:
    return f"{emoji} <b>{esc(title)}</b> · <code>{esc(experiment)}</code>"


def _context_lines(context: Mapping[str, Any] | None) -> list[str]:
    return [f"{esc(k)}: {esc(v)}" for k, v in (context or {}).items() if v not in (None, "")]


def _table(rows: Sequence[Sequence[str]]) -> str:
    """A monospace table in ``<pre>`` (columns padded; cells escaped)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in rows]
    return "<pre>" + esc("\n".join(lines)) + "</pre>"


def metrics_table(metrics: Mapping[str, Any], baseline: Mapping[str, Any] | None = None,
                  agent_label: str = "agent", baseline_label: str = "buy&hold") -> str:
    """Metrics side by side with the baseline (buy-and-hold), one row per metric."""
    if not metrics:
        return ""
    baseline = baseline or {}
    rows: list[list[str]] = [["metric", agent_label] + ([baseline_label] if baseline else [])]
    for key, value in metrics.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        row = [str(key), fmt_num(value)]
        if baseline:
            row.append(fmt_num(baseline.get(key)))
        rows.append(row)
    return _table(rows) if len(rows) > 1 else ""


# ------------------------------------------------------------------------------------------------ single run ---


def run_start(experiment: str, *, agent_type: str, episodes: int, data_file: str,
              context: Mapping[str, Any] | None = None) -> str:
    """🚀 a training run started."""
    lines = [
        _header("🚀", "Training started", experiment),
        f"Agent: {esc(agent_type)}",
        f"Episodes: {fmt_num(episodes)}",
        f"Data: <code>{esc(data_file)}</code>",
        *_context_lines(context),
    ]
    return "\n".join(lines)


def run_progress(experiment: str, *, episode: int, total: int, mean_reward: float | None = None,
                 loss: float | None = None, epsilon: float | None = None, elapsed_s: float | None = None,
                 eta_s: float | None = None, extra: Mapping[str, Any] | None = None) -> str:
    """📊 progress of a run (one message, edited in place)."""
    pct = 100.0 * episode / total if total else float("nan")
    lines = [
        _header("📊", "Progress", experiment),
        f"Episode: {fmt_num(episode)}/{fmt_num(total)} ({pct:.1f}%)",
    ]
    for label, value in (("Mean reward", mean_reward), ("Loss", loss), ("Epsilon", epsilon)):
        if value is not None:
            lines.append(f"{label}: {fmt_num(value)}")
    for k, v in (extra or {}).items():
        lines.append(f"{esc(k)}: {esc(fmt_num(v))}")
    if elapsed_s is not None:
        lines.append(f"Elapsed: {fmt_duration(elapsed_s)}" + (f" · ETA {fmt_duration(eta_s)}" if eta_s else ""))
    return "\n".join(lines)


def run_checkpoint(experiment: str, *, episode: int, path: str, total: int | None = None) -> str:
    """💾 a checkpoint was saved."""
    ep = f"{fmt_num(episode)}/{fmt_num(total)}" if total else fmt_num(episode)
    lines = [_header("💾", "Checkpoint saved", experiment), f"Episode: {ep}", f"Path: <code>{esc(path)}</code>"]
    return "\n".join(lines)


def run_finished(experiment: str, *, final_reward: float | None, test_metrics: Mapping[str, Any] | None,
                 baseline_metrics: Mapping[str, Any] | None, model_path: str | None,
                 elapsed_s: float | None = None) -> str:
    """✅ a run finished: final reward, test metrics against buy-and-hold, model path."""
    lines = [_header("✅", "Training finished", experiment)]
    if final_reward is not None:
        lines.append(f"Final reward: {fmt_num(final_reward)}")
    table = metrics_table(test_metrics or {}, baseline_metrics)
    if table:
        lines.append("Test set:")
        lines.append(table)
    if model_path:
        lines.append(f"Model: <code>{esc(model_path)}</code>")
    if elapsed_s is not None:
        lines.append(f"Duration: {fmt_duration(elapsed_s)}")
    return "\n".join(lines)


def format_traceback(exc: BaseException) -> str:
    """The full traceback text of ``exc`` (chained causes included)."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def error_message(experiment: str, exc: BaseException | str, *, title: str = "Training failed",
                  secrets: Iterable[str | None] = (), context: Mapping[str, Any] | None = None) -> str:
    """❌ an error: exception line and the tail of the traceback, redacted, cut to fit one message."""
    secrets = tuple(secrets)
    if isinstance(exc, BaseException):
        summary = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        tb = format_traceback(exc)
    else:
        summary, tb = str(exc).strip().splitlines()[-1] if str(exc).strip() else "error", str(exc)
    summary = redact(summary, secrets).splitlines()[0] if summary else "error"
    if len(summary) > 300:
        summary = summary[:300] + "…"
    head = "\n".join([_header("❌", title, experiment), *_context_lines(context), f"<b>{esc(summary)}</b>"])
    budget = MESSAGE_LIMIT - visible_len(head) - 8
    tail = tail_text(redact(tb, secrets).rstrip(), max(200, budget))
    return head + "\n<pre>" + esc(tail) + "</pre>"


def time_limit_message(experiment: str, *, reason: str = "", last_episode: int | None = None,
                       total: int | None = None, last_checkpoint: str | None = None) -> str:
    """⏰ the job hit its time limit (or got SIGTERM); where it got to and the last checkpoint."""
    lines = [_header("⏰", "Time limit reached", experiment)]
    if reason:
        lines.append(esc(reason))
    if last_episode is not None:
        lines.append(f"Last episode: {fmt_num(last_episode)}" + (f"/{fmt_num(total)}" if total else ""))
    if last_checkpoint:
        lines.append(f"Last checkpoint: <code>{esc(last_checkpoint)}</code>")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ sweep ---


@dataclass(frozen=True)
class TrialRow:
    """One line of the dashboard's top-trials table."""

    trial_id: str
    metric: float | None
    metric_std: float | None
    val_return: float | None
    env_steps: int | None
    status: str
    config: Mapping[str, Any]


_STATUS_MARK = {"running": "▶", "finished": "✓", "stopped": "✂", "errored": "✗", "pending": "…"}


def sweep_start(experiment: str, *, metric: str, mode: str, num_samples: int | None,
                space_summary: Mapping[str, Any] | str | None, resources: Mapping[str, Any] | str | None,
                max_t: int | None = None, context: Mapping[str, Any] | None = None,
                time_attr: str = "env_steps") -> str:
    """🚀 a sweep started: search space, number of samples, cluster resources."""
    lines = [
        _header("🚀", "Sweep started", experiment),
        f"Trials: {fmt_num(num_samples) if num_samples and num_samples > 0 else 'open-ended'}"
        f" · metric <code>{esc(metric)}</code> ({esc(mode)})",
    ]
    if max_t:
        unit = {"env_steps": "env steps", "episodes": "episodes"}.get(time_attr, time_attr)
        lines.append(f"Budget per trial: {fmt_num(max_t)} {esc(unit)} (ASHA)")
    if isinstance(space_summary, str):
        lines.append(f"Search space: {esc(space_summary)}")
    elif space_summary:
        lines.append("Search space:")
        for k, v in list(space_summary.items())[:16]:
            text = str(v)
            text = text if len(text) <= 80 else text[:79] + "…"
            lines.append(f"• {esc(k)}: {esc(text)}")
    if isinstance(resources, str):
        lines.append(f"Cluster: {esc(resources)}")
    elif resources:
        lines.append("Cluster: " + esc(", ".join(f"{fmt_num(v)} {k}" for k, v in resources.items())))
    lines.extend(_context_lines(context))
    return "\n".join(lines)


def sweep_dashboard(experiment: str, *, metric: str, mode: str, counts: Mapping[str, int],
                    top: Sequence[TrialRow], elapsed_s: float | None, eta_s: float | None,
                    updated: str | None = None, final: bool = False) -> str:
    """📊 the live dashboard: status counts, top trials, best config, elapsed and estimated remaining time."""
    title = "Sweep finished (trials)" if final else "Sweep dashboard"
    lines = [_header("📊", title, experiment)]
    lines.append(
        f"▶ running {counts.get('running', 0)} · ✓ finished {counts.get('finished', 0)} · "
        f"✂ stopped by ASHA {counts.get('stopped', 0)} · ✗ errored {counts.get('errored', 0)} · "
        f"… pending {counts.get('pending', 0)}"
    )
    if top:
        rows = [["", "trial", metric, "±std", "val_ret", "steps"]]
        for r in top:
            rows.append([
                _STATUS_MARK.get(r.status, "?"), r.trial_id, fmt_num(r.metric),
                fmt_num(r.metric_std) if r.metric_std is not None else "",
                fmt_num(r.val_return) if r.val_return is not None else "",
                fmt_num(r.env_steps) if r.env_steps is not None else "",
            ])
        lines.append(f"Top {len(top)} by <code>{esc(metric)}</code> ({esc(mode)}):")
        lines.append(_table(rows))
        best = summarize_config(top[0].config)
        if best:
            lines.append(f"Best config ({esc(top[0].trial_id)}):")
            lines.append(_table([[k, v] for k, v in best]))
    else:
        lines.append("No results yet.")
    timing = f"Elapsed: {fmt_duration(elapsed_s)}"
    if not final:
        timing += f" · remaining ≈ {fmt_duration(eta_s)}"
    lines.append(timing)
    if updated:
        lines.append(f"<i>updated {esc(updated)}</i>")
    return "\n".join(lines)


def sweep_errors(experiment: str, errors: Sequence[tuple[str, Mapping[str, Any], str]], *,
                 total_errored: int, tail: str | None = None, secrets: Iterable[str | None] = ()) -> str:
    """❌ one digest for a burst of errored trials: one line each, and the traceback tail of the first."""
    secrets = tuple(secrets)
    n = len(errors)
    title = f"{n} trial{'s' if n != 1 else ''} errored"
    lines = [_header("❌", title, experiment), f"Errored so far: {total_errored}"]
    for trial_id, config, last_line in errors[:10]:
        msg = redact(last_line, secrets)
        msg = msg if len(msg) <= 160 else msg[:159] + "…"
        cfg = config_inline(config, 4)
        lines.append(f"• <code>{esc(trial_id)}</code> {cfg}: {esc(msg)}")
    if n > 10:
        lines.append(f"… and {n - 10} more")
    head = "\n".join(lines)
    if tail:
        budget = MESSAGE_LIMIT - visible_len(head) - 40
        if budget > 200:
            head += f"\nFirst traceback ({esc(errors[0][0])}):\n<pre>" + esc(tail_text(redact(tail, secrets),
                                                                                    budget)) + "</pre>"
    return head


def sweep_finished(experiment: str, *, best_config: Mapping[str, Any], test_metrics: Mapping[str, Any],
                   baseline_metrics: Mapping[str, Any] | None, deflated_sharpe: float | None, n_trials: int,
                   elapsed_s: float | None = None) -> str:
    """✅ a sweep finished: the winner's config, its test result against buy-and-hold, the deflated Sharpe."""
    lines = [_header("✅", "Sweep finished", experiment), f"Trials: {fmt_num(n_trials)}"]
    best = summarize_config(best_config)
    if best:
        lines.append("Best config:")
        lines.append(_table([[k, v] for k, v in best]))
    table = metrics_table(test_metrics or {}, baseline_metrics)
    if table:
        lines.append("Winner on the test set:")
        lines.append(table)
    if deflated_sharpe is not None:
        lines.append(f"Deflated Sharpe ratio: {fmt_num(deflated_sharpe)} (probability the Sharpe is real after "
                     f"{fmt_num(n_trials)} trials)")
    if elapsed_s is not None:
        lines.append(f"Duration: {fmt_duration(elapsed_s)}")
    return "\n".join(lines)
