"""``pyqga-agent``: set process-wide switches, then start the daemon (:mod:`pyqga.agent.daemon`).

The switches must come before the daemon's imports, so they live here, with nothing else.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    # Never write bytecode caches: a write to a frozen filesystem would hang the agent.
    sys.dont_write_bytecode = True
    # asyncio imports ssl (4.4 MB resident, a third of the agent's imports) only to offer TLS,
    # which the agent never speaks.  None in sys.modules makes `import ssl` fail, and asyncio
    # is written to carry on without it.  Only the agent's process is affected.
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    from pyqga.agent.errors import AgentExtraMissing

    try:
        from pyqga.agent.daemon import run_daemon
    except AgentExtraMissing as exc:  # a host-only install: one line, not a traceback
        sys.stderr.write(f"pyqga-agent: {exc}\n")
        return 1

    return run_daemon(argv)


if __name__ == "__main__":
    sys.exit(main())
