"""Hardware-in-the-loop: the emulated board behind a real pty, fault injection, and the pytest plugin.

``board`` (the reference firmware), ``pty_port`` (the paced pty end),
``flash`` (A/B slots, progress, residual), ``memory`` (the RAM budget),
``faults``, ``pytest_plugin`` (``dut``, ``hil_board``, ``--hil-port``),
``cli`` (``tinyfed hil emulate``). See ``docs/hil.md``.
"""
