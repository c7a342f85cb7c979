"""The trial: plain PyTorch. `fit(config, report)` trains one recipe and reports per epoch.

python -c "from trainables import TrialConfig, fit; fit(TrialConfig(), lambda m, c: print(m))"
"""

from trainables.config import ConfigError, TrialConfig, flatten

__all__ = ["ConfigError", "TrialConfig", "config_problems", "fit", "flatten"]


def __getattr__(name: str):
    # fit pulls in torch (~3 s); the config and the spec checker should not pay for it up front.
    if name in ("fit", "config_problems"):
        import importlib

        return getattr(importlib.import_module("trainables.trainer" if name == "fit" else "trainables.registry"), name)
    raise AttributeError(f"module 'trainables' has no attribute {name!r}")
