"""Open the MLflow UI on a study store, bound to 127.0.0.1 unless you ask otherwise.

    python -m dashboards.ui                                  # the default store: studies/mlflow.db
    python -m dashboards.ui --tracking-uri sqlite:///path/to/mlflow.db --port 5001
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the default store of studies run from this folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('studies/mlflow.db').resolve()}"


def missing_store(uri: str) -> bool:
    """A sqlite:/// store whose file does not exist (MLflow would quietly create an empty one)."""
    return uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists()


def ui_command(uri: str) -> str:
    """The shell command that opens this store in the MLflow UI, bound to loopback."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"{python_command()} -m mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def python_command() -> str:
    """This interpreter as the user would type it (`.venv/bin/python`): the venv need not be activated."""
    exe = os.path.abspath(sys.executable)
    rel = os.path.relpath(exe)
    return rel if not rel.startswith("..") else exe



def main(argv: list[str] | None = None, prog: str = "python -m dashboards.ui") -> int:
    p = argparse.ArgumentParser(prog=prog, description="Start the MLflow UI on a study store.")
    p.add_argument("--tracking-uri", default=None,
                   help="store to browse (default: MLFLOW_TRACKING_URI, else sqlite:///studies/mlflow.db)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000)
    args = p.parse_args(argv)
    uri = args.tracking_uri or default_tracking_uri()
    if missing_store(uri):
        print(f"error: no MLflow store at {uri}; run a study first (python -m study.run SPEC)", file=sys.stderr)
        return 2
    if uri.startswith(("http://", "https://")):
        print(f"{uri} is a tracking server already: open it in a browser")
        return 0
    # This interpreter's mlflow: `.venv/bin/python -m dashboards.ui` works without an activated venv.
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
    print(f"MLflow UI on http://{args.host}:{args.port}  (Ctrl-C to stop)\n  {' '.join(cmd)}", flush=True)
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
