"""``tune_main.py`` with the real trainable wrapped to crash once, for tests/test_sweep.py.

Usage: ``python tests/crash_once_sweep.py MARKER_DIR EPISODE [tune_main.py flags...]``. The first trial (a pack) to
report EPISODE raises right after reporting it (the marker file MARKER_DIR/failed records that it happened), so the
test can prove that a crashed pack is retried from its last checkpoint. The production trainable has no such hook.
"""

import os
import sys
from pathlib import Path


def crash_once(marker_dir: str, at: int):
    from dqlray.tuning.trainable import pack_trainable

    def trainable(config, *, data, base, settings):
        from ray import tune

        real = tune.report

        def report(metrics, *args, **kwargs):
            real(metrics, *args, **kwargs)
            if metrics.get("episodes") != at:
                return
            try:
                fd = os.open(Path(marker_dir) / "failed", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.close(fd)
            raise RuntimeError(f"injected failure at episode {at}")

        tune.report = report
        try:
            pack_trainable(config, data=data, base=base, settings=settings)
        finally:
            tune.report = real

    return trainable


if __name__ == "__main__":
    from dqlray.tuning.cli import tune_main

    sys.exit(tune_main(sys.argv[3:], trainable=crash_once(sys.argv[1], int(sys.argv[2]))))
