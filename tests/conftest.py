"""
pytest only: fail fast when Twisted thread pools are still running once the
tests are done. Their threads are not daemons, so the interpreter would wait
for them forever and `make test` would hang after its summary; instead the
run ends with an error naming them. And begin Twisted's logging, as twistd
and trial do.
"""

import os
import sys
import threading
import warnings

_leftover: list[str] = []


def pytest_sessionfinish(session, exitstatus):
    _leftover.extend(
        t.name
        for t in threading.enumerate()
        if t.name.startswith("PoolThread-") and t.is_alive()
    )


def pytest_unconfigure(config):
    if _leftover:
        sys.stdout.write(f"\nFAILED: thread pools still running after the tests: {_leftover}\n")
        sys.stdout.flush()
        os._exit(1)


def pytest_configure(config):
    # Until logging begins, Twisted keeps the last 65536 log events, and
    # through each event's log_source the connection that logged it: twistd
    # and trial begin logging, pytest does not. Begin it here, to nowhere
    # (pytest shows no Twisted log), so that the tests of what a closed
    # connection leaves behind (tests/test_freed.py) see the server as it
    # runs. Python's warnings stay pytest's.
    from twisted.logger import globalLogBeginner

    showwarning = warnings.showwarning
    globalLogBeginner.beginLoggingTo([], discardBuffer=True, redirectStandardIO=False)
    warnings.showwarning = showwarning
