"""The report's charts, drawn with matplotlib's Agg canvas and saved as PNG.

matplotlib is imported inside each function (``import dqlray`` stays light), and figures are made with
``matplotlib.figure.Figure`` and an Agg canvas, never ``pyplot``: no global backend switch, no figure registry, nothing
left open in a long-running driver.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dqlray.report.format import metric_label, param_label, pretty_name
from dqlray.runinfo import guarded_write

DPI = 150
AGENT = "#1f4e9c"
SEED = "#93b4e0"
BASELINE_COLORS = {
    "buy_and_hold": "#2b2b2b", "always_flat": "#a0a0a0", "ma_crossover": "#e07b00", "momentum": "#2e8b57",
    "mean_reversion": "#8e44ad", "random": "#8d6e63", "linear_probe": "#00798c",
}
BASELINE_STYLES = {"buy_and_hold": (0, (5, 2)), "always_flat": ":", "random": "-."}
PALETTE = ["#1f4e9c", "#d1495b", "#2e8b57", "#e07b00", "#8e44ad", "#00798c", "#b8860b", "#6c757d", "#c2185b",
           "#4e6e16", "#5e35b1", "#795548"]
LONG_COLOR = "#2e8b57"
SHORT_COLOR = "#c0392b"

STYLE = {
    "font.family": "DejaVu Sans", "font.size": 9.5, "axes.titlesize": 11, "axes.titleweight": "bold",
    "axes.titlelocation": "left", "axes.titlepad": 8, "axes.labelsize": 9.5, "axes.labelcolor": "#3a4252",
    "axes.edgecolor": "#a8b0bf", "axes.linewidth": 0.8, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.color": "#e8ebf1", "grid.linewidth": 0.8, "xtick.color": "#5d6677",
    "ytick.color": "#5d6677", "xtick.labelsize": 8.5, "ytick.labelsize": 8.5, "legend.frameon": False,
    "legend.fontsize": 8.5, "figure.facecolor": "white", "axes.facecolor": "white", "lines.solid_capstyle": "round",
}


def _figure(width: float, height: float, **kw: Any) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained", **kw)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    """Save as PNG, reduced to a 256-colour palette: a third of the bytes, no visible change for line charts.

    The figure is drawn once into memory and the palette image written from there (a full-colour PNG written and read
    back, then recompressed with ``optimize``, took about 25% longer for 5% to 18% fewer bytes)."""
    tmp = path.with_name(f".{path.name}.partial.png")
    try:  # written to a temporary name, then renamed: a full disk leaves the earlier picture (issue 13)
        with guarded_write(path.parent, path.name):
            path.parent.mkdir(parents=True, exist_ok=True)
            small = None
            try:
                from PIL import Image  # a dependency of matplotlib

                fig.set_facecolor("white")
                fig.canvas.draw()
                rgba = fig.canvas.buffer_rgba()
                w, h = fig.canvas.get_width_height(physical=True)
                q = Image.frombuffer("RGBA", (w, h), rgba, "raw", "RGBA", 0, 1).convert("RGB").quantize(
                    colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
                buf = io.BytesIO()
                q.save(buf, format="PNG", dpi=(DPI, DPI))
                small = buf.getvalue()
            except Exception:  # noqa: BLE001 - the full-colour PNG is fine too
                pass
            if small is not None:
                tmp.write_bytes(small)
            else:
                fig.savefig(tmp, dpi=DPI, facecolor="white")
            tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def pct(v: float) -> str:
    """``+15.7%`` / ``−3.8%`` with a real minus sign, for legends."""
    return f"{v:+.1%}".replace("-", "\u2212")


def _style() -> Any:
    import matplotlib

    return matplotlib.rc_context(STYLE)


def _date_axis(ax: Any) -> None:
    import matplotlib.dates as mdates

    loc = mdates.AutoDateLocator(minticks=4, maxticks=9)
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))


def _pct_axis(ax: Any, decimals: int = 0) -> None:
    from matplotlib.ticker import PercentFormatter

    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=decimals))


def _baselines(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c != "date" and not c.startswith("agent_")]


def _seeds(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith("agent_seed")]


def _legend_outside(ax: Any, first: str = "agent", **kw: Any) -> None:
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: not labels[i].startswith(first))  # the agent on top
    ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="upper left", bbox_to_anchor=(1.01, 1.0),
              borderaxespad=0.0, handlelength=2.2, **kw)


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="#8a93a3", fontsize=9, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for sp in ax.spines.values():
        sp.set_color("#e2e6ee")


def plot_equity(eq: pd.DataFrame, path: Path, *, title: str, show_seeds: bool = True,
                boundaries: Sequence[Any] = ()) -> Path:
    """The agent's equity curve per seed (thin) and mean (bold) against every baseline, from 1 at the start.

    ``boundaries``: dates where a new walk-forward fold's test block begins (dotted vertical lines)."""
    with _style():
        fig = _figure(11, 4.6)
        ax = fig.add_subplot()
        x = eq["date"].to_numpy()
        for i, b in enumerate(boundaries):
            ax.axvline(b, color="#9aa3b2", ls=":", lw=1.0, zorder=1, label="start of a fold's test block" if i == 0
                       else None)
        for b in _baselines(eq):
            y = eq[b].to_numpy(dtype=float)
            ax.plot(x, y, color=BASELINE_COLORS.get(b, "#777777"), ls=BASELINE_STYLES.get(b, "-"), lw=1.15,
                    alpha=0.9, label=f"{pretty_name(b)}  {pct(y[-1] - 1)}", zorder=2)
        seeds = _seeds(eq)
        if show_seeds:
            for i, s in enumerate(seeds):
                ax.plot(x, eq[s].to_numpy(dtype=float), color=SEED, lw=0.8, alpha=0.8, zorder=3,
                        label=f"agent, each of {len(seeds)} seeds" if i == 0 else None)
        if "agent_mean" in eq:
            y = eq["agent_mean"].to_numpy(dtype=float)
            ax.plot(x, y, color=AGENT, lw=2.4, zorder=4, label=f"agent, mean of seeds  {pct(y[-1] - 1)}")
        return _finish_value_axes(fig, ax, title, "value of 1 invested", path)


def _finish_value_axes(fig: Any, ax: Any, title: str, ylabel: str, path: Path) -> Path:
    """The common end of an equity chart: the break-even line at 1, title, labels, date axis and legend; saved."""
    ax.axhline(1.0, color="#c5cad4", lw=0.8, zorder=1)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    _date_axis(ax)
    _legend_outside(ax)
    return _save(fig, path)


def drawdown(values: np.ndarray) -> np.ndarray:
    """``V / cummax(V) - 1`` of an equity curve (0 at new highs, negative below)."""
    v = np.asarray(values, dtype=float)
    return v / np.maximum.accumulate(v) - 1.0


def plot_drawdown(eq: pd.DataFrame, path: Path, *, title: str, reference: Sequence[str] = ("buy_and_hold",)) -> Path:
    """Drawdown of the agent (mean curve filled, seeds thin) against buy & hold (the other baselines' worst drawdowns
    are in the metrics table: five more lines here would hide the agent)."""
    with _style():
        fig = _figure(11, 3.4)
        ax = fig.add_subplot()
        x = eq["date"].to_numpy()
        for b in [c for c in _baselines(eq) if c in reference]:
            dd = drawdown(eq[b].to_numpy(dtype=float))
            ax.plot(x, dd, color=BASELINE_COLORS.get(b, "#777777"), ls=BASELINE_STYLES.get(b, "-"), lw=1.2,
                    label=f"{pretty_name(b)}  worst {pct(dd.min())}")
        seeds = _seeds(eq)
        for i, s in enumerate(seeds):
            ax.plot(x, drawdown(eq[s].to_numpy(dtype=float)), color=SEED, lw=0.8, alpha=0.8,
                    label=f"agent, each of {len(seeds)} seeds" if i == 0 else None)
        if "agent_mean" in eq:
            dd = drawdown(eq["agent_mean"].to_numpy(dtype=float))
            ax.fill_between(x, dd, 0, color=AGENT, alpha=0.16, lw=0)
            ax.plot(x, dd, color=AGENT, lw=1.9, label=f"agent, mean of seeds  worst {pct(dd.min())}")
        ax.set_title(title)
        ax.set_ylabel("below previous high")
        _pct_axis(ax)
        _date_axis(ax)
        _legend_outside(ax)
        return _save(fig, path)


def trade_points(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices where the position rises (buys) and falls (sells), starting from flat."""
    p = np.asarray(pos, dtype=float)
    prev = np.concatenate([[0.0], p[:-1]])
    return np.flatnonzero(p > prev), np.flatnonzero(p < prev)


def _price_panel(ax: Any, x: np.ndarray, close: np.ndarray, held: np.ndarray) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ax.plot(x, close, color="#2b3446", lw=1.2, zorder=3)
    # each bar i spans [x[i], x[i+1]]: both ends repeated, so that a position held for a single bar is shaded too
    xs = np.repeat(x, 2)[1:-1]
    for sign, color in ((1, LONG_COLOR), (-1, SHORT_COLOR)):
        mask = np.repeat(held * sign > 0, 2)
        if mask.any():
            ax.fill_between(xs, 0, 1, where=mask, color=color, alpha=0.12, lw=0, transform=ax.get_xaxis_transform(),
                            zorder=1)
    buys, sells = trade_points(held)
    span = float(np.nanmax(close) - np.nanmin(close)) or 1.0
    ms = 6 if len(buys) + len(sells) < 80 else 4
    ax.scatter(x[buys], close[buys] - 0.025 * span, marker="^", s=ms**2, color=LONG_COLOR, zorder=4, lw=0)
    ax.scatter(x[sells], close[sells] + 0.025 * span, marker="v", s=ms**2, color=SHORT_COLOR, zorder=4, lw=0)
    handles = [Line2D([], [], color="#2b3446", lw=1.2, label="close"),
               Patch(color=LONG_COLOR, alpha=0.25, label="long"),
               Line2D([], [], marker="^", ls="", color=LONG_COLOR, label=f"buy ({len(buys)})"),
               Line2D([], [], marker="v", ls="", color=SHORT_COLOR, label=f"sell ({len(sells)})")]
    if (held < 0).any():
        handles.insert(2, Patch(color=SHORT_COLOR, alpha=0.25, label="short"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.set_ylabel("close")


def plot_price_positions(dates: np.ndarray, close: np.ndarray | None, pos: pd.DataFrame, seed_col: str, path: Path, *,
                         title: str, labels: Sequence[str] | None = None) -> Path:
    """Close price with one seed's positions shaded and its trades marked; below, every seed's position over time.

    ``dates``/``close`` have one more entry than ``pos`` (the equity curve's bars); ``pos`` row i is the position held
    from bar i to bar i+1, taken at bar i's close (so a trade is marked at bar i's price). Without ``close`` only the
    positions are drawn. ``labels`` name the seeds' rows.
    """
    from matplotlib.colors import LinearSegmentedColormap

    seeds = _seeds(pos)
    with _style():
        x = np.asarray(dates)
        if close is None:
            fig = _figure(11, 1.5 + 0.24 * max(1, len(seeds)))
            ax, axp = None, fig.add_subplot()
        else:
            fig = _figure(11, 5.4 + 0.12 * max(0, len(seeds) - 4))
            ax, axp = fig.subplots(2, 1, sharex=True, height_ratios=[3.2, 0.5 + 0.22 * len(seeds)])
            _price_panel(ax, x, np.asarray(close, dtype=float), pos[seed_col].to_numpy(dtype=float))
            ax.set_title(title)
        cmap = LinearSegmentedColormap.from_list("pos", [SHORT_COLOR, "#eef0f4", LONG_COLOR])
        grid = np.vstack([pos[s].to_numpy(dtype=float) for s in seeds]) if seeds else np.zeros((1, len(pos)))
        axp.pcolormesh(x, np.arange(grid.shape[0] + 1) - 0.5, grid, cmap=cmap, vmin=-1, vmax=1, shading="flat")
        axp.set_yticks(range(grid.shape[0]), list(labels or [pretty_name(s) for s in seeds]) or ["agent"], fontsize=7.5)
        axp.invert_yaxis()
        axp.grid(False)
        axp.tick_params(axis="y", length=0)
        for sp in axp.spines.values():
            sp.set_visible(False)
        if ax is None:
            axp.set_title(title)
        else:
            axp.set_title("position of every seed (green long, grey flat, red short)", fontsize=9,
                          fontweight="normal", color="#5d6677")
        _date_axis(axp)
        return _save(fig, path)


TRAINING_PANELS = (
    ("episode_return", None, "Episode return (training)"),
    ("loss", None, "Loss"),
    ("epsilon", None, "Exploration ε"),
    ("mean_q", None, "Mean Q"),
    ("val_sharpe", "val_sharpe_std", "Validation Sharpe ± sd"),
    ("val_return", "val_return_std", "Validation return ± sd"),
)


def plot_training(m: pd.DataFrame, path: Path, *, title: str) -> Path:
    """Training curves over episodes: return, loss, epsilon, mean Q, validation Sharpe and return with ± sd bands."""
    with _style():
        fig = _figure(11, 5.6)
        axes = fig.subplots(2, 3).ravel()
        x = m["episodes"].to_numpy(dtype=float) if "episodes" in m else np.arange(1, len(m) + 1, dtype=float)
        marker = "o" if len(m) <= 30 else None
        for ax, (key, sd_key, label) in zip(axes, TRAINING_PANELS, strict=True):
            ax.set_title(label, fontsize=9.5)
            y = pd.to_numeric(m[key], errors="coerce").to_numpy(dtype=float) if key in m else np.full(len(m), np.nan)
            ok = np.isfinite(y)
            if not ok.any():
                why = "no gradient updates yet\n(learning_starts not reached)" if key in ("loss", "mean_q") else \
                    "not recorded"
                _empty(ax, why)
                continue
            if key == "episode_return" and ok.sum() > 30:
                ax.plot(x[ok], y[ok], color=SEED, lw=0.8)
                win = max(5, int(ok.sum()) // 20)
                ax.plot(x[ok], pd.Series(y[ok]).rolling(win, min_periods=1).mean(), color=AGENT, lw=2,
                        label=f"rolling mean of {win}")
                ax.legend(loc="best")
            else:
                ax.plot(x[ok], y[ok], color=AGENT, lw=1.8, marker=marker, ms=3.5)
            if sd_key and sd_key in m:
                sd = pd.to_numeric(m[sd_key], errors="coerce").to_numpy(dtype=float)
                good = ok & np.isfinite(sd)
                ax.fill_between(x[good], (y - sd)[good], (y + sd)[good], color=AGENT, alpha=0.15, lw=0)
            if key == "val_sharpe" and "val_sharpe_min" in m:
                mn = pd.to_numeric(m["val_sharpe_min"], errors="coerce").to_numpy(dtype=float)
                if np.isfinite(mn).any():
                    ax.plot(x, mn, color=AGENT, lw=0.9, ls=":")
            if key == "loss" and (y[ok] > 0).all() and y[ok].max() / y[ok].min() > 100:
                ax.set_yscale("log")
            if key in ("val_return",):
                _pct_axis(ax)
            if key in ("val_sharpe", "val_return", "episode_return", "mean_q"):
                ax.axhline(0, color="#c5cad4", lw=0.8, zorder=0)
        for ax in axes[3:]:
            ax.set_xlabel("episode")
        from matplotlib.ticker import MaxNLocator

        for ax in axes:
            if ax.has_data():
                ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
        fig.suptitle(title, x=0.01, ha="left", fontsize=11, fontweight="bold")
        return _save(fig, path)


# ------------------------------------------------------------------------------------------------------ sweeps


def plot_rungs(curves: dict[str, pd.DataFrame], status: dict[str, str], best: str | None, rungs: Sequence[int],
               max_t: int | None, metric: str, path: Path, *, title: str) -> Path:
    """Validation metric against episodes for every trial: where each got to, and where ASHA stopped it.

    ``status`` per trial: ``full`` (whole budget), ``stopped`` (by ASHA), ``error`` or ``other``.
    """
    from matplotlib.lines import Line2D

    with _style():
        fig = _figure(11, 4.8)
        ax = fig.add_subplot()
        for r in rungs:
            ax.axvline(r, color="#c9ced8", lw=1, ls=(0, (4, 3)), zorder=0)
            ax.annotate(f"rung {r}", (r, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -2),
                        textcoords="offset points", va="top", fontsize=8, color="#7d8696")
        if max_t:
            ax.axvline(max_t, color="#9aa3b2", lw=1, zorder=0)
        colors = {"full": "#4f7cc2", "stopped": "#a7aebb", "error": "#c0392b", "other": "#e0a800"}
        for tid, df in curves.items():
            if metric not in df or "episodes" not in df:
                continue
            x = df["episodes"].to_numpy(dtype=float)
            y = pd.to_numeric(df[metric], errors="coerce").to_numpy(dtype=float)
            st = status.get(tid, "other")
            is_best = tid == best
            ax.plot(x, y, color="#d1495b" if is_best else colors[st], lw=2.6 if is_best else 1.1,
                    alpha=1.0 if is_best else 0.85, zorder=5 if is_best else 3)
            if not len(x):
                continue
            end = {"full": ("o", 18), "stopped": ("X", 34), "error": ("s", 26), "other": ("d", 26)}[st]
            ax.scatter(x[-1:], y[-1:], marker="*" if is_best else end[0], s=150 if is_best else end[1],
                       color="#d1495b" if is_best else colors[st], zorder=6, edgecolors="white", linewidths=0.6)
        handles = [Line2D([], [], color="#d1495b", lw=2.6, marker="*", ms=11, label="winner (best at full budget)"),
                   Line2D([], [], color=colors["full"], lw=1.1, marker="o", ms=4, label="ran the full budget"),
                   Line2D([], [], color=colors["stopped"], lw=1.1, marker="X", ms=6, label="stopped by ASHA")]
        if "error" in status.values():
            handles.append(Line2D([], [], color=colors["error"], lw=1.1, marker="s", ms=5, label="failed"))
        if rungs:
            handles.append(Line2D([], [], color="#c9ced8", lw=1, ls=(0, (4, 3)), label="ASHA rung"))
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        ax.axhline(0, color="#c5cad4", lw=0.8, zorder=0)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("episodes (training budget used)")
        ax.set_ylabel(metric_label(metric))
        ax.set_title(title)
        return _save(fig, path)


def _sort_key(v: Any) -> tuple[int, Any]:
    try:
        return (0, float(v))
    except (TypeError, ValueError):
        s = str(v)
        if s.startswith("["):
            try:
                return (1, tuple(float(t) for t in s.strip("[]").split(",")))
            except ValueError:
                pass
        return (2, s)


def _log_axis(ax: Any) -> None:
    """Log x with 1-2-5 ticks labelled like 2e−4 (matplotlib's minor labels collide on a short range)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from dqlray.formatting import fmt

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v, "sci").replace(".00", "")))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_param_scatter(trials: pd.DataFrame, params: Sequence[str], scales: dict[str, str], metric: str, best: str | None,
                       path: Path, *, title: str) -> Path:
    """One panel per hyperparameter: its value against the validation metric (log-x for log-scale parameters).

    ``scales`` per parameter: ``log``, ``linear`` or ``category``. Configurations stopped by ASHA are hollow (scored
    at the budget they reached); the winner is a red star.
    """
    n = max(1, len(params))
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    rng = np.random.default_rng(0)  # jitter of categories only; fixed so the picture is reproducible
    with _style():
        fig = _figure(11, 2.55 * nrows + 0.5)
        axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=True)).ravel()
        y_all = pd.to_numeric(trials[metric], errors="coerce").to_numpy(dtype=float)
        stopped = trials["stopped_by_asha"].astype(str).str.lower().eq("true").to_numpy() \
            if "stopped_by_asha" in trials else np.zeros(len(trials), bool)
        key = "config_id" if "config_id" in trials else "trial_id"
        is_best = (trials[key].astype(str) == str(best)).to_numpy()
        for ax, p in zip(axes, params, strict=False):
            col = trials[p]
            scale = scales.get(p, "linear")
            if scale == "category":
                cats = sorted({str(v) for v in col}, key=_sort_key)
                pos = {c: i for i, c in enumerate(cats)}
                x = np.array([pos[str(v)] for v in col], dtype=float) + rng.uniform(-0.12, 0.12, len(col))
                ax.set_xticks(range(len(cats)), cats, rotation=20 if max(map(len, cats)) > 6 else 0, fontsize=8)
                ax.set_xlim(-0.6, len(cats) - 0.4)
            else:
                x = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
                if scale == "log":
                    _log_axis(ax)
            full = ~stopped & ~is_best
            ax.scatter(x[full], y_all[full], s=26, color="#4f7cc2", alpha=0.85, lw=0, zorder=3)
            ax.scatter(x[stopped & ~is_best], y_all[stopped & ~is_best], s=26, facecolors="none",
                       edgecolors="#8a93a3", lw=1.0, zorder=3)
            ax.scatter(x[is_best], y_all[is_best], s=140, marker="*", color="#d1495b", zorder=4, lw=0.5,
                       edgecolors="white")
            ax.set_title(param_label(p), fontsize=9.5)
            ax.axhline(0, color="#c5cad4", lw=0.8, zorder=0)
        for ax in axes[len(params):]:
            ax.set_visible(False)
        for i in range(0, len(axes), ncols):
            axes[i].set_ylabel(metric_label(metric))
        fig.suptitle(title, x=0.01, ha="left", fontsize=11, fontweight="bold")
        return _save(fig, path)


def plot_importance(values: dict[str, float], method: str, path: Path, *, title: str) -> Path:
    """Horizontal bars: each hyperparameter's share of the explained variation of the validation metric."""
    items = sorted(values.items(), key=lambda kv: kv[1])
    with _style():
        fig = _figure(8.5, 0.9 + 0.36 * max(1, len(items)))
        ax = fig.add_subplot()
        if not items:
            _empty(ax, "not enough configurations to tell")
        else:
            names = [param_label(k) for k, _ in items]
            vals = [v for _, v in items]
            ax.set_axisbelow(True)
            bars = ax.barh(names, vals, color="#4f7cc2", height=0.62)
            bars[-1].set_color(AGENT)
            for b, v in zip(bars, vals, strict=True):
                ax.text(b.get_width(), b.get_y() + b.get_height() / 2, f"  {v:.0%}", va="center", fontsize=8.5,
                        color="#3a4252")
            ax.set_xlim(0, max(vals) * 1.18 or 1)
            from matplotlib.ticker import PercentFormatter

            ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
            ax.grid(axis="y", visible=False)
            ax.set_xlabel(f"importance ({method})")
        ax.set_title(title)
        return _save(fig, path)


# -------------------------------------------------------------------------------------------------- comparison


def plot_compare_equity(series: Sequence[tuple[str, np.ndarray, np.ndarray]],
                        references: Sequence[tuple[str, np.ndarray, np.ndarray]], path: Path, *, title: str) -> Path:
    """Several experiments' mean test equity curves on one chart, with buy & hold as the reference."""
    with _style():
        fig = _figure(11, 4.8)
        ax = fig.add_subplot()
        for label, x, y in references:
            ax.plot(x, y, color="#2b2b2b", ls=(0, (5, 2)), lw=1.2, label=f"{label}  {pct(y[-1] - 1)}", zorder=2)
        for i, (label, x, y) in enumerate(series):
            ax.plot(x, y, color=PALETTE[i % len(PALETTE)], lw=2.0, label=f"{label}  {pct(y[-1] - 1)}", zorder=3)
        return _finish_value_axes(fig, ax, title, "value of 1 invested (agent mean of seeds)", path)


def plot_compare_bars(labels: Sequence[str], means: Sequence[float], sds: Sequence[float], refs: Sequence[float | None],
                      path: Path, *, title: str, xlabel: str) -> Path:
    """Test Sharpe (mean ± sd over seeds) of each experiment, with each one's buy & hold marked."""
    with _style():
        fig = _figure(11, 0.9 + 0.42 * max(1, len(labels)))
        ax = fig.add_subplot()
        yy = np.arange(len(labels))[::-1]
        colors = [PALETTE[i % len(PALETTE)] for i in range(len(labels))]
        ax.barh(yy, means, xerr=sds, color=colors, alpha=0.85, height=0.6, error_kw={"ecolor": "#3a4252", "lw": 1,
                                                                                     "capsize": 3})
        ref_pts = [(r, y) for r, y in zip(refs, yy, strict=True) if r is not None]
        if ref_pts:
            ax.scatter([r for r, _ in ref_pts], [y for _, y in ref_pts], marker="|", s=260, color="#2b2b2b", lw=2,
                       zorder=4, label="buy & hold")
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        ax.set_yticks(yy, labels)
        ax.axvline(0, color="#9aa3b2", lw=0.8)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        return _save(fig, path)
