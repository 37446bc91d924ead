"""Which hyperparameters mattered: Optuna's importance evaluators on the finished trials, with a plain fallback.

The trials table is turned into an in-memory Optuna study (``optuna.trial.create_trial`` + ``study.add_trial``), so
this works for any search (Optuna, random, grid). fANOVA needs scikit-learn; without it Optuna's PED-ANOVA is used,
and when Optuna cannot say anything (too few trials) a rank correlation per numeric parameter and a correlation ratio
per categorical one, normalised to sum to 1.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

MIN_TRIALS = 3


@dataclass(frozen=True)
class Importance:
    """Importances (sum 1, largest first), how they were computed, and from how many trials."""

    values: dict[str, float]
    method: str
    n_trials: int
    note: str = ""


def param_scale(name: str, space: str | None, values: pd.Series) -> str:
    """``log``, ``linear``, ``int`` or ``category`` for a searched parameter, from the sweep's space description.

    The space reads like ``loguniform [0.0001, 0.003]``, ``uniform [...]``, ``randint [...]``, ``choice [...]`` or
    ``grid ...`` (dqlray.tuning.space.space_summary). Without one, numbers are linear (log for learning rates) and
    anything else a category.
    """
    kind = (space or "").split(" ", 1)[0]
    numeric = pd.to_numeric(values, errors="coerce").notna().all()
    if kind == "loguniform":
        return "log"
    if kind == "uniform":
        return "linear"
    if kind == "randint":
        return "int"
    if kind in ("choice", "grid") or not numeric:
        return "category"
    return "log" if "learning_rate" in name and (pd.to_numeric(values) > 0).all() else "linear"


def param_importance(trials: pd.DataFrame, params: list[str], metric: str,
                     space: dict[str, str] | None = None) -> Importance:
    """Importance of each searched parameter for ``metric`` over the trials that report it."""
    space = space or {}
    df = trials[pd.to_numeric(trials[metric], errors="coerce").notna()].copy()
    y = pd.to_numeric(df[metric]).to_numpy(dtype=float)
    varying = [p for p in params if p in df and df[p].astype(str).nunique() > 1]
    n = len(df)
    if n < MIN_TRIALS or not varying:
        why = f"{n} trial(s) with a {metric}" if n < MIN_TRIALS else "no searched parameter took more than one value"
        return Importance({}, "none", n, f"Not enough to tell: {why}.")
    if np.ptp(y) == 0:
        return Importance({}, "none", n, f"Every trial has the same {metric}: nothing to explain.")
    scales = {p: param_scale(p, space.get(p), df[p]) for p in varying}
    try:
        values, method = _optuna(df, varying, scales, y)
        if values and all(math.isfinite(v) for v in values.values()) and sum(values.values()) > 0:
            return Importance(_normalise(values), method, n)
        reason = "Optuna found no importance"
    except Exception as e:  # noqa: BLE001 - any failure of the evaluators falls back to the simple measure
        reason = f"Optuna's evaluators failed ({type(e).__name__}: {e})"
    values = {p: _simple(df[p], y, scales[p]) for p in varying}
    method = "rank correlation / correlation ratio"
    if sum(values.values()) <= 0:
        return Importance({}, "none", n, f"{reason}; and no parameter is associated with the {metric}.")
    return Importance(_normalise(values), method, n, f"{reason}; shown: |Spearman ρ| for numbers, η for categories.")


def _normalise(values: dict[str, float]) -> dict[str, float]:
    total = sum(values.values())
    return dict(sorted(((k, v / total) for k, v in values.items()), key=lambda kv: -kv[1]))


def _optuna(df: pd.DataFrame, params: list[str], scales: dict[str, str], y: np.ndarray) -> tuple[dict[str, float], str]:
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    dists: dict[str, Any] = {}
    cols: dict[str, list[Any]] = {}
    for p in params:
        if scales[p] in ("log", "linear"):
            v = pd.to_numeric(df[p]).astype(float)
            if scales[p] == "log" and (v <= 0).any():
                scales[p] = "linear"
            dists[p] = FloatDistribution(float(v.min()), float(v.max()), log=scales[p] == "log")
            cols[p] = list(v)
        elif scales[p] == "int":
            v = pd.to_numeric(df[p]).astype(int)
            dists[p] = IntDistribution(int(v.min()), int(v.max()))
            cols[p] = [int(x) for x in v]
        else:  # lists such as hidden sizes, strings, or a grid's points: categories
            v = df[p].astype(str)
            dists[p] = CategoricalDistribution(sorted(set(v)))
            cols[p] = list(v)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = optuna.create_study(direction="maximize")
            for i in range(len(df)):
                study.add_trial(optuna.trial.create_trial(
                    params={p: cols[p][i] for p in params}, distributions=dists, value=float(y[i])))
            try:
                evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
                method = "fANOVA (Optuna)"
            except ImportError:  # fANOVA needs scikit-learn
                evaluator = optuna.importance.PedAnovaImportanceEvaluator()
                method = "PED-ANOVA (Optuna)"
            values = optuna.importance.get_param_importances(study, evaluator=evaluator, normalize=False)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return {k: float(v) for k, v in values.items()}, method


def _simple(x: pd.Series, y: np.ndarray, scale: str) -> float:
    if scale == "category":
        groups = pd.Series(y).groupby(x.astype(str).to_numpy())
        ss_total = float(((y - y.mean()) ** 2).sum())
        ss_between = float(sum(len(g) * (g.mean() - y.mean()) ** 2 for _, g in groups))
        return math.sqrt(ss_between / ss_total) if ss_total > 0 else 0.0
    xv = pd.to_numeric(x).astype(float)
    rho = pd.Series(xv.to_numpy()).rank().corr(pd.Series(y).rank())
    return abs(float(rho)) if rho == rho else 0.0
