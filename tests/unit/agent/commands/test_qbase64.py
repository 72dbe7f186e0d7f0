"""The one qemu-style base64 decoder: qemu's character check, then glib's lenient decoding
(the password) or a strict one (the data commands), with qemu's error texts."""

from __future__ import annotations

import base64
import os

import pytest

from pyqga.agent.commands.qbase64 import glib_base64_decode, qbase64_decode
from pyqga.protocol.errors import AgentError


@pytest.mark.parametrize("strict", [True, False])
def test_well_formed_data_decodes_the_same_either_way(strict: bool) -> None:
    for size in range(0, 70):
        data = os.urandom(size)
        encoded = base64.encodebytes(data).decode("ascii")  # with newlines every 76 characters
        assert qbase64_decode(encoded, strict=strict) == data
        assert glib_base64_decode(encoded.encode("ascii")) == data


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("text", ["YW J j", "YWJj\tZA==", "YWJjé", "YW-_"])
def test_characters_outside_base64_are_refused_either_way(text: str, strict: bool) -> None:
    with pytest.raises(AgentError, match=r"^Base64 data contains invalid characters$"):
        qbase64_decode(text, strict=strict)


def test_lenient_is_qemus_c_string_and_glibs_decoder() -> None:
    assert qbase64_decode("aGVsbG8=\0 not base64", strict=False) == b"hello"
    assert qbase64_decode("YQ=", strict=False) == b""      # a partial quantum is dropped
    assert qbase64_decode("YWJjZA", strict=False) == b"abc"


def test_strict_refuses_a_nul_and_data_that_is_not_well_formed() -> None:
    with pytest.raises(AgentError, match=r"^Base64 data contains embedded NUL characters$"):
        qbase64_decode("aGVsbG8=\0", strict=True)
    for text in ("YQ=", "YWJjZA", "a"):
        with pytest.raises(AgentError, match=r"^Base64 data is not well formed: "):
            qbase64_decode(text, strict=True)
