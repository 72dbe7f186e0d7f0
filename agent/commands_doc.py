"""``docs/commands.md``, generated from the command registry (the one source for dispatch,
``guest-info`` and ``-b help``): every command with its parameters, what it does, and whether it
answers while filesystems are frozen.  ``python -m pyqga.agent.commands_doc > docs/commands.md``
rewrites it; a test fails when it is out of date."""

from __future__ import annotations

import sys

from pyqga.agent.registry import JSON_TYPE_NAMES, Registry, build_registry

HEADER = """# Commands

Generated from the agent's command registry by `python -m pyqga.agent.commands_doc > docs/commands.md`
(a test checks it is current). Names, parameters and replies are qemu-ga's (QEMU 11.1's
`qga/qapi-schema.json`), plus `guest-fsfreeze-info` and the freeze commands' `timeout`/`epoch`,
which are pyqga's. `pyqga-agent -b help` prints the same list; `-b NAME,...` disables commands.

| command | parameters (`[optional]`) | while frozen | what it does |
| --- | --- | --- | --- |
"""


def commands_markdown(registry: Registry) -> str:
    rows = []
    for command in registry:
        params = ", ".join(
            (f"`{p.name}`: {JSON_TYPE_NAMES[p.type]}" if p.required
             else f"[`{p.name}`: {JSON_TYPE_NAMES[p.type]}]") for p in command.params) or "-"
        doc = command.doc.replace("|", "\\|")
        frozen = "yes" if command.allowed_while_frozen else "no"
        rows.append(f"| `{command.name}` | {params} | {frozen} | {doc} |")
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(commands_markdown(build_registry()))
