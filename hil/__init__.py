"""Emulated MCU behind a pty and the HIL pytest plugin. Not built yet: see issue 7."""
