"""dqlray: deep Q-learning trading agents, trained honestly and tuned at scale with Ray Tune.

``import dqlray`` registers the Gymnasium environment ``dqlray/Trading-v0`` (:class:`dqlray.env.TradingEnv`), as
Gymnasium users expect of a package that provides environments::

    import dqlray
    import gymnasium as gym
    from dqlray.data import synth_market

    env = gym.make("dqlray/Trading-v0", data=synth_market(2000, seed=0))  # or market=...: see TradingEnv
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

__version__ = "0.1.0"

ENV_ID = "dqlray/Trading-v0"
"""The Gymnasium id of :class:`dqlray.env.TradingEnv`."""


def register_env(gym: ModuleType) -> None:
    """Register :data:`ENV_ID` with the ``gymnasium`` module ``gym`` (again is a no-op)."""
    # The entry point is a string, so registering imports nothing of dqlray's: dqlray.env loads at gym.make.
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point="dqlray.env:TradingEnv")


class _RegisterWhenGymnasiumLoads:
    """Registers the environment as soon as Gymnasium is imported, in whichever order the two are imported.

    Importing Gymnasium (and NumPy with it) costs 0.15-0.4 s on our machines against under 1 ms for ``import
    dqlray`` itself (``python -X importtime``), and many uses of the package (``dqlray notify``, reports, errors) never
    need it; so rather than importing it here, this finder (a ``sys.meta_path`` entry: any object with ``find_spec``;
    ``importlib.abc`` alone would cost 30 ms) wraps Gymnasium's own import once and then removes itself.
    """

    def find_spec(self, name: str, path: object = None, target: ModuleType | None = None) -> object:
        """Gymnasium's usual spec, its loader wrapped to register the environment after the module has run."""
        if name != "gymnasium":
            return None
        sys.meta_path.remove(self)  # once only; and the search below must not find this finder again
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run_module(module)
            if module.__name__ == name:  # a loader may be shared with other modules (a zip importer)
                register_env(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if hasattr(sys.modules.get("gymnasium"), "registry"):
    register_env(sys.modules["gymnasium"])
elif not any(type(f).__name__ == _RegisterWhenGymnasiumLoads.__name__ for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenGymnasiumLoads())
