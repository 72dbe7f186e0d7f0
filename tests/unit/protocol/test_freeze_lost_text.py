"""The FREEZE_LOST words: what the agent builds, the host parses back, on every channel."""

from __future__ import annotations

import pytest

from pyqga.host_client.libvirt_transport import VIR_ERR_AGENT_COMMAND_FAILED, Outcome, classify_libvirt_error
from pyqga.protocol.errors import AgentError, ErrorKind
from pyqga.protocol.freeze_lost import FreezeLostText, LostHow, freeze_lost_text, parse_freeze_lost

CASES = [
    (3, LostHow.DID_NOT_HOLD, "it ended at 2026-12-07 12:00:00 by timeout (took too long)",
     "freeze 3 did not hold: it ended at 2026-12-07 12:00:00 by timeout (took too long)"),
    (3, LostHow.NOT_IN_FORCE, "that is epoch 4", "freeze 3 is not the freeze in force (that is epoch 4)"),
    (9, LostHow.UNKNOWN, "the last freeze was epoch 4",
     "freeze 9 is unknown or long over (the last freeze was epoch 4)"),
]


@pytest.mark.parametrize(("epoch", "how", "why", "text"), CASES)
def test_built_words_parse_back(epoch: int, how: LostHow, why: str, text: str) -> None:
    assert freeze_lost_text(epoch, how, why) == text
    assert parse_freeze_lost(text) == FreezeLostText(epoch, how, why)


@pytest.mark.parametrize("text", ["", "freeze failed: EIO", "the freeze 3 did not hold",
                                  "freeze x did not hold", "freeze 3 held"])
def test_other_words_are_not_a_lost_freeze(text: str) -> None:
    assert parse_freeze_lost(text) is None


@pytest.mark.parametrize(("epoch", "how", "why", "text"), CASES)
def test_every_channel_gets_the_kind_back(epoch: int, how: LostHow, why: str, text: str) -> None:
    """qemu-ga's dialect and libvirt carry only GenericError: the words bring the kind back."""
    assert AgentError.from_qga({"class": "GenericError", "desc": text}).kind is ErrorKind.FREEZE_LOST
    message = f"internal error: unable to execute QEMU agent command 'guest-fsfreeze-thaw': {text}"
    outcome, error = classify_libvirt_error(VIR_ERR_AGENT_COMMAND_FAILED, message)
    assert outcome is Outcome.AGENT_ERROR and error is not None and error.kind is ErrorKind.FREEZE_LOST
    assert error.message == text
