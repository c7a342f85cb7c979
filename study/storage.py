"""Where a study keeps its state, and what a resume checks: `<study.storage>/<study.name>/`
holds `study.json` (the resolved spec it started with), `tune/` (Tune's experiment state) and
`train/` (each trial's Train run and checkpoints).

    storage = StudyStorage(spec)
    storage.write(SNAPSHOT, json.dumps(...))
    check_unchanged(spec, storage, force=False)   # on --resume: StudyError if the spec was edited

study.storage is a local folder (relative to the working directory) or a URI that pyarrow
understands (file://, s3://, gs://, ...); on a multi-node cluster it must be shared by all nodes.
An s3:// store takes its endpoint and credentials from the usual AWS variables of each process
(AWS_ENDPOINT_URL for a server that is not AWS, AWS_ACCESS_KEY_ID, ...), never from the spec.
"""

from __future__ import annotations

import json
from pathlib import Path

from study.spec import Spec, StudyError
from trainables.checkpoint import filesystem
from trainables.config import flatten

SNAPSHOT = "study.json"  # the resolved spec a study started with, beside its Tune state


class StudyStorage:
    """The study's folder or URI, read and written through pyarrow (local, file://, s3://, ...)."""

    def __init__(self, spec: Spec):
        self.uri = spec.location
        self.local = None if "://" in self.uri else Path(self.uri)
        self.fs, self.path = filesystem(self.uri)

    @property
    def tune(self) -> str:
        return f"{self.uri}/tune"

    @property
    def train(self) -> str:
        return f"{self.uri}/train"

    def read(self, name: str) -> str | None:
        try:
            with self.fs.open_input_stream(f"{self.path}/{name}") as f:
                return f.read().decode()
        except FileNotFoundError:
            return None

    def write(self, name: str, text: str) -> None:
        self.fs.create_dir(self.path, recursive=True)
        with self.fs.open_output_stream(f"{self.path}/{name}") as f:
            f.write(text.encode())


def check_unchanged(spec: Spec, storage: StudyStorage, force: bool) -> None:
    """Refuse to resume with an edited spec (or, with force, say what does and does not apply)."""
    saved = storage.read(SNAPSHOT)
    if saved is None:
        print(f"warning: {storage.uri} has no {SNAPSHOT}; cannot check the spec against the one it started with")
        return
    old = json.loads(saved)["resolved"]
    old.get("study", {}).setdefault("repeats", 1)  # a study started before study.repeats existed
    new = spec.resolved()
    changes = spec_diff(old, new)
    if not changes:
        return
    lines = "\n".join(f"    {c}" for c in changes)
    if not force:
        raise StudyError(
            f"the spec of study {spec.study.name!r} changed since it started ({storage.uri}/{SNAPSHOT}):\n{lines}\n"
            f"  resume with the original spec, or add --force to resume anyway"
        )
    kept = [c for c in changes if c.split(".")[0] in ("study", "space")]
    print(f"warning: resuming with an edited spec (--force):\n{lines}", flush=True)
    if kept:
        print(
            "  study: and space: changes do not apply: the saved search keeps its objectives, sampler and "
            "space; base: and resources: changes apply to the trials still to run",
            flush=True,
        )
    # What the study runs with from now on: the new base and resources, the original search.
    storage.write(
        SNAPSHOT,
        json.dumps(
            {"source": spec.source, "resolved": {**new, "study": old["study"], "space": old["space"]}}, indent=1
        ),
    )


def spec_diff(old: dict, new: dict) -> list[str]:
    """What changed between two `Spec.resolved()` dicts, one `path: old -> new` line per field."""

    def lines(spec: dict) -> dict:
        # a space entry is one line ("loguniform: [0.0001, 0.01]"), not one per distribution key
        space = {
            f"space.{path}": " ".join(f"{k}: {v}" for k, v in dist.items())
            for path, dist in spec.get("space", {}).items()
        }
        # an empty mapping (resources.custom) adds no line
        return {**flatten({k: v for k, v in spec.items() if k != "space"}), **space}

    a, b = lines(old), lines(new)
    out = []
    for key in dict.fromkeys([*a, *b]):
        if a.get(key, "(absent)") != b.get(key, "(absent)"):
            out.append(f"{key}: {a.get(key, '(absent)')} -> {b.get(key, '(absent)')}")
    return out
