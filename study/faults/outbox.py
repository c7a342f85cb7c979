"""The MLflow outbox: what the tracking server did not take yet waits, in order, and the study goes on.

    class MlflowTracking(Outbox, Callback):       # study.tracking: sets self.uri, defines _apply(event)
        ...
        self._open_outbox(path)                    # <study>/mlflow_outbox.jsonl on a local storage, else None
        self._enqueue({"op": "result", ...})       # on Tune's loop: a file append, no network
        self.flush()                               # at the end: deliver what is queued -> all delivered?

Every event is kept in memory, and appended to `<study>/mlflow_outbox.jsonl` on a local storage;
a thread of its own delivers them in order through `_apply`. When the server does not answer, the
events wait and are tried again every RETRY_S; what is left when the study ends is delivered by
`--resume`. A full disk under the SQLite store stops the delivery and is raised on Tune's loop.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from study.faults.disk import disk_full

# The driver's MLflow client gives up fast: results it cannot deliver wait in the outbox instead of
# freezing the study (MLflow's default retries a call for about 2 minutes).
HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}
RETRY_S = 10.0  # while the server is unreachable, try again at most this often
OUTBOX = "mlflow_outbox.jsonl"  # in a local study folder: what was not delivered yet, in order
OUTBOX_LIMIT = 50_000  # queued events; past it, epoch results are dropped (a warning says so)


def unreachable(error: BaseException) -> bool:
    """Whether an MLflow client error says the server could not be reached (as opposed to a refusal)."""
    text = f"{type(error).__name__}: {error}"
    return isinstance(error, (ConnectionError, TimeoutError, OSError)) or any(
        w in text
        for w in (
            "API request to",
            "Max retries exceeded",
            "Connection refused",
            "ConnectionError",
            "Read timed out",
            "RemoteDisconnected",
            "503",
            "502",
            "504",
        )
    )


def outbox_path(local: Path | None) -> Path | None:
    """The outbox file of a local study folder; None on an object store (the outbox stays in memory)."""
    return local / OUTBOX if local is not None else None


class Outbox:
    """The delivery half of study.tracking.MlflowTracking: a queue of events, its file and its thread.
    The subclass sets `uri` (named in the unreachable line) and applies one event in `_apply`."""

    def _open_outbox(self, path: Path | None) -> None:
        for key, value in HTTP_SETTINGS.items():
            os.environ.setdefault(key, value)
        self.outbox_path = path
        self.queue: list[dict] = read_outbox(path)
        self._down_since: float | None = None  # when a delivery last failed (None: the server answers)
        self._last_try = 0.0
        self._dropped = 0
        self._threads()

    def _threads(self) -> None:
        # Delivery runs on a thread of its own, so that MLflow's writes, the trial's pictures and the
        # comparison never hold up Tune's loop (ASHA's decisions, the other trials' results). Tune's
        # loop only appends each event to the outbox (memory and file) and wakes the thread.
        self._queue_lock = threading.Lock()  # the queue and the outbox file change together
        self._send_lock = threading.Lock()  # one delivery at a time: the thread's or a flush
        self._wake = threading.Event()
        self._sender: threading.Thread | None = None
        self._error: BaseException | None = None  # what stopped the thread (a full disk), raised on the loop

    def __getstate__(self):  # Tune saves callbacks with the experiment; the thread is rebuilt
        return {
            k: v
            for k, v in self.__dict__.items()
            if k not in ("_queue_lock", "_send_lock", "_wake", "_sender", "_error")
        }

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._threads()

    def _apply(self, event: dict) -> None:
        raise NotImplementedError

    def _enqueue(self, event: dict) -> None:
        """Queue an event for MLflow (on Tune's loop: a file append, no network)."""
        self._raise_from_sender()
        if len(self.queue) >= OUTBOX_LIMIT and event["op"] == "result":
            self._dropped += 1
            if self._dropped == 1:
                print(
                    f"warning: MLflow has been unreachable for long: {OUTBOX_LIMIT} events are queued; epoch "
                    f"results past that are dropped (the checkpoints keep their metrics)",
                    flush=True,
                )
            return
        with self._queue_lock:
            self.queue.append(event)
            if self.outbox_path is not None:
                with open(self.outbox_path, "a") as f:
                    f.write(json.dumps(event) + "\n")
        if self._sender is None:
            self._sender = threading.Thread(target=self._send_in_background, name="mlflow-outbox", daemon=True)
            self._sender.start()
        self._wake.set()

    def _send_in_background(self) -> None:
        while True:
            self._wake.wait(timeout=RETRY_S if self._down_since is not None else None)
            self._wake.clear()
            try:
                self.deliver()
            except BaseException as e:  # noqa: BLE001 - a full disk: raised on Tune's loop (_enqueue, flush)
                self._error = e
                return

    def _raise_from_sender(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def flush(self) -> bool:
        """Deliver everything queued now, waiting for the thread's delivery in progress; one attempt
        even while the server has been unreachable. -> everything delivered."""
        self._raise_from_sender()
        return self.deliver(force=True)

    def deliver(self, force: bool = False) -> bool:
        """Send what is queued, in order, until the server fails to answer. -> everything delivered."""
        with self._send_lock:
            return self._deliver(force)

    def _deliver(self, force: bool) -> bool:
        if not self.queue:
            return True
        now = time.monotonic()
        if self._down_since is not None and not force and now - self._last_try < RETRY_S:
            return False
        self._last_try = now
        sent = 0
        while self.queue:
            try:
                self._apply(self.queue[0])
            except Exception as e:  # noqa: BLE001 - sorted below: unreachable waits, anything else is dropped
                if disk_full(e):  # the SQLite store's disk is full: kept in the outbox; the study ends (run_study)
                    raise
                if not unreachable(e):
                    print(
                        f"warning: MLflow refused {self.queue[0]['op']} of trial {self.queue[0].get('tid')}: "
                        f"{str(e)[:300]}; skipped",
                        flush=True,
                    )
                    with self._queue_lock:
                        self.queue.pop(0)
                    continue
                if self._down_since is None:
                    self._down_since = now
                print(
                    f"MLflow unreachable ({self.uri}), {len(self.queue)} results queued; the study goes on", flush=True
                )
                return False
            with self._queue_lock:
                self.queue.pop(0)
            sent += 1
        if self._down_since is not None:
            print(
                f"MLflow answers again: delivered {sent} queued results "
                f"(unreachable for {now - self._down_since:.0f} s)",
                flush=True,
            )
            self._down_since = None
        with self._queue_lock:
            if not self.queue and self.outbox_path is not None:  # an event queued meanwhile keeps the file
                self.outbox_path.unlink(missing_ok=True)
            return not self.queue


def read_outbox(path: Path | None) -> list[dict]:
    """The events an earlier session could not deliver (a line cut short by a kill is skipped)."""
    if path is None or not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events
