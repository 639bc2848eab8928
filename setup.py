"""The one thing pyproject.toml cannot say: whether to build the optional C intake path.

``TINYFED_BUILD_C_EXTENSION`` (as cbor2's ``CBOR2_BUILD_C_EXTENSION``): unset, build it if a compiler is at
hand and go on without it if not; ``1``, build it or fail (CI, so a test run cannot silently fall back to the
Python code); ``0``, build nothing: a pure-Python wheel, what a Pi installs (bench/pi_userland.py). The extras
smoke test installs what a user's pip builds here, with the extension. The extension is only ever a faster path
for the same answers (edge_runtime/wire/_cwire.c), so a gateway without it is slower, never different.
"""

from __future__ import annotations

import os

from setuptools import Extension, setup

choice = os.environ.get("TINYFED_BUILD_C_EXTENSION", "")
if choice not in ("", "0", "1"):
    raise SystemExit(f"TINYFED_BUILD_C_EXTENSION={choice!r}: expected 0, 1 or unset")
extensions = []
if choice != "0":
    extensions.append(
        Extension(
            "edge_runtime.wire._cwire",
            sources=["edge_runtime/wire/_cwire.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
            optional=choice != "1",
        )
    )
setup(ext_modules=extensions)
