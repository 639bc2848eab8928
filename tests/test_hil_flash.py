"""The emulated board's A/B flash: power lost at any byte never leaves a torn model."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from hil.flash import BrownOut, Flash, FlashFull


def install(flash: Flash, model: bytes, brown_out_at: int | None = None) -> None:
    slot = flash.inactive_slot()
    flash.brown_out_at = brown_out_at
    for offset in range(0, len(model), 1000):
        flash.write_slot(slot, offset, model[offset : offset + 1000])
    flash.commit(slot, len(model), hashlib.sha256(model).digest())


def test_models_alternate_slots_and_survive_a_reboot(tmp_path: Path) -> None:
    flash = Flash(tmp_path / "flash.bin", size=256 * 1024)
    assert flash.model() is None
    first, second = os.urandom(40_000), os.urandom(50_000)
    install(flash, first)
    install(flash, second)
    assert flash.model() == second
    rebooted = Flash(tmp_path / "flash.bin", size=256 * 1024)
    assert rebooted.model() == second and rebooted.active().seq == 2  # type: ignore[union-attr]


@pytest.mark.parametrize("seed", range(6))
def test_power_lost_at_a_random_byte_keeps_the_last_good_model(tmp_path: Path, seed: int) -> None:
    flash = Flash(tmp_path / "flash.bin", size=256 * 1024)
    old, new = os.urandom(30_000), os.urandom(45_000)
    install(flash, old)
    total = len(new) + 64  # slot bytes, then the 64-byte commit record
    cut = random.Random(seed).randrange(total)
    with pytest.raises(BrownOut):
        install(flash, new, brown_out_at=cut)
    assert Flash(tmp_path / "flash.bin", size=256 * 1024).model() == old  # boots the old model
    install(flash, new)  # the retry after the reset succeeds
    assert Flash(tmp_path / "flash.bin", size=256 * 1024).model() == new


def test_a_flash_file_of_another_size_is_refused_untouched(tmp_path: Path) -> None:
    flash = Flash(tmp_path / "flash.bin", size=128 * 1024)
    install(flash, os.urandom(5000))
    before = (tmp_path / "flash.bin").read_bytes()
    with pytest.raises(ValueError, match="holds 131072 bytes of flash, not 262144"):
        Flash(tmp_path / "flash.bin", size=256 * 1024)
    assert (tmp_path / "flash.bin").read_bytes() == before


def test_wrong_hash_and_oversize_models_are_refused(tmp_path: Path) -> None:
    flash = Flash(tmp_path / "flash.bin", size=128 * 1024)
    model = os.urandom(10_000)
    slot = flash.inactive_slot()
    flash.write_slot(slot, 0, model)
    with pytest.raises(ValueError, match="do not match the announced sha256"):
        flash.commit(slot, len(model), hashlib.sha256(b"other").digest())
    assert flash.model() is None
    with pytest.raises(FlashFull, match="does not fit"):
        flash.write_slot(slot, 0, b"\x00" * (flash.slot_bytes + 1))


def test_the_residual_scratch_is_all_or_nothing(tmp_path: Path) -> None:
    flash = Flash(tmp_path / "flash.bin", size=128 * 1024)
    flash.save_scratch(b"residual-v1")
    assert flash.load_scratch() == b"residual-v1"
    flash.brown_out_at = 8
    with pytest.raises(BrownOut):
        flash.save_scratch(b"residual-v2-longer")
    assert flash.load_scratch() is None  # torn: detected, not misread
