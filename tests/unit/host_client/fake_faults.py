"""An in-memory ``guest-fault-*`` for :class:`~tests.unit.host_client.scripted_agent.ScriptedAgent`:
leases with ids, deadlines on a real clock and a timeline, so the host side can be tested for
what it sends and what it makes of the replies.  The refusals use the agent's own words
(:class:`pyqga.agent.faults.machine.LeaseBook`'s), which is what the host side matches."""

from __future__ import annotations

import threading
import time
from typing import Any

from pyqga.host_client.faults import KINDS
from pyqga.protocol.errors import AgentError, ErrorKind
from tests.unit.host_client.scripted_agent import Handler

BOOT_ID = "0b7c1f0e-6f0a-4c8e-9d0e-2a3b4c5d6e7f"


class FakeFaults:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.leases: dict[str, dict[str, Any]] = {}
        self.timeline: list[dict[str, Any]] = []
        self.next_id = 1

    def handlers(self) -> dict[str, Handler]:
        return {"guest-fault-inject": self.inject, "guest-fault-list": self.list,
                "guest-fault-revert": self.revert, "guest-fault-events": self.events,
                "guest-fault-capabilities": self.capabilities}

    def _record(self, name: str, lease: dict[str, Any], **extra: str) -> None:
        self.timeline.append({"event": name, "id": lease["id"], "kind": lease["kind"],
                              "target": lease["target"], "mono": time.monotonic(), "wall": time.time(),
                              "boot-id": BOOT_ID, **extra})

    def _expire(self) -> None:
        for lease in list(self.leases.values()):
            if time.time() >= lease["deadline"]:
                del self.leases[lease["id"]]
                self._record("expired", lease, reason="deadline")

    def inject(self, params: dict[str, Any]) -> Any:
        with self.lock:
            if params["kind"] not in KINDS:
                raise AgentError(ErrorKind.INVALID_PARAMS, f"unknown fault kind {params['kind']!r}")
            now = time.time()
            lease = {"id": f"f{self.next_id}", "kind": params["kind"], "target": params["target"],
                     "params": params.get("params", {}), "state": "active", "started": now,
                     "deadline": now + params["duration"], "duration": float(params["duration"])}
            self.next_id += 1
            self.leases[lease["id"]] = lease
            self._record("armed", lease)
            self._record("fired", lease)
            return {key: lease[key] for key in ("id", "kind", "target", "deadline", "duration")}

    def list(self, params: dict[str, Any]) -> Any:
        with self.lock:
            self._expire()
            return [{**{k: v for k, v in lease.items() if k != "duration"},
                     "remaining": max(0.0, lease["deadline"] - time.time())}
                    for lease in self.leases.values()]

    def revert(self, params: dict[str, Any]) -> Any:
        with self.lock:
            self._expire()
            lease_id = params.get("id")
            if lease_id is not None and lease_id not in self.leases:
                raise AgentError(ErrorKind.COMMAND_FAILED,
                                 f"no active fault {lease_id!r}; guest-fault-list shows the active ones")
            chosen = [lease_id] if lease_id is not None else list(self.leases)
            for key in chosen:
                self._record("reverted", self.leases.pop(key), reason="revert")
            return len(chosen)

    def events(self, params: dict[str, Any]) -> Any:
        with self.lock:
            self._expire()
            since = params.get("since", 0)
            return {"events": self.timeline[since:], "cursor": len(self.timeline)}

    def capabilities(self, params: dict[str, Any]) -> Any:
        target = params.get("target", "/")

        def entry(kind: str) -> dict[str, Any]:
            if kind in ("write-stall", "disk-full"):
                taken = [{"name": "free-bytes", "type": "int", "doc": "bytes left free", "default": 0}] \
                    if kind == "disk-full" else []
                return {"kind": kind, "available": True, "params": taken}
            return {"kind": kind, "available": False,
                    "reason": f"{target} is not on a device-mapper device", "params": []}

        return {"kinds": [entry(kind) for kind in KINDS], "boot-id": BOOT_ID}
