"""The versions of the stack that a study runs on, as pip resolved them.

    python -m study.versions      # one line a package: what .ci/run prints before the tests

The same list goes into each study run's environment.json and its `version.*` tags (study.tracking).
"""

from __future__ import annotations

import sys
from importlib import metadata

# The stack, the first five also tagged on each study run. A release within pyproject's ranges that
# breaks a test is found by comparing this list with the versions the suite last passed with (README, Install).
PACKAGES = (
    "torch",
    "torchvision",
    "ray",
    "optuna",
    "mlflow",
    "numpy",
    "pandas",
    "pyarrow",
    "plotly",
    "scipy",
    "scikit-learn",
    "matplotlib",
    "pillow",
    "pyyaml",
    "landmark-study",
)


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """{name: installed version} for each of `names` that is installed."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def main() -> None:
    found = package_versions()
    print(f"python {sys.version.split()[0]}; " + ", ".join(f"{k} {v}" for k, v in found.items()), flush=True)


if __name__ == "__main__":
    main()
