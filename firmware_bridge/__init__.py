"""Serial protocol and the MCU <-> MQTT bridge.

``framing`` (COBS, CRC-32, header), ``link`` (stop-and-wait ARQ with fast
resend), ``messages`` (one CBOR message per frame), ``driver`` (the host
side of one board, typed errors), ``member`` and ``bridge`` (each board a
federation device on MQTT), ``cli`` (``tinyfed bridge run``). The spec is
``docs/serial-protocol.md``.
"""
