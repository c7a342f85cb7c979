"""Studies: a YAML spec searched by Ray Tune + Optuna, each trial run by Ray Train, tracked in MLflow.

    python -m study.run search_spaces/quickstart.yaml        # or: landmark-study run ...

From Python:

    from study import load_spec, run_study
    spec = load_spec("search_spaces/quickstart.yaml", ["study.trials=2"])  # Spec; SpecError lists every problem
    result = run_study(spec)                  # StudyResult: .table (best first), .tracking_uri, .interrupted, ...
"""

from __future__ import annotations

import importlib

# The API is imported lazily (PEP 562): `import study` (which dashboards/ does for study.schema)
# stays instant; load_spec brings torch's config types in on first use, and run_study brings Ray
# (seconds) only when it is first asked for, as `python -m study.run` does after validating.
_EXPORTS = {
    "load_spec": "study.spec",  # (path, overrides=None, check_data=True) -> Spec
    "Spec": "study.spec",
    "SpecError": "study.spec",  # bad input: .problems, one line each, naming the file and YAML path
    "StudyError": "study.spec",  # a study that cannot start or resume as asked
    "run_study": "study.tuner",  # (spec, address=None, tracking_uri=None, resume=False, force=False, verbose=False, break_lock=False)
    "StudyResult": "study.tuner",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'study' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
