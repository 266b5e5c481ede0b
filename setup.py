"""
The build of chatd's one C extension, the protobuf chat's hot path
(chatd/protobuf/_speedups.c); everything else is in setup.cfg.

The extension is optional: when the machine cannot compile it, the install
goes on and chatd runs on the pure-Python path (chatd/protobuf/speedups.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "chatd.protobuf._speedups",
            ["chatd/protobuf/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror=implicit-function-declaration"],
        )
    ]
)
