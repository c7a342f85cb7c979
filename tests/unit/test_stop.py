"""study.stop: SIGTERM and SIGHUP hand over to Tune's graceful stop while a study runs, end it at once
on a second signal, and stop a study that has not reached Tune yet. Each case runs in a subprocess
that signals itself (the study's real stop, with Ray and Tune, is tests/integration/test_resume.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("sig, status", [("SIGTERM", 143), ("SIGHUP", 129)])
def test_a_first_signal_asks_tune_to_stop_and_a_second_ends_at_once(sig, status):
    run = _run(f"""
        import os, signal, time
        from study.stop import GracefulStop
        asked = []
        signal.signal(signal.SIGUSR1, lambda s, f: asked.append(s))  # Tune's handler, while Tuner.fit runs
        stop = GracefulStop().install()
        os.kill(os.getpid(), signal.{sig})
        time.sleep(0.5)
        print("first:", stop.received.name, asked == [signal.SIGUSR1], flush=True)
        import logging
        tune = logging.getLogger("ray.tune.tune")  # Tune's words for its stop name Tuner.restore, not --resume
        tune.warning("Experiment has been interrupted, but the most recent state was saved.\\nResume experiment with: Tuner.restore(...)")
        tune.warning("other warnings stay")
        os.kill(os.getpid(), signal.{sig})
        time.sleep(10)
        print("still running", flush=True)
        """)
    assert run.returncode == status, run.stdout + run.stderr
    assert run.stdout.splitlines() == ["first: " + sig + " True"]
    assert f"{sig} received: stopping the study" in run.stderr
    assert f"{sig} again: stopping at once" in run.stderr and "Traceback" not in run.stderr
    assert "Tuner.restore" not in run.stderr and "other warnings stay" in run.stderr


def test_a_signal_before_tune_runs_stops_the_study_and_uninstall_restores_the_default():
    run = _run("""
        import os, signal
        from study.stop import GracefulStop, Stopped
        stop = GracefulStop().install()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except Stopped as e:
            print("stopped", e.signum == signal.SIGTERM, stop.received.name)
        stop.uninstall()
        print(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, signal.getsignal(signal.SIGHUP) == signal.SIG_DFL)
        """)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["stopped True SIGTERM", "True True"]
