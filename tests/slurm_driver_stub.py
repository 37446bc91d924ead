"""TEST HELPER, not part of dqlray: a tiny stand-in for ``tune_main.py`` used by tests/test_slurm.py.

It honours the driver contract of cluster/slurm_ray_head.sh: ``--address HOST:PORT``,
``--experiment-name``, ``--storage-path``, ``--resume``; exit 0 when the sweep completed, 75 when
SIGUSR1/SIGINT stopped it with the experiment state saved (resumable), 2 on usage errors, 1 on
other failures. Unknown arguments are ignored. Each trial sleeps ``--sleep`` seconds per
iteration and reports ``env_steps``; each trial start is appended to ``starts.log`` in the
experiment directory so tests can tell whether a finished trial was run again.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def trainable(config: dict) -> None:
    from ray import tune

    ctx = tune.get_context()
    with open(os.path.join(config["log_dir"], "starts.log"), "a") as f:
        f.write(f"{ctx.get_trial_id()} {os.environ.get('DQLRAY_RAY_TAG', '?')}\n")
    for i in range(config["iters"]):
        time.sleep(config["sleep"])
        tune.report({"env_steps": (i + 1) * 100, "score": config["x"] * (i + 1)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="test stand-in for tune_main.py")
    parser.add_argument("--address", required=True)
    parser.add_argument("--experiment-name", required=True)
    parser.add_argument("--storage-path", required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=0.2)
    args, _unknown = parser.parse_known_args(argv)

    import ray
    from ray import tune

    ray.init(address=args.address, logging_level="WARNING")
    exp_dir = os.path.join(os.path.abspath(args.storage_path), args.experiment_name)
    os.makedirs(exp_dir, exist_ok=True)
    if args.resume and tune.Tuner.can_restore(exp_dir):
        tuner = tune.Tuner.restore(exp_dir, trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={
                "x": tune.grid_search(list(range(args.num_samples))),
                "iters": args.iters,
                "sleep": args.sleep,
                "log_dir": exp_dir,
            },
            tune_config=tune.TuneConfig(metric="score", mode="max"),
            run_config=tune.RunConfig(
                name=args.experiment_name, storage_path=os.path.abspath(args.storage_path), verbose=1
            ),
        )
    results = tuner.fit()
    # After SIGUSR1, Tune saves the true trial states but then marks every trial TERMINATED in
    # the returned ResultGrid, so count the trials that reported their last iteration instead.
    finished = sum(
        1 for r in results if not r.error and (r.metrics or {}).get("training_iteration") == args.iters
    )
    print(f"stub driver: {finished} of {len(results)} trials finished, {results.num_errors} errored", flush=True)
    if results.num_errors:
        return 1
    return 0 if finished == len(results) else 75  # 75: stopped by a signal, state saved, resumable


if __name__ == "__main__":
    sys.exit(main())
