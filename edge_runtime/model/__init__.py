"""Models: reading, writing and patching .tflite files, the graph they hold, the interpreter backends.

The ``tflite`` schema package is made lazy here, before any module of this package imports it
(``tflite_schema``: a device agent would otherwise hold all 186 generated modules, about 3 MiB).
"""

from .tflite_schema import install as _install_tflite_schema

_install_tflite_schema()
