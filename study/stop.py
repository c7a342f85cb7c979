"""SIGTERM and SIGHUP stop a study the way Ctrl-C does: gracefully, with the state saved for --resume.

Batch systems and orchestrators stop a job with SIGTERM and follow with SIGKILL after a grace
period (SLURM's KillWait and Kubernetes' terminationGracePeriodSeconds: 30 s by default); a closed
terminal sends SIGHUP. Without this, Ray's own C++ handler, installed by ray.init, aborts the driver
(exit 134, a stack dump) before Tune can save anything.

    stop = GracefulStop().install()     # after ray.init: ours replaces Ray's handler
    try:
        tuner.fit()                     # a first signal: Tune's own graceful stop (its SIGUSR1 path)
    finally:
        stop.uninstall()
    stop.received                       # signal.SIGTERM, signal.SIGHUP or None

A second signal during the stop ends the process at once (exit 128 + signal, one line, no traceback),
as a second Ctrl-C does.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from study.faults.quiet import quiet_tunes_stop

SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(BaseException):
    """A stop signal arrived before Tune was running: nothing to save, the study just ends."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


class GracefulStop:
    def __init__(self):
        self.received: signal.Signals | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():  # signal.signal works there only
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def uninstall(self) -> None:
        for s, handler in self._previous.items():
            # None: a handler installed outside Python (Ray's, which would abort): the default instead
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            print(f"\n{name} again: stopping at once; the state saved so far is kept", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.received = signal.Signals(signum)
        tune_stop = signal.getsignal(signal.SIGUSR1)  # Tune's handler while Tuner.fit runs
        if not callable(tune_stop):
            raise Stopped(signum)
        print(
            f"\n{name} received: stopping the study (trials stop at their last checkpoint, the state is saved; "
            f"a second signal ends it at once)",
            file=sys.stderr,
            flush=True,
        )
        quiet_tunes_stop()  # Tune's words speak of Ctrl-C and Tuner.restore; the study prints its --resume line
        tune_stop(signal.SIGUSR1, frame)
