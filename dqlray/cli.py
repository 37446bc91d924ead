"""The ``dqlray`` command: train, evaluate, full-workflow, data, baselines, consolidate, report, compare, notify.

Flags follow the HPC guide users come from (``--agent_type --data_file --experiment_name --episodes --learning_rate
--gamma --target_update_freq``); dashed spellings work too. User errors print one line and exit 2; a run stopped by
SIGUSR1/SIGTERM saves a checkpoint and exits 75 (resume it with ``--resume``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from dqlray.errors import ConfigError, DqlrayError

EXIT_USAGE = 2
EXIT_RESUMABLE = 75  # EX_TEMPFAIL: stopped with state saved; run again with --resume

# Guide flag -> (section, field, type)
TRAIN_FLAGS: dict[str, tuple[str, str, Callable[[str], Any]]] = {
    "agent_type": ("agent", "agent_type", str),
    "data_file": ("data", "data_file", str),
    "experiment_name": ("train", "experiment_name", str),
    "episodes": ("train", "episodes", int),
    "learning_rate": ("agent", "learning_rate", float),
    "gamma": ("agent", "gamma", float),
    "target_update_freq": ("agent", "target_update_freq", int),
    "batch_size": ("agent", "batch_size", int),
    "seed": ("train", "seed", int),
    "num_seeds": ("train", "num_seeds", int),
    "results_dir": ("train", "results_dir", str),
    "device": ("train", "device", str),
    "window": ("data", "window", int),
    "fee_bps": ("env", "fee_bps", float),
    "slippage_bps": ("env", "slippage_bps", float),
    "positions": ("env", "positions", str),
    "checkpoint_every": ("train", "checkpoint_every", int),
    "benchmark": ("verdict", "benchmark", str),
    "walk_forward": ("data", "walk_forward", int),
}


class UsageError(ConfigError):
    """A misused command line, reported under the name of the (sub)command, as argparse itself would."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so every usage error becomes one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(self.prog, message)


def _flag(parser: argparse.ArgumentParser, name: str, **kw: Any) -> None:
    dashed = name.replace("_", "-")
    names = [f"--{name}"] + ([f"--{dashed}"] if dashed != name else [])
    parser.add_argument(*names, dest=name, **kw)


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """The single-run flags shared by ``train``, ``full-workflow`` and ``train_single.py``."""
    _flag(p, "config", default=None, help="YAML file with overrides (sections data/env/agent/train)")
    for name, (_, _, tp) in TRAIN_FLAGS.items():
        _flag(p, name, type=tp, default=None, help=f"override {TRAIN_FLAGS[name][0]}.{TRAIN_FLAGS[name][1]}")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="any other config field, e.g. --set agent.n_step=3 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    p.add_argument("--fold", type=int, default=None, metavar="I",
                   help="with --walk-forward: run fold I only (several drivers can take one each; --resume stitches)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _flag(p, "telegram_token", default=None, help="DISCOURAGED: visible to other users; use TELEGRAM_BOT_TOKEN")
    _flag(p, "telegram_chat_id", default=None, help="Telegram chat id (or TELEGRAM_CHAT_ID)")


def config_from_args(args: argparse.Namespace) -> Any:
    """Defaults < ``--config`` file < ``--set`` < named flags."""
    from dqlray.config import flat_to_nested, load_config

    overrides: dict[str, dict[str, Any]] = {}
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected SECTION.FIELD=VALUE")
        key, raw = item.split("=", 1)
        nested = flat_to_nested({key: yaml.safe_load(raw)}, source="--set")
        for sec, vals in nested.items():
            overrides.setdefault(sec, {}).update(vals)
    for name, (sec, fld, _) in TRAIN_FLAGS.items():
        v = getattr(args, name, None)
        if v is not None:
            overrides.setdefault(sec, {})[fld] = v
    return load_config(args.config, overrides)


class _StopFlag:
    """Set by SIGUSR1/SIGTERM: the run checkpoints after the current episode and exits resumable."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self) -> bool:
        return self.signal is not None

    def install(self) -> None:
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum


def cmd_train(args: argparse.Namespace, *, report: bool = False) -> int:
    """Train one experiment, evaluate it once on the test split, save everything (and a report)."""
    from dqlray.notify import RunNotifier, get_notifier
    from dqlray.runinfo import check_folder
    from dqlray.verdict import message_parts
    from dqlray.workflow import run_experiment

    config = _walk_forward_restored(args, config_from_args(args))
    check_folder(config.train.results_dir, "--results_dir")
    if args.fold is not None and not config.data.walk_forward:
        raise ConfigError(f"--fold {args.fold}: only with --walk-forward N (or a walk-forward experiment to resume)")
    stop = _StopFlag()
    stop.install()
    notifier = RunNotifier(get_notifier(token=args.telegram_token, chat_id=args.telegram_chat_id),
                           config.train.experiment_name)
    try:
        if config.data.walk_forward:
            return _train_walk_forward(args, config, notifier, stop, report)
        outcome = run_experiment(config, resume=args.resume, notifier=notifier,
                                 progress=False if args.no_progress else None, should_stop=stop)
        if outcome.evaluation is None:
            notifier.time_limit()
            return EXIT_RESUMABLE
        image = None
        if report:
            image = _build_report(outcome.run_dir)
        ev = outcome.evaluation
        notifier.finished(final_reward=outcome.result.final.get("episode_return", float("nan")),
                          test_metrics={k: v["mean"] for k, v in ev["agent"]["summary"].items()},
                          model_path=ev.get("model_path"), image_path=image,
                          **message_parts(ev, ev.get("verdict")))
        return 0
    except BaseException as e:
        if not isinstance(e, DqlrayError):
            notifier.error(e)
        raise
    finally:
        notifier.close(deadline_s=10)


def _walk_forward_restored(args: argparse.Namespace, config: Any) -> Any:
    """A resumed walk-forward experiment keeps its number of folds when ``--walk-forward`` is not given again."""
    from dqlray.walkforward import WF_FILE
    from dqlray.workflow import run_dir_of

    wf = run_dir_of(config) / WF_FILE
    if args.resume and args.walk_forward is None and wf.exists():
        try:
            n = json.loads(wf.read_text())["config"]["data"]["walk_forward"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DqlrayError(f"{wf}: unreadable ({e})") from None
        return config.replace({"data": {"walk_forward": n}})
    return config


def _train_walk_forward(args: argparse.Namespace, config: Any, notifier: Any, stop: Any, report: bool) -> int:
    """``--walk-forward N``: every fold as its own run, stitched (:mod:`dqlray.walkforward`)."""
    from dqlray.verdict import message_parts
    from dqlray.walkforward import run_walk_forward

    outcome = run_walk_forward(config, resume=args.resume, only_fold=args.fold, notifier=notifier,
                               progress=False if args.no_progress else None, should_stop=stop)
    if outcome.stopped:
        notifier.time_limit()
        return EXIT_RESUMABLE
    s = outcome.summary
    if s is None:  # one fold of several (--fold), or not all finished yet
        return 0
    image = _build_report(outcome.exp_dir) if report else None
    notifier.finished(final_reward=None, test_metrics={k: v["mean"] for k, v in s["test"]["agent"]["summary"].items()},
                      model_path=None, image_path=image, **message_parts(s["test"], s.get("verdict")))
    return 0


def _build_report(run_dir: Any) -> str | None:
    """Write the run's HTML report; return the equity PNG path (None when the report could not be built)."""
    from dqlray.report import report_after_run

    return report_after_run(run_dir, warn=lambda line: print(line, file=sys.stderr))


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a finished run's checkpoint on its test split."""
    from dqlray.workflow import evaluate_run

    evaluate_run(args.run_dir)
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    """Write a synthetic OHLCV file."""
    from dqlray.data import save_ohlcv, synth_market

    if args.edge is None:
        if args.strength is not None:
            raise ConfigError("--strength needs --edge (the kind of edge to plant)")
        data = synth_market(args.bars, seed=args.seed, ar=args.ar, start=args.start, freq=args.freq)
        what = f"ar {args.ar}"
    else:
        from dqlray.planted import DEFAULT_STRENGTH, Edge, planted_market

        if args.ar != 0.0:
            raise ConfigError("--ar belongs to the regime/GARCH market; with --edge use --strength")
        strength = DEFAULT_STRENGTH.get(args.edge, 0.0) if args.strength is None else args.strength
        data = planted_market(args.bars, Edge(kind=args.edge, strength=strength), seed=args.seed, start=args.start,
                              freq=args.freq)
        what = f"edge {args.edge}, strength {strength:g}"
    save_ohlcv(data, args.out)
    print(f"wrote {args.out}: {len(data)} bars, seed {args.seed}, {what}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    """Validate a price file and print what was found."""
    import pandas as pd

    from dqlray.data import data_hash, load_ohlcv

    d = load_ohlcv(args.file)
    print(f"{d.source}: OK, {len(d)} bars from {pd.Timestamp(d.time[0])} to {pd.Timestamp(d.time[-1])}, "
          f"hash {data_hash(d)}{', adjusted close' if d.adj_close is not None else ''}")
    return 0


def cmd_data_sp500(args: argparse.Namespace) -> int:
    """Write the real S&P 500 daily bars bundled with ``arch`` (1999-2018)."""
    from dqlray.data import output_file, save_ohlcv, sp500

    out = output_file(args.out)
    data = sp500()
    save_ohlcv(data, out)
    print(f"wrote {args.out}: {len(data)} S&P 500 daily bars, 1999-01-04 to 2018-12-31 (from arch.data.sp500)")
    return 0


def cmd_data_shuffle(args: argparse.Namespace) -> int:
    """Write a null market: the file's days in a random order (no serial dependence left)."""
    from dqlray.data import load_ohlcv, output_file, save_ohlcv, shuffle_days

    out = output_file(args.out, not_input=args.file)
    data = shuffle_days(load_ohlcv(args.file), seed=args.seed)
    save_ohlcv(data, out)
    print(f"wrote {args.out}: {len(data)} bars of {args.file} with the days shuffled, seed {args.seed}")
    return 0


def cmd_baselines(args: argparse.Namespace) -> int:
    """Evaluate every baseline on one split of a file and print the metrics table."""
    from dqlray.baselines import make_baselines
    from dqlray.data import load_ohlcv
    from dqlray.evaluation import evaluate_policy
    from dqlray.parts import build_market
    from dqlray.workflow import HEADLINE, _fmt

    config = config_from_args(args)
    data = load_ohlcv(config.data.data_file)
    market = build_market(config, data)
    ec = config.env
    header = f"{'baseline':<16}" + "".join(f"{k:>14}" for k in HEADLINE)
    print(f"Baselines on the {args.part} split of {config.data.data_file} (costs {ec.fee_bps + ec.slippage_bps} bps)")
    print(header)
    print("-" * len(header))
    for name, pol in make_baselines(market, ec, seed=config.train.seed).items():
        m = evaluate_policy(pol, market, part=args.part, env=ec, name=name,
                            periods=config.train.periods_per_year).metrics[0]
        print(f"{name:<16}" + "".join(f"{_fmt(m[k], k):>14}" for k in HEADLINE))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``dqlray`` argument parser."""
    p = _Parser(prog="dqlray", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, helptext in (("train", "train one experiment and evaluate it on the test split"),
                           ("full-workflow", "train + evaluate + report")):
        sp = sub.add_parser(name, help=helptext)
        add_train_flags(sp)
        sp.set_defaults(func=lambda a, _r=(name == "full-workflow"): cmd_train(a, report=_r))
    sp = sub.add_parser("evaluate", help="evaluate a finished run's checkpoint on its test split")
    sp.add_argument("run_dir")
    sp.set_defaults(func=cmd_evaluate)
    sp = sub.add_parser("baselines", help="print the baselines' metrics on one split of a price file")
    add_train_flags(sp)
    sp.add_argument("--part", choices=("train", "val", "test"), default="test")
    sp.set_defaults(func=cmd_baselines)
    dp = sub.add_parser("data", help="price data tools")
    dsub = dp.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    sp = dsub.add_parser("synth", help="write a synthetic OHLCV market (regime switching, GARCH, fat tails)")
    sp.add_argument("--bars", type=int, default=2000)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--ar", type=float, default=0.0, help="plant AR(1) autocorrelation of returns (learnable)")
    sp.add_argument("--edge", choices=("linear", "trend", "interaction", "iid", "shuffled"), default=None,
                    help="instead: a market with a known planted edge (linear one-bar, 20-bar trend, or momentum "
                         "when calm / reversion when turbulent), or a null market (iid, shuffled days)")
    sp.add_argument("--strength", type=float, default=None, help="strength of the planted edge (default per edge)")
    sp.add_argument("--start", default="2000-01-03")
    sp.add_argument("--freq", default="B", help="pandas frequency: B (business days), h, 5min, ...")
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=cmd_data_synth)
    sp = dsub.add_parser("check", help="validate a price file")
    sp.add_argument("file")
    sp.set_defaults(func=cmd_data_check)
    sp = dsub.add_parser("sp500", help="write real S&P 500 daily bars, 1999-2018 (bundled with arch, offline)")
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=cmd_data_sp500)
    sp = dsub.add_parser("shuffle", help="write a null market: a file's days in a random order (issue 11)")
    sp.add_argument("file")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=cmd_data_shuffle)
    _add_optional_parsers(sub)
    return p


def _add_optional_parsers(sub: Any) -> None:
    """Subcommands that live in their own modules (sweeps, reports, notifications)."""
    from dqlray.notify.cli import add_notify_parser
    from dqlray.report.cli import add_report_parsers
    from dqlray.tuning.cli import add_consolidate_parser

    for add in (add_consolidate_parser, add_report_parsers, add_notify_parser):
        add(sub)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run a subcommand; one-line errors for user mistakes."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli("dqlray", lambda: int((a := build_parser().parse_args(argv)).func(a) or 0))


def run_cli(prog: str, body: Callable[[], int]) -> int:
    """Run a command body: user mistakes print one line naming ``prog`` and exit 2; Ctrl-C exits 130.

    The line carries one prefix: ``prog: error: message``, or for a misused flag the subcommand's name as argparse
    gives it (``dqlray train: error: argument --episodes: ...``).
    """
    try:
        return body()
    except (DqlrayError, FileNotFoundError) as e:
        print(f"{e.prog if isinstance(e, UsageError) else prog}: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", EXIT_USAGE)  # 74 when a write failed (disk full, read-only)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def train_single_main(argv: Sequence[str] | None = None) -> int:
    """``train_single.py``: the guide's single run (train, evaluate on test, report when available)."""
    return main(["full-workflow", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
