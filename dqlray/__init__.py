"""dqlray: deep Q-learning trading agents, trained honestly and tuned at scale with Ray Tune."""

__version__ = "0.1.0"
