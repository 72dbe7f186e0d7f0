"""qemu's ``qbase64_decode`` (``util/base64.c``), the one base64 rule of every command that takes
base64 (``guest-exec``'s input, ``guest-file-write``, ``guest-set-user-password``).

qemu first checks the characters (base64's and newlines only: "Base64 data contains invalid
characters") and then hands them to glib's ``g_base64_decode``, which never fails: it skips what
it does not know and drops a partial last quantum.

Where **we** differ from qemu-ga, deliberately: the data commands (``strict=True``) refuse an
embedded NUL and data that is not well formed, instead of decoding garbage that then lands in a
file or on a program's stdin.  The password keeps qemu's leniency exactly (``strict=False``): it
is read as a C string up to its first NUL and decoded as glib does.
"""

from __future__ import annotations

import base64
import binascii

from pyqga.protocol.errors import command_failed

# qemu's util/base64.c: the characters it accepts before decoding (newlines included).
BASE64_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n")

# glib's mime_base64_rank: '=' ranks 0, anything outside the alphabet is skipped.
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_RANK = {ch: i for i, ch in enumerate(_B64_ALPHABET)}
_RANK[ord("=")] = 0


def qbase64_decode(text: str, *, strict: bool) -> bytes:
    """``text`` decoded with qemu's error texts; see the module for ``strict``.  Worst case: one
    copy of the decoded data (3/4 of the request, itself bounded by --max-message-size)."""
    raw = text.encode("ascii", "replace")  # anything not ASCII becomes '?': invalid
    if strict:
        if b"\0" in raw:
            raise command_failed("Base64 data contains embedded NUL characters")
    else:
        raw = raw.split(b"\0", 1)[0]  # qemu's qbase64_decode(input, -1, ...): a C string
    if not BASE64_CHARS.issuperset(raw):
        raise command_failed("Base64 data contains invalid characters")
    if not strict:
        return glib_base64_decode(raw)
    try:
        return base64.b64decode(raw.replace(b"\n", b""), validate=True)
    except binascii.Error as exc:
        raise command_failed(f"Base64 data is not well formed: {exc}") from None


def glib_base64_decode(data: bytes) -> bytes:
    """glib's ``g_base64_decode``: whole quanta only, a trailing ``=`` drops its byte, a partial
    last quantum is dropped; never an error."""
    out = bytearray()
    value = count = 0
    last0 = last1 = 0
    for ch in data:
        rank = _RANK.get(ch)
        if rank is None:
            continue
        last1, last0 = last0, ch
        value = ((value << 6) | rank) & 0xFFFFFFFF
        count += 1
        if count == 4:
            out.append((value >> 16) & 0xFF)
            if last1 != 0x3D:
                out.append((value >> 8) & 0xFF)
            if last0 != 0x3D:
                out.append(value & 0xFF)
            count = 0
    return bytes(out)
