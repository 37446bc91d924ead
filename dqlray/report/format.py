"""How metrics and names look in reports: the metric labels, units and tooltips (numbers: :mod:`dqlray.formatting`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dqlray.metrics import finite_or_none


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
    nums = [finite_or_none(v) for v in (values or [])]
    if values and all(n is None for n in nums):
        return "text"
    present = [n for n in nums if n is not None]
    if present and all(n == int(n) for n in present):
        return "int"
    if present and max(abs(n) for n in present) < 1e-2:
        return "sci"
    return "general"
