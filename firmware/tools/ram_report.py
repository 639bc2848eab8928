#!/usr/bin/env python3
"""RAM and flash of the C board from its ELF and linker map: sections, the stack, the biggest buffers.

    python3 firmware/tools/ram_report.py build/an386/tinyfed.elf build/an386/tinyfed.map [--port /dev/pts/N]

The static figures come from the linker (arm-none-eabi-size and -nm); the stack's high-water mark is only
known at run time, so with ``--port`` the script also greets the board (tinyfed's BoardDriver) and prints
the LOG line its HELLO answer is followed by (.data, .bss, arena, stack and its high-water mark).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

RAM_BUDGET = 256 * 1024
PERSIST_BYTES = 256  # the last bytes of RAM, outside every section: the reset reason (platform/mps2/linker.ld)
PROGRAM_FLASH = 256 * 1024


def sections(elf: str) -> dict[str, int]:
    out = subprocess.run(["arm-none-eabi-size", "-A", elf], capture_output=True, text=True, check=True).stdout
    sizes: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            sizes[parts[0]] = int(parts[1])
    return sizes


def biggest(elf: str, count: int = 8) -> list[tuple[str, int, str]]:
    out = subprocess.run(
        ["arm-none-eabi-nm", "-S", "--size-sort", "-r", elf], capture_output=True, text=True, check=True
    ).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "bBdD":
            rows.append((parts[3], int(parts[1], 16), ".bss" if parts[2] in "bB" else ".data"))
    return rows[:count]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("elf")
    parser.add_argument("map", nargs="?", help="the linker map (kept beside the ELF; named for reference)")
    parser.add_argument("--port", help="a running board's serial port: print its HELLO's RAM line too")
    args = parser.parse_args()
    s = sections(args.elf)
    flash = s.get(".text", 0) + s.get(".ARM.exidx", 0) + s.get(".data", 0)
    ram = s.get(".data", 0) + s.get(".bss", 0) + s.get(".stack", 0)
    text, data = s.get(".text", 0), s.get(".data", 0)
    print(f"program flash: {flash:,} B of {PROGRAM_FLASH:,} B (.text {text:,}, .data image {data:,})")
    print(
        f"RAM: {ram:,} B of {RAM_BUDGET:,} B ({100 * ram / RAM_BUDGET:.1f}%): .data {s.get('.data', 0):,}, "
        f".bss {s.get('.bss', 0):,}, stack reserved {s.get('.stack', 0):,}"
    )
    free = RAM_BUDGET - ram - PERSIST_BYTES
    print(f"free: {free:,} B (STATUS's free RAM; the last {PERSIST_BYTES} B hold the reset reason)")
    print("largest buffers:")
    for name, size, section in biggest(args.elf):
        print(f"  {name:<28} {size:>8,} B  {section}")
    if args.port:
        from firmware_bridge.driver import BoardDriver

        with BoardDriver(args.port, 115200, answer_timeout=10) as driver:
            driver.hello()
            deadline = time.monotonic() + 5
            while not driver.logs and time.monotonic() < deadline:
                driver.link.pending()  # the LOG follows the HELLO answer
                time.sleep(0.05)
                driver.status()
            for log in driver.logs:
                print(f"board: {log.text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
