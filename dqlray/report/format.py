"""How numbers and names look in reports: one place for the metric labels, units, tooltips and rounding."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MINUS = "\u2212"  # a real minus sign: "−0.12" lines up with "0.12" in tabular figures
DASH = "\u2013"  # shown for a missing or non-finite value


@dataclass(frozen=True)
class MetricSpec:
    """How one performance metric is shown."""

    label: str
    kind: str  # a format kind of :func:`fmt`
    help: str  # the definition, shown as a tooltip (shared/notes/trading-rl.md)
    better: int = 0  # +1 higher is better, -1 lower is better, 0 neither (highlighted only when non-zero)


# Presentation order of the test metrics (dqlray.metrics.summarize computes them).
METRICS: dict[str, MetricSpec] = {
    "total_return": MetricSpec("Total return", "pct", "prod(1 + r) − 1 over the whole split", +1),
    "cagr": MetricSpec("CAGR", "pct", "(1 + total)^(P/n) − 1, P periods per year", +1),
    "sharpe": MetricSpec("Sharpe", "ratio", "mean(r) / std(r, ddof=1) · √P, annualised, risk-free rate 0", +1),
    "sortino": MetricSpec("Sortino", "ratio", "mean(r) / downside deviation over all n periods · √P", +1),
    "annual_volatility": MetricSpec("Volatility", "pct", "std(r, ddof=1) · √P"),
    "max_drawdown": MetricSpec("Max drawdown", "pct", "min(V / cummax(V)) − 1, starting value included", +1),
    "calmar": MetricSpec("Calmar", "ratio", "CAGR / |max drawdown|", +1),
    "win_rate": MetricSpec("Win rate", "pct", "per period: #(r > 0) / #(r ≠ 0)"),
    "num_trades": MetricSpec("Trades", "int", "periods in which the position changed"),
    "turnover": MetricSpec("Turnover", "float1", "traded value / portfolio value, summed and annualised"),
    "exposure": MetricSpec("Exposure", "pct", "fraction of periods with a position held"),
}

POLICY_NAMES = {
    "agent": "agent", "agent_mean": "agent (mean)", "buy_and_hold": "buy & hold", "always_flat": "always flat",
    "ma_crossover": "MA crossover", "momentum": "momentum", "mean_reversion": "mean reversion", "random": "random",
    "linear_probe": "linear probe",
}


def pretty_name(name: str) -> str:
    """Display name of a policy or column (``buy_and_hold`` -> ``buy & hold``, ``agent_seed2`` -> ``seed 2``)."""
    if name in POLICY_NAMES:
        return POLICY_NAMES[name]
    if name.startswith("agent_seed"):
        return "seed " + name[len("agent_seed"):]
    return name.replace("_", " ")


def param_label(key: str) -> str:
    """``agent.learning_rate`` -> ``learning_rate``: the section is clear from context in a sweep."""
    return key.split(".", 1)[1] if "." in key else key


def metric_label(metric: str) -> str:
    """``val_sharpe`` -> ``validation Sharpe``."""
    name = metric.removeprefix("val_")
    name = {"sharpe": "Sharpe", "return": "return"}.get(name, name.replace("_", " "))
    return f"validation {name}" if metric.startswith("val_") else name


def finite(v: Any) -> float | None:
    """``v`` as a finite float, or None (missing, NaN, inf, not a number)."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _signed(text: str) -> str:
    return MINUS + text[1:] if text.startswith("-") else text


def fmt(v: Any, kind: str = "general") -> str:
    """Format one value (plain text, not escaped).

    Kinds: ``pct`` (0.157 -> 15.7%), ``ratio`` (2 decimals), ``int``, ``float1``, ``sci`` (6.47e-4, learning rates),
    ``general`` (4 significant digits), ``bool`` (yes/no), ``text``. Missing or non-finite numbers show as a dash.
    """
    if kind == "text":
        return "" if v is None else str(v)
    if kind == "bool":
        if isinstance(v, str):
            v = v.strip().lower() in ("true", "1", "yes")
        return DASH if v is None else ("yes" if v else "no")
    f = finite(v)
    if f is None:
        return DASH if not isinstance(v, str) or not v else v
    if kind == "pct":
        p = f * 100
        return _signed(f"{p:,.0f}%" if abs(p) >= 1000 else f"{p:.1f}%")
    if kind == "ratio":
        return _signed(f"{f:.2f}")
    if kind == "int":
        return _signed(f"{f:,.0f}")
    if kind == "float1":
        return _signed(f"{f:,.1f}")
    if kind == "float3":
        return _signed(f"{f:.3f}")
    if kind == "sci":
        if f == 0:
            return "0"
        exp = math.floor(math.log10(abs(f)))
        mant = f / 10**exp
        if abs(round(mant, 2)) >= 10:
            mant, exp = mant / 10, exp + 1
        return _signed(f"{mant:.2f}e{exp}").replace("e-", "e" + MINUS)
    if kind == "seconds":
        return f"{f:.1f} s" if f < 120 else f"{f / 60:.1f} min"
    if f == int(f) and abs(f) < 1e15:
        return _signed(f"{int(f)}")
    return _signed(f"{f:.4g}")


def fmt_sd(sd: Any, kind: str) -> str:
    """The spread next to a mean: ``± 7.0`` (percentage points for ``pct``), or empty when unknown."""
    f = finite(sd)
    if f is None:
        return ""
    if kind == "pct":
        return f"± {f * 100:.1f}"
    if kind == "int":
        return f"± {f:,.0f}"
    if kind == "float1":
        return f"± {f:,.1f}"
    return f"± {f:.2f}"


def number_kind(key: str, values: list[Any] | None = None) -> str:
    """A sensible format kind for a column of a sweep table, by name and values."""
    if key in METRICS:
        return METRICS[key].kind
    name = param_label(key)
    if name in ("val_sharpe", "val_sharpe_std", "val_sharpe_min", "sharpe", "dsr", "sr0"):
        return "ratio"
    if name in ("val_return", "val_return_std", "episode_return"):
        return "pct" if name != "episode_return" else "float3"
    if name in ("learning_rate", "lr"):
        return "sci"
    if name in ("time_total_s",):
        return "seconds"
    if name in ("stopped_by_asha", "error"):
        return "bool"
    nums = [finite(v) for v in (values or [])]
    if values and all(n is None for n in nums):
        return "text"
    present = [n for n in nums if n is not None]
    if present and all(n == int(n) for n in present):
        return "int"
    if present and max(abs(n) for n in present) < 1e-2:
        return "sci"
    return "general"
