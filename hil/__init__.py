"""Emulated MCU behind a pty and the HIL pytest plugin (issue 7, in progress).

Built: ``pty_port`` (the board's end of a real pty, paced at a baud rate,
with bit errors, dropped bytes and a slow clock) and ``flash`` (A/B model
slots and a residual area in a file, safe against power loss at any byte).
Still to come: the emulated firmware (TFLite Micro, training), fault scenarios,
``tinyfed hil emulate`` and the pytest plugin.
"""
