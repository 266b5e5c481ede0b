"""
The soak test of chatd (``make soak``, docs/soak.md): a real ``twistd chatd``
and hundreds of well-behaved and hostile clients on 127.0.0.1 for a bounded
time, then checks that the server still serves, forgot every name, and gave
its memory and file descriptors back.

Not part of the test suite: pytest collects ``tests/`` only, and nothing here
is named ``test_*``.
"""
