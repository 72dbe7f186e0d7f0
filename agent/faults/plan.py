"""Seeded plans: a list of steps turned into a schedule, the same for the same seed everywhere.

A step gives when (``at``: seconds from the plan's start, or ``after``: seconds after the previous
step's fault ended), a kind, a target, params and a duration.  Any of ``at``, ``after``,
``target``, ``duration`` and a param's value may be a choice instead of a value:

- ``{"between": [LOW, HIGH]}``: a number drawn uniformly (an integer if both bounds are integers);
- ``{"one-of": [A, B, ...]}``: one of the values.

Choices are drawn from ``random.Random(seed)`` in a fixed order (step by step, repetition by
repetition; within a step: when, target, duration, params by name), so a schedule depends on the
seed and the steps only.  Its digest (SHA-256 of its canonical JSON) lets a test check that a
replay ran the same schedule.

A plan across guests (the host's :mod:`pyqga.host_client.group_plan`) is drawn here too, by the
same :func:`build` with ``guests``: each step names its ``guest`` (a value or a choice, drawn
first in the step), and :func:`part` gives each guest its entries as fixed steps (no choices
left), which that guest's own ``guest-fault-plan`` turns back into the same entries.

Worst case: :data:`MAX_ENTRIES` entries, each built in time linear in its step's size; a request
over that is refused before anything is drawn.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from pyqga.agent.faults.machine import Refused, check_duration
from pyqga.agent.faults.vocabulary import MAX_DURATION

if TYPE_CHECKING:
    from hashlib import sha256
else:
    try:  # CPython's own SHA-256: hashlib would load OpenSSL's libcrypto (~2 MB a process) for it
        from _sha256 import sha256
    except ImportError:  # another build or version (3.12 names it _sha2)
        from hashlib import sha256

MAX_ENTRIES = 1000
MAX_LEAD = 60.0    # seconds a plan's start may be ahead of the guest's clock
MAX_LATE = 1.0     # seconds it may be behind (a slow call): its steps start at once
MAX_CHOICES = 1000
STEP_KEYS = frozenset({"at", "after", "kind", "target", "params", "duration"})
GROUP_STEP_KEYS = STEP_KEYS | {"guest"}


class Entry(NamedTuple):
    """One fault of a schedule: started ``at`` seconds after the plan's start (on ``guest``, in
    a plan across guests)."""

    at: float
    kind: str
    target: str
    params: Mapping[str, Any]
    duration: float
    guest: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {"at": self.at, "kind": self.kind, "target": self.target, "params": dict(self.params),
               "duration": self.duration}
        return out if self.guest is None else {"guest": self.guest, **out}

    def as_step(self) -> dict[str, Any]:
        """This entry as a fixed step (no choices) of its guest's own plan."""
        return {"at": self.at, "kind": self.kind, "target": self.target, "params": dict(self.params),
                "duration": self.duration}


class Schedule(NamedTuple):
    entries: tuple[Entry, ...]
    digest: str
    span: float   # seconds from the plan's start to the end of its last fault


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Refused(f"{what} must be a finite number, not {str(value)[:40]!r}")
    return value


def resolve(value: Any, rng: random.Random, what: str) -> Any:
    """``value``, or what a choice object draws."""
    if not isinstance(value, Mapping) or not (set(value) & {"between", "one-of"}):
        return value
    if set(value) == {"between"}:
        bounds = value["between"]
        if not (isinstance(bounds, list) and len(bounds) == 2):
            raise Refused(f"{what}: between takes [LOW, HIGH]")
        low, high = (_number(b, f"{what}: a bound") for b in bounds)
        if low > high:
            raise Refused(f"{what}: between [{low}, {high}] is empty")
        if all(isinstance(b, int) for b in bounds):
            return rng.randint(int(low), int(high))
        return round(rng.uniform(low, high), 6)
    if set(value) == {"one-of"}:
        options = value["one-of"]
        if not (isinstance(options, list) and 0 < len(options) <= MAX_CHOICES):
            raise Refused(f"{what}: one-of takes a list of 1 to {MAX_CHOICES} values")
        return options[rng.randrange(len(options))]
    raise Refused(f"{what}: a choice is {{\"between\": [LOW, HIGH]}} or {{\"one-of\": [...]}}")


def resolve_params(params: Any, rng: random.Random, what: str) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise Refused(f"{what}: params must be an object")
    return {name: resolve(params[name], rng, f"{what}: params.{name}") for name in sorted(params)}


def check_start(start: Any, now: float) -> float:
    """Seconds from ``now`` to a plan's ``start`` (both CLOCK_MONOTONIC): at most
    :data:`MAX_LEAD` ahead, and at most :data:`MAX_LATE` behind (then 0: its steps run late,
    and the timeline shows by how much)."""
    origin = float(_number(start, "start"))
    if origin > now + MAX_LEAD:
        raise Refused(f"start is {origin - now:.3f} s ahead of this guest's monotonic clock; "
                      f"at most {MAX_LEAD:g} s")
    if origin < now - MAX_LATE:
        raise Refused(f"start was {now - origin:.3f} s ago on this guest's monotonic clock; a host sets "
                      "it a little ahead, from the clock's offset it measured")
    return max(0.0, origin - now)


def digest(entries: Sequence[Entry]) -> str:
    """SHA-256 of the entries' canonical JSON: equal digests, equal schedules."""
    canonical = json.dumps([entry.as_dict() for entry in entries], sort_keys=True, separators=(",", ":"))
    return sha256(canonical.encode()).hexdigest()


def part(schedule: Schedule, guest: str) -> list[Entry]:
    """The entries of a plan across guests that ``guest`` runs, without the guest's name: what
    that guest's ``guest-fault-plan`` of :meth:`Entry.as_step` steps draws (and its digest)."""
    return [entry._replace(guest=None) for entry in schedule.entries if entry.guest == guest]


def build(seed: int, steps: Sequence[Any], repeat: int = 1, guests: Sequence[str] | None = None) -> Schedule:
    """The schedule of ``steps`` repeated ``repeat`` times; :class:`Refused` names what is wrong.
    With ``guests``, a plan across guests: every step names one of them as its ``guest``."""
    if not isinstance(steps, Sequence) or not steps:
        raise Refused("a plan needs at least one step")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise Refused(f"repeat must be a positive integer, not {repeat!r}")
    if len(steps) * repeat > MAX_ENTRIES:
        raise Refused(f"a plan runs at most {MAX_ENTRIES} faults; this one has {len(steps)} steps x "
                      f"{repeat} repeats = {len(steps) * repeat}")
    keys = STEP_KEYS if guests is None else GROUP_STEP_KEYS
    rng = random.Random(seed)
    entries: list[Entry] = []
    start = end = span = 0.0   # the repetition's start, the previous fault's end, the latest end
    for round_ in range(repeat):
        for index, step in enumerate(steps):
            what = f"step {index + 1}" + (f" (repeat {round_ + 1})" if repeat > 1 else "")
            if not isinstance(step, Mapping):
                raise Refused(f"{what} is not an object")
            unknown = sorted(set(step) - keys)
            if unknown:
                takes = ", ".join(sorted(keys))
                raise Refused(f"{what} has an unknown key {unknown[0]!r}; steps take: {takes}")
            guest = None if guests is None else _guest(step, rng, what, guests)
            if ("at" in step) == ("after" in step):
                raise Refused(f"{what} needs one of at (from the plan's start) or after (the previous "
                              "fault's end)")
            when = _number(resolve(step.get("at", step.get("after")), rng, what), f"{what}: at/after")
            if when < 0:
                raise Refused(f"{what}: at/after must be >= 0, not {when}")
            at = start + when if "at" in step else end + when
            target = resolve(step.get("target"), rng, f"{what}: target")
            kind = step.get("kind")
            if not isinstance(kind, str) or not isinstance(target, str):
                raise Refused(f"{what} needs a kind and a target (strings)")
            try:
                duration = check_duration(resolve(step.get("duration"), rng, f"{what}: duration"))
            except Refused as e:
                raise Refused(f"{what}: {e}") from None
            params = resolve_params(step.get("params"), rng, what)
            entry = Entry(round(at, 6), kind, target, params, duration, guest)
            entries.append(entry)
            end = at + duration
            span = max(span, entry.at + entry.duration)
        start = end = span
    if span > MAX_DURATION:
        raise Refused(f"a plan must end within {MAX_DURATION:.0f} s (a week); this one takes {span:.0f} s")
    return Schedule(tuple(entries), digest(entries), span)


def _guest(step: Mapping[str, Any], rng: random.Random, what: str, guests: Sequence[str]) -> str:
    """The step's guest (drawn first in the step if it is a choice), one of ``guests``."""
    if "guest" not in step:
        raise Refused(f"{what} needs a guest (one of {', '.join(guests)})")
    guest = resolve(step["guest"], rng, f"{what}: guest")
    if guest not in guests:
        raise Refused(f"{what}: guest {str(guest)[:40]!r} is not one of the plan's guests "
                      f"({', '.join(guests)})")
    return str(guest)
