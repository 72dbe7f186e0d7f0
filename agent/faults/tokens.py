"""Random names for what a fault creates (a table, a handle, a worker's token, a file).

Not :mod:`secrets`: it imports :mod:`hmac`, hence :mod:`hashlib`, which loads OpenSSL's
libcrypto into the agent (~2 MB resident, issue 22) for nothing; these names need unpredictable
bytes from the kernel, which is what ``secrets`` draws too (``os.urandom``).
"""

from __future__ import annotations

import os
import random

_SYSTEM = random.SystemRandom()


def token_hex(nbytes: int) -> str:
    """``nbytes`` random bytes from the kernel, as hex (as ``secrets.token_hex``)."""
    return os.urandom(nbytes).hex()


def randbelow(limit: int) -> int:
    """A random int in [0, ``limit``) from the kernel's bytes (as ``secrets.randbelow``)."""
    return _SYSTEM.randrange(limit)
