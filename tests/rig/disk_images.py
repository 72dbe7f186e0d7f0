"""Disk images the tests partition themselves (no sfdisk needed, here or in the guest)."""

from __future__ import annotations

import struct
from pathlib import Path


def mbr_image(path: Path, size_mib: int = 8) -> None:
    """An image with an MBR holding two Linux partitions."""
    sectors = size_mib * 2048
    mbr = bytearray(512)
    half = (sectors - 2048) // 2
    for slot, (start, count) in enumerate(((2048, half - 2048), (2048 + half, half - 2048))):
        entry = struct.pack("<B3sB3sII", 0, b"\0\0\0", 0x83, b"\0\0\0", start, count)
        mbr[446 + 16 * slot:446 + 16 * (slot + 1)] = entry
    mbr[510:512] = b"\x55\xaa"
    with open(path, "wb") as image:
        image.write(mbr)
        image.truncate(sectors * 512)
