"""tinyfed's device side and shared core.

Nothing here imports ``gateway``, ``firmware_bridge``, ``hil`` or ``tinyfed``
(an import contract in pyproject.toml, checked by ``lint-imports``): a device
installs only this package and one interpreter backend. The roles' commands
reach ``tinyfed`` through entry points (``command.py``), not imports.
"""

__version__ = "0.1.0"
