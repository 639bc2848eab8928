"""The ``tflite`` schema package with its generated modules loaded as they are first named.

``import tflite`` runs a generated ``__init__`` that does ``from tflite.X import *`` for all 186 schema
modules: about 3 MiB of Python objects in every process that reads a model, a device agent's included,
which uses some thirty of them. :func:`install` (run by ``edge_runtime.model``'s ``__init__``, so before
any of its modules says ``import tflite``) puts an empty package of the same name and path in
``sys.modules``; a name asked of it (``tflite.Model``, ``tflite.Conv2DOptionsStart``) loads the one
module whose name begins it, and binds what that module's star import would, exactly as the real
``__init__`` does. A name no single module explains (``tflite.__version__``, an unprefixed helper)
runs the real ``__init__`` into the package, after which it is the package it always was.
``import tflite.X`` from the generated code itself binds the same way. When ``tflite`` is already
imported (whole), it is left alone.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading
import types
from typing import Any

NAME = "tflite"
_lock = threading.RLock()


def _star(module: types.ModuleType) -> dict[str, Any]:
    """What ``from module import *`` binds: its public names (the generated modules declare no ``__all__``)."""
    return {k: v for k, v in vars(module).items() if not k.startswith("_")}


class LazySchema(types.ModuleType):
    """The ``tflite`` package, its submodules imported on first use; see the module docstring."""

    _loaded_whole = False  # the real __init__ has started: submodules bind as its star imports decide
    _whole_done = False
    _modules: tuple[str, ...] = ()  # the schema modules' names, longest first

    def __setattr__(self, name: str, value: Any) -> None:
        # The import system binds a newly imported submodule on its package: the real __init__'s star import
        # then rebinds the name to the module's class of that name, and so does this. While the real __init__
        # runs (another thread asked for a name no module explains), only that class: the star imports bind the
        # rest in the __init__'s order, which decides the unprefixed names several modules define (Start, End).
        if isinstance(value, types.ModuleType) and value.__name__ == f"{NAME}.{name}":
            if not self._loaded_whole:
                vars(self).update(_star(value))
                return
            value = getattr(value, name, value)
        super().__setattr__(name, value)

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("__"):
            module = next((m for m in self._modules if name.startswith(m)), None)
            if module is not None:
                loaded = importlib.import_module(f"{NAME}.{module}")
                if name not in vars(self) and not self._loaded_whole and hasattr(loaded, name):
                    # Imported by another thread that has not bound it on the package yet: bind it here.
                    vars(self).update(_star(loaded))
                if name in vars(self):
                    return vars(self)[name]
        self._load_whole()
        try:
            return vars(self)[name]
        except KeyError:
            raise AttributeError(f"module {NAME!r} has no attribute {name!r}") from None

    def _load_whole(self) -> None:
        with _lock:  # held to the end: another thread asking meanwhile waits for the whole package
            if self._whole_done:
                return
            types.ModuleType.__setattr__(self, "_loaded_whole", True)
            assert self.__file__ is not None
            with open(self.__file__, encoding="utf-8") as f:
                code = compile(f.read(), self.__file__, "exec")
            exec(code, vars(self))  # the generated __init__, as `import tflite` would have run it
            types.ModuleType.__setattr__(self, "_whole_done", True)


def install() -> None:
    """Put the lazy ``tflite`` package in ``sys.modules``, unless ``tflite`` is imported already or not installed."""
    with _lock:
        if NAME in sys.modules:
            return
        spec = importlib.util.find_spec(NAME)
        if spec is None or spec.origin is None or not spec.submodule_search_locations:
            return  # not installed: `import tflite` fails as it would have
        folder = next(iter(spec.submodule_search_locations))
        names = [f[:-3] for f in os.listdir(folder) if f.endswith(".py") and f[0].isupper()]
        package = LazySchema(NAME)
        types.ModuleType.__setattr__(package, "_modules", tuple(sorted(names, key=len, reverse=True)))
        for key, value in {"__spec__": spec, "__file__": spec.origin, "__path__": list(spec.submodule_search_locations),
                           "__loader__": spec.loader, "__package__": NAME}.items():  # fmt: skip
            types.ModuleType.__setattr__(package, key, value)
        sys.modules[NAME] = package
