"""Progress lines for long local runs: records read and updates made, with rates, every few seconds.

Counts are per worker process (Beam Metrics are only readable when a run ends); with the
DirectRunner everything runs in this process, so the lines show the whole job.
"""

import sys
import threading
import time

_lock = threading.Lock()
_state = {"records": 0, "updates": 0, "started": None, "last": 0.0, "interval": 0.0}


def enable(interval_seconds: float) -> None:
    """Print a progress line at most every ``interval_seconds`` (0 disables)."""
    with _lock:
        _state.update(records=0, updates=0, started=None, last=0.0, interval=interval_seconds)


def record_read(n: int = 1) -> None:
    _tick("records", n)


def update_made(n: int = 1) -> None:
    _tick("updates", n)


def _tick(field: str, n: int) -> None:
    if not _state["interval"]:
        return
    with _lock:
        now = time.time()
        if _state["started"] is None:
            _state["started"] = now  # the first tick prints at once: the job has started reading
        _state[field] += n
        if now - _state["last"] < _state["interval"]:
            return
        _state["last"] = now
        elapsed = now - _state["started"]
        if elapsed < 1.0:
            line = "  progress: reading input..."
        else:
            line = (f"  progress: {_state['records']:,} records read ({_state['records'] / elapsed:,.0f}/s), "
                    f"{_state['updates']:,} model updates ({_state['updates'] / elapsed:,.0f}/s), {elapsed:.0f}s")
    print(line, file=sys.stderr, flush=True)
