"""The emulated board's flash: a file that survives resets, with the model in two slots (A/B).

A new model is written into the slot that is not active, then a small
commit record (sequence number, slot, size, sha256, CRC-32) is written to
the record area. At boot the board takes the valid record with the highest
sequence number whose slot's bytes still hash to its sha256. Power lost at
any byte of any write therefore leaves either the old model or the new one,
never a torn mix: a torn slot write leaves the old record pointing at the
untouched slot, and a torn record fails its CRC and is ignored.

Layout: ``[records: 2 x 64 B][progress: 64 B][slot A][slot B][scratch]``;
each record lives at a fixed place (record i for sequence numbers of
parity i), so writing one never overwrites the other. The progress record
says how many bytes of which model version sit in the inactive slot, so a
transfer cut by a reset resumes there; it is written after the bytes it
counts, so it never claims more than the slot holds, and a torn one fails
its CRC (the transfer then starts again from zero). A patch transfer
(docs/serial-protocol.md, "Patch transfer") keeps its patch bytes at the
end of the inactive slot, flagged in the progress record, and writes the
patched model at the slot's start. The scratch area holds
the error-feedback residual behind a length and CRC-32, with the same rule.

The file stands for the chip, so a write is flushed to the OS (it survives
the emulator process being killed) but not fsync'ed: surviving a power cut
of the *host* is not what is being emulated, and an fsync per 4 KiB chunk
would make the emulated flash slower than a real one.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.errors import TinyfedError

RECORD = struct.Struct("<4sIIB32s")  # magic, seq, size, slot, sha256; then CRC-32 of these bytes
RECORD_BYTES = 64
MAGIC = b"TFM1"
SCRATCH_HEADER = struct.Struct("<4sII")  # magic, length, crc32
PROGRESS = struct.Struct("<4s32sIIB")  # magic, model version, size, bytes written, slot; then CRC-32
PROGRESS_MAGIC = b"TFP1"
PATCH_FLAG = 0x10  # in the progress record's slot byte: the bytes counted are a patch's, not a model's


class BrownOut(RuntimeError, TinyfedError):
    """Power was lost during a flash write (injected); the board resets."""


class FlashFull(ValueError, TinyfedError):
    pass


@dataclass
class TransferProgress:
    version: bytes
    size: int
    written: int
    slot: int
    patch: bool = False  # a patch transfer: ``size`` and ``written`` count patch bytes, kept at the slot's end


@dataclass
class SlotRecord:
    seq: int
    size: int
    slot: int
    sha256: bytes


class Flash:
    def __init__(self, path: str | Path, size: int = 1 << 20, scratch: int = 64 * 1024) -> None:
        self.path = Path(path)
        self.size = size
        self.scratch_bytes = scratch
        self.slot_bytes = (size - 3 * RECORD_BYTES - scratch) // 2
        if self.slot_bytes <= 0:
            raise ValueError(f"{size} bytes of flash leave no room for two model slots")
        self.brown_out_at: int | None = None  # fail the next write after this many bytes (fault injection)
        self.bytes_written = 0
        if not self.path.exists():
            self.path.write_bytes(b"\xff" * size)  # erased flash reads as 0xFF
        elif self.path.stat().st_size != size:
            raise ValueError(
                f"{self.path} holds {self.path.stat().st_size} bytes of flash, not {size}: "
                "pass the size it was made with, or a new file (nothing was changed)"
            )

    # -- raw access -------------------------------------------------------------------------------------
    def _write(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > self.size:
            raise FlashFull(f"write of {len(data)} bytes at {offset} leaves the {self.size}-byte flash")
        cut = len(data)
        if self.brown_out_at is not None:
            cut = min(cut, self.brown_out_at)
            self.brown_out_at -= cut
        with open(self.path, "r+b") as f:
            f.seek(offset)
            f.write(data[:cut])
        self.bytes_written += cut
        if cut < len(data):
            self.brown_out_at = None
            raise BrownOut(f"power lost after {cut} of {len(data)} bytes at flash offset {offset}")

    def _read(self, offset: int, length: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    def _slot_offset(self, slot: int) -> int:
        return 3 * RECORD_BYTES + slot * self.slot_bytes

    # -- model slots ------------------------------------------------------------------------------------
    def _records(self) -> list[SlotRecord]:
        out = []
        for i in range(2):
            raw = self._read(i * RECORD_BYTES, RECORD.size + 4)
            body, (crc,) = raw[: RECORD.size], struct.unpack("<I", raw[RECORD.size :])
            if zlib.crc32(body) != crc:
                continue
            magic, seq, size, slot, digest = RECORD.unpack(body)
            if magic == MAGIC and slot in (0, 1) and size <= self.slot_bytes:
                out.append(SlotRecord(seq, size, slot, digest))
        return sorted(out, key=lambda r: r.seq, reverse=True)

    def active(self) -> SlotRecord | None:
        """The newest committed model whose bytes are intact: what the board boots."""
        for record in self._records():
            if hashlib.sha256(self._read(self._slot_offset(record.slot), record.size)).digest() == record.sha256:
                return record
        return None

    def model(self) -> bytes | None:
        record = self.active()
        return None if record is None else self._read(self._slot_offset(record.slot), record.size)

    def inactive_slot(self) -> int:
        record = self.active()
        return 0 if record is None else 1 - record.slot

    def write_slot(self, slot: int, offset: int, data: bytes) -> None:
        """Model bytes into the inactive slot (a transfer resumes at ``offset`` after a reset)."""
        if offset + len(data) > self.slot_bytes:
            raise FlashFull(f"model of {offset + len(data)} bytes does not fit a {self.slot_bytes}-byte slot")
        self._write(self._slot_offset(slot) + offset, data)

    def read_slot(self, slot: int, length: int) -> bytes:
        return self._read(self._slot_offset(slot), length)

    def commit(self, slot: int, size: int, sha256: bytes) -> SlotRecord:
        """Make ``slot`` the active model, if its bytes hash to ``sha256``; else raise ValueError."""
        if hashlib.sha256(self.read_slot(slot, size)).digest() != sha256:
            raise ValueError("slot contents do not match the announced sha256")
        newest = self._records()
        seq = (newest[0].seq + 1) if newest else 1
        body = RECORD.pack(MAGIC, seq, size, slot, sha256)
        record = body + struct.pack("<I", zlib.crc32(body))
        self._write((seq % 2) * RECORD_BYTES, record.ljust(RECORD_BYTES, b"\xff"))
        return SlotRecord(seq, size, slot, sha256)

    # -- transfer progress (resume after a reset) -------------------------------------------------------
    def save_progress(self, progress: TransferProgress) -> None:
        slot = progress.slot | (PATCH_FLAG if progress.patch else 0)
        body = PROGRESS.pack(PROGRESS_MAGIC, progress.version, progress.size, progress.written, slot)
        self._write(2 * RECORD_BYTES, body + struct.pack("<I", zlib.crc32(body)))

    def load_progress(self) -> TransferProgress | None:
        raw = self._read(2 * RECORD_BYTES, PROGRESS.size + 4)
        body, (crc,) = raw[: PROGRESS.size], struct.unpack("<I", raw[PROGRESS.size :])
        if zlib.crc32(body) != crc:
            return None
        magic, version, size, written, flagged = PROGRESS.unpack(body)
        slot, patch = flagged & ~PATCH_FLAG, bool(flagged & PATCH_FLAG)
        if magic != PROGRESS_MAGIC or slot not in (0, 1) or written > size or size > self.slot_bytes:
            return None
        return TransferProgress(version, size, written, slot, patch)

    def clear_progress(self) -> None:
        self._write(2 * RECORD_BYTES, b"\xff" * RECORD_BYTES)

    # -- scratch (error-feedback residual) --------------------------------------------------------------
    def _scratch_offset(self) -> int:
        return 3 * RECORD_BYTES + 2 * self.slot_bytes

    def save_scratch(self, data: bytes) -> None:
        if SCRATCH_HEADER.size + len(data) > self.scratch_bytes:
            raise FlashFull(f"{len(data)} bytes of residual exceed the {self.scratch_bytes}-byte scratch area")
        header = SCRATCH_HEADER.pack(MAGIC, len(data), zlib.crc32(data))
        self._write(self._scratch_offset(), header + data)

    def load_scratch(self) -> bytes | None:
        magic, length, crc = SCRATCH_HEADER.unpack(self._read(self._scratch_offset(), SCRATCH_HEADER.size))
        if magic != MAGIC or length > self.scratch_bytes:
            return None
        data = self._read(self._scratch_offset() + SCRATCH_HEADER.size, length)
        return data if zlib.crc32(data) == crc else None
