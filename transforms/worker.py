"""Settings of the Python process that runs the job's steps (a Beam worker, or the replay).

The job allocates many small, short-lived objects per element (parsed records, state bytes,
lists of floats) while holding a large, long-lived heap (Beam's and numpy's modules, the runner's
state caches). CPython's default collector then runs a young collection every 700 allocations and,
every so often, a full one that walks the whole heap: measured on ``benchmarks/bench_pipeline.py``'s
streaming run, 1.9 s collecting (0.7 s after). ``tune_garbage_collection`` keeps the cycle collector on, so
memory stays bounded, but moves what exists at start-up (modules, the pipeline's objects) out of its
scans, and collects the young generation every ``YOUNG_THRESHOLD`` allocations instead.
"""

import gc
import threading

# Young-generation allocations between collections (CPython's default: 700). At most this many
# objects wait for a collection; measured in the README ("Garbage collection").
YOUNG_THRESHOLD = 50_000

_lock = threading.Lock()
_tuned = False


def tune_garbage_collection() -> bool:
    """Apply the settings above, once per process (later calls do nothing); True the first time.

    Leaves a process whose collector is disabled, or already tuned by its owner (a young threshold
    other than CPython's default), as it is."""
    global _tuned
    with _lock:
        if _tuned:
            return False
        _tuned = True
        young, middle, old = gc.get_threshold()
        if not gc.isenabled() or young != 700:
            return False
        gc.collect()
        gc.freeze()  # start-up objects live as long as the process: stop scanning them
        gc.set_threshold(YOUNG_THRESHOLD, middle, old)
        return True
