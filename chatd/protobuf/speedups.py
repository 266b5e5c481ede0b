"""
Which implementation of the protobuf chat's hot path this process uses.

C{chatd.protobuf._speedups} is a small C extension (C{_speedups.c}) that
frames requests, recognises simple messages and encodes deliveries; every
function in it has a pure-Python twin in L{chatd.protobuf.framing}, which is
the reference. C{pip install} builds it with the machine's C compiler; when
it could not be built, chatd runs on the pure-Python path, as fast as before.

The environment variable C{CHATD_SPEEDUPS} chooses:

  - C{auto} (or unset): the compiled module when it is there;
  - C{off}: the pure-Python path, even when the module is there;
  - C{required}: the compiled module, or fail at import (the test run that
    must exercise it sets this, so that a failed build cannot pass
    silently).

docs/performance.md ("The compiled hot path") is the user's description.
"""

from __future__ import annotations

import os

ENVIRONMENT = "CHATD_SPEEDUPS"
CHOICES = ("auto", "off", "required")

#: The compiled module, or C{None} on the pure-Python path.
compiled = None
#: Why the pure-Python path is used (C{None} when compiled).
reason: str | None = None

_choice = os.environ.get(ENVIRONMENT, "auto").strip().lower() or "auto"
if _choice not in CHOICES:
    raise ImportError(
        f"{ENVIRONMENT}={_choice!r}: expected one of {', '.join(CHOICES)}"
    )
if _choice == "off":
    reason = f"{ENVIRONMENT}=off"
else:
    try:
        from chatd.protobuf import _speedups as compiled  # type: ignore[no-redef]
    except ImportError as e:
        if _choice == "required":
            raise ImportError(
                f"{ENVIRONMENT}=required, but the compiled hot path"
                f" (chatd.protobuf._speedups) cannot be imported: {e}"
            ) from e
        reason = f"chatd.protobuf._speedups is not built ({e})"


def describe() -> str:
    """One line for the log: which path, and why."""
    if compiled is not None:
        return "compiled (chatd.protobuf._speedups)"
    return f"pure Python: {reason}"
