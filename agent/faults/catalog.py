"""Every fault kind in one place: its parameters, how to prepare it, whether this guest can run
it and why not.  Joins :mod:`.kinds` (any filesystem), :mod:`.block` (device-mapper),
:mod:`.processes`, :mod:`.network` (nftables and netem), :mod:`.resources` and :mod:`.clock`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyqga.agent.faults import block, clock, kinds, network, processes, resources
from pyqga.agent.faults.kinds import Context, ParamSpec, Spec
from pyqga.agent.faults.machine import Refused
from pyqga.agent.faults.vocabulary import Kind

PARAMS: dict[Kind, tuple[ParamSpec, ...]] = {**kinds.PARAMS, **block.PARAMS, **processes.PARAMS,
                                           **network.PARAMS, **resources.PARAMS, **clock.PARAMS}
PREPARERS: dict[Kind, kinds.Preparer] = {**kinds.PREPARERS, **block.PREPARERS, **processes.PREPARERS,
                                          **network.PREPARERS, **resources.PREPARERS, **clock.PREPARERS}


def unavailable(kind: Kind) -> str | None:
    """Why this guest cannot run ``kind`` at all (None: it can, given a suitable target)."""
    if kind not in PREPARERS:
        return "not built in this version of pyqga"
    if kind in block.PREPARERS:
        return block.unavailable(kind)
    if kind in network.PREPARERS:
        return network.unavailable(kind)
    return None


def prepare(kind_name: str, target: str, params: Mapping[str, Any] | None, force: bool,
            context: Context) -> Spec:
    """Check a request against this guest and build its recipe; :class:`Refused` says why not."""
    kind = kinds.kind_of(kind_name)
    why = unavailable(kind)
    if why is not None:
        raise Refused(f"{kind.value} is not available in this guest: {why}")
    checked = kinds.check_params(kind, params, PARAMS)
    return PREPARERS[kind](target, checked, force, context)


def capabilities(target: str | None, context: Context) -> list[dict[str, Any]]:
    """``guest-fault-capabilities``: each kind, whether it can run (on ``target``, if given) and
    why not, and its parameters."""
    out = []
    for kind in Kind:
        why = unavailable(kind)
        if why is None and target is not None:
            try:
                defaults = kinds.check_params(kind, {}, PARAMS, defaults_only=True)
                PREPARERS[kind](target, defaults, False, context)
            except Refused as e:
                why = str(e)
        entry: dict[str, Any] = {"kind": kind.value, "available": why is None,
                                 "params": [{"name": p.name, "type": kinds.TYPE_NAMES[p.type], "doc": p.doc,
                                             **({"default": p.default} if p.default is not None else {})}
                                            for p in PARAMS.get(kind, ())]}
        if why is not None:
            entry["reason"] = why
        out.append(entry)
    return out
