"""The trial: plain PyTorch. `fit(config, report)` trains one recipe and reports per epoch.

    python -c "from trainables import TrialConfig, fit; fit(TrialConfig(), lambda m, c: print(m))"
"""

from trainables.config import ConfigError, TrialConfig, flatten
from trainables.fit import config_problems, fit

__all__ = ["ConfigError", "TrialConfig", "config_problems", "fit", "flatten"]
