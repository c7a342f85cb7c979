"""A study spec: YAML -> typed, validated `Spec`, with every problem reported at once.

    spec = load_spec("search_spaces/quickstart.yaml", overrides=["study.trials=8"])

The model (the dataclasses, names and errors) is study.spec.model; reading the YAML, overrides and
sections is study.spec.loading; the checks that only report are study.spec.checks, and the steps
that complete a spec (auto early stopping, the checkpoint metric) study.spec.resolve. This module
is the entry point callers import.
"""

from __future__ import annotations

from study.spec.loading import load_spec
from study.spec.model import (
    NAME,
    SEED,
    Resources,
    Scheduler,
    Spec,
    SpecError,
    StudyError,
    StudyObjective,
    StudySection,
    trainer_values,
)

__all__ = [
    "NAME",
    "SEED",
    "Resources",
    "Scheduler",
    "Spec",
    "SpecError",
    "StudyError",
    "StudyObjective",
    "StudySection",
    "load_spec",
    "trainer_values",
]


def __getattr__(name: str):
    # Studies saved before the rename pickled `study.spec.Objective` (Tune keeps the callbacks and the
    # searcher with the experiment): --resume must still find the class.
    if name == "Objective":
        return StudyObjective
    raise AttributeError(f"module 'study.spec' has no attribute {name!r}")
