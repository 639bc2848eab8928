"""tinyfed's device side and shared core.

Nothing here imports ``gateway``, ``firmware_bridge`` or ``hil``: a device
installs only this package and one interpreter backend.
"""

__version__ = "0.1.0"
