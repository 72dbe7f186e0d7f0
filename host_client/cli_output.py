"""Where a CLI verb's result goes: the agent's raw result as JSON (``--json``) or text for a human.

One place decides, so every verb treats ``--json`` the same way and the text is only built when
it is shown.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


@dataclass(frozen=True, slots=True)
class Output:
    as_json: bool

    def show(self, data: Any, text: str | Callable[[], str]) -> None:
        """``data`` with ``--json``; otherwise ``text`` (a callable is called only then)."""
        if self.as_json:
            print_json(data)
            return
        line = text() if callable(text) else text
        if line:
            print(line)
