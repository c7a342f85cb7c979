"""A problem with a config or a data file, as a value (a leaf module: everything may import it)."""

from __future__ import annotations


class Problem(str):
    """One thing wrong with a config, as a value: `path`, `message` and `kind`.

    It is also the line a user reads (`str(p) == f"{p.path}: {p.message}"`), so lists of problems
    print, join and compare as text. `kind` tells a dry run which problems only say that a file
    this machine lacks (a dataset, pretrained weights) is missing, and which are only notes that
    refuse nothing; nothing matches on wording.

        Problem("data.root", "/x: dataset root does not exist", Problem.MISSING)
        Problem("data.root", "/x: 2 landmarks in 1 .pts file lie outside their image ...", Problem.NOTE)
    """

    INVALID = "invalid"  # the config is wrong
    MISSING = "missing"  # a file the config names is not on this machine (a dry run tolerates it)
    NOTE = "note"  # worth knowing, yet nothing is wrong: printed as `note:`, never refused (faces cut by the frame)

    path: str
    message: str
    kind: str

    def __new__(cls, path: str, message: str, kind: str = INVALID) -> "Problem":
        self = super().__new__(cls, f"{path}: {message}" if path else message)
        self.path, self.message, self.kind = path, message, kind
        return self

    def __reduce__(self):  # keep path/message/kind through pickling (a str subclass would lose them)
        return (Problem, (self.path, self.message, self.kind))

    @classmethod
    def of(cls, p: "str | Problem") -> "Problem":
        """A problem from a `path: message` line (a Problem is returned as it is)."""
        if isinstance(p, Problem):
            return p
        path, _, message = p.partition(": ")
        return cls(path, message) if message else cls("", p)

    def under(self, path: str) -> "Problem":
        """This problem reported under another key: `data.root: <this line>`."""
        return Problem(path, str(self), self.kind)

    def prefixed(self, prefix: str) -> "Problem":
        """The same problem with its path prefixed: `base.` + `data.root`."""
        return Problem(f"{prefix}{self.path}", self.message, self.kind)

    def renamed(self, path: str) -> "Problem":
        """The same message under another path (a check of model.weights reused for distill.teacher)."""
        return Problem(path, self.message, self.kind)
