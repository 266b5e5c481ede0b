"""
Loaded into the soaked chatd, and only there: soak/run.py puts this directory
first on the server's PYTHONPATH and names a file in CHATD_SOAK_CENSUS.

On SIGUSR2 the server collects its garbage and writes a census of its live
objects (how many of each type) to that file, so the soak can tell objects
that outlive their connections from memory the allocator merely keeps.
chatd's own code is not changed.

The soak may first write a mode into the file of the same name plus
C{.mode}: C{collect} (the default) collects and turns the collector on;
C{off} collects, then turns the collector off; C{uncollected} counts without
collecting, so that what only the collector would free (reference cycles) is
still counted.
"""

import os
import signal

_PATH = os.environ.get("CHATD_SOAK_CENSUS")


def _census(signum, frame) -> None:
    import collections
    import gc
    import json

    try:
        with open(_PATH + ".mode") as f:
            mode = f.read().strip()
    except OSError:
        mode = "collect"
    if mode != "uncollected":
        gc.collect()
        if mode == "off":
            gc.disable()
        else:
            gc.enable()
    counts = collections.Counter(
        f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects()
    )
    temporary = _PATH + ".tmp"
    with open(temporary, "w") as f:
        json.dump(counts, f)
    os.replace(temporary, _PATH)


if _PATH:
    signal.signal(signal.SIGUSR2, _census)
