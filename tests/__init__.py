"""
chatd's tests, run by pytest and by trial.

Hypothesis, which the fuzz tests use, draws its examples from a seed derived
from each test, not at random, so that a run of ``make test`` (and CI) is
deterministic: a failure is found again by the next run. Set
``CHATD_FUZZ_RANDOM=1`` to let it explore new examples.
"""

import os

from hypothesis import settings

settings.register_profile("chatd", derandomize=True, database=None)
settings.register_profile("chatd-random", database=None)
settings.load_profile("chatd-random" if os.environ.get("CHATD_FUZZ_RANDOM") else "chatd")
