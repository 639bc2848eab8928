"""Serial protocol and MCU <-> MQTT bridge (issue 6, in progress).

Built: ``framing`` (COBS, CRC-32, header) and ``link`` (stop-and-wait ARQ
over any pyserial port). Still to come: the session (HELLO, model transfer
with resume, TRAIN/UPDATE), the host driver and ``tinyfed bridge run``.
"""
