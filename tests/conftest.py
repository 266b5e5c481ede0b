"""
pytest only: fail fast when Twisted thread pools are still running once the
tests are done. Their threads are not daemons, so the interpreter would wait
for them forever and `make test` would hang after its summary; instead the
run ends with an error naming them.
"""

import os
import sys
import threading

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
