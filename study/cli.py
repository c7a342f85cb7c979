"""`landmark-study`, the console command pyproject installs: one name for the four command lines.

    landmark-study run SPEC [options]         = python -m study.run SPEC [options]
    landmark-study validate SPEC [--set ...]  = python -m study.run SPEC --dry-run [--set ...]
    landmark-study pareto STUDY [options]     = python -m dashboards.pareto STUDY [options]
    landmark-study ui [options]               = python -m dashboards.ui [options]

Each subcommand hands the rest of the command line to that module's `main(argv, prog)`, so there
is one implementation and the `python -m` forms stay what they were. A module is imported only
when its subcommand runs: `landmark-study --help` starts no torch, Ray or MLflow.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

PROG = "landmark-study"
EXIT_BAD_INPUT = 2


@dataclass(frozen=True)
class Command:
    module: str  # whose main(argv, prog) runs it
    args: tuple[str, ...]  # put after the user's first argument (the spec)
    synopsis: str
    summary: str

    def same_as(self) -> str:
        """The `python -m` command line this one runs."""
        first, _, rest = self.synopsis.partition(" ")
        return (
            " ".join(["python -m", self.module, first, *self.args, rest])
            if first.isupper()
            else " ".join(["python -m", self.module, self.synopsis])
        )


COMMANDS = {
    "run": Command(
        "study.run",
        (),
        "SPEC [options]",
        "validate a spec, search it on Ray (a local one or --address), record it in MLflow",
    ),
    "validate": Command(
        "study.run",
        ("--dry-run",),
        "SPEC [--set path=value ...]",
        "check a spec and print the resolved study and its first trials; starts nothing",
    ),
    "pareto": Command(
        "dashboards.pareto",
        (),
        "STUDY [--tracking-uri URI]",
        "recompute a study's comparison from MLflow and print its Pareto front",
    ),
    "ui": Command(
        "dashboards.ui",
        (),
        "[--tracking-uri URI] [--port N]",
        "open the MLflow UI on a study store (127.0.0.1; Ctrl-C stops it)",
    ),
}


def usage() -> str:
    lines = [
        f"usage: {PROG} COMMAND [ARGS ...]",
        "",
        "Hyperparameter studies for anatomical landmark detection (Ray Tune + Optuna + Ray Train, in MLflow).",
        "",
        "commands:",
    ]
    for name, c in COMMANDS.items():
        lines += [f"  {name} {c.synopsis}", f"      {c.summary}", f"      = {c.same_as()}"]
    lines += ["", f"`{PROG} COMMAND --help` lists a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else EXIT_BAD_INPUT
    name, rest = argv[0], argv[1:]
    command = COMMANDS.get(name)
    if command is None:
        print(
            f"error: unknown command {name!r}; choose one of {', '.join(COMMANDS)} "
            f"(`{PROG} --help` says what each does)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    module = importlib.import_module(command.module)
    return module.main([*rest[:1], *command.args, *rest[1:]], prog=f"{PROG} {name}")


if __name__ == "__main__":
    sys.exit(main())
