"""``pyqga fault report``: the fault timeline as one self-contained HTML page with an inline SVG.

People look at this rather than read it: one lane per fault target, a bar per lease from the
moment it took effect (``fired``, else ``armed``) to its end (``reverted`` or ``expired``), its
kind and end reason written above it, a color per kind; refusals as red marks; application
metrics (JSON lines ``{"time": UNIX, "value": V[, "name": SERIES]}``) as lines underneath on the
same time axis; and every event in a table below.

The time base (docs/faults.md, "The timeline picture"): seconds from the first event.  Within a
boot, times come from the guest's CLOCK_MONOTONIC (``mono``), which no clock fault moves, so a
``clock-step`` does not bend the picture.  The monotonic clock restarts at a reboot (a new
``boot-id``, after a power cut), so each boot is placed by the guest's wall clock (``wall``) at
its first event, and a dashed line marks it.  Metrics carry Unix time: they are placed by the
guest's wall clock at the first event, so they line up as far as the host's and the guest's
clocks agree.

Every text from the events (kinds, targets, reasons, ids) is untrusted: it is escaped for HTML
(and so for the SVG inside it), control characters replaced, and only this module's own
constants become colors, coordinates or attributes.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from pyqga.host_client.faults import FaultEvent, parse_event

# The picture's geometry, in CSS pixels: the SVG is the page's first element, at (0, 0).
WIDTH = 1200
LEFT = 210              # lane labels left of the plot
RIGHT = 30
PLOT = WIDTH - LEFT - RIGHT
TOP = 84                # title, summary and the time axis above the lanes
LANE = 44               # one lane's height
BAR = 18                # a bar's height; it sits BAR_Y below the lane's top, under its label
BAR_Y = 20
GAP = 36                # between the lanes and the metrics panel
PANEL = 170             # the metrics panel's height
LEGEND = 40
MAX_LABEL = 30          # lane names longer than this are cut (the full text is in the tooltip)

# One color a kind, distinct for the eye: storage in blues and purples, processes in greens,
# clocks in browns, network in oranges and reds, resources in pinks; a plan is grey.
COLORS = {
    "write-stall": "#1f77b4", "io-stall": "#4a90d9", "io-error": "#3949ab", "io-delay": "#17becf",
    "corrupt": "#7e57c2", "drop-writes": "#9c27b0", "bad-extents": "#5c6bc0", "disk-full": "#00897b",
    "process-pause": "#43a047", "process-kill": "#827717", "clock-step": "#8d6e63",
    "clock-skew": "#a1887f", "clock-strobe": "#6d4c41", "net-partition": "#e65100",
    "net-delay": "#fb8c00", "net-loss": "#f4511e", "net-duplicate": "#ffb300", "net-reorder": "#c0ca33",
    "net-corrupt": "#bf360c", "cpu-hog": "#d81b60", "memory-pressure": "#f06292", "plan": "#90a4ae",
}
OTHER_COLORS = ("#26a69a", "#ab47bc", "#ec407a", "#7cb342", "#ffa726", "#5e35b1")   # unknown kinds
REFUSED = "#d50000"
SERIES = ("#212121", "#1565c0", "#c62828", "#2e7d32", "#6a1b9a")   # metric lines
BACKGROUND = ("#ffffff", "#f3f5f7")   # lanes alternate
GRID = "#dde1e5"

METRIC_FORM = '{"time": UNIX_SECONDS, "value": NUMBER}'
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def esc(value: object) -> str:
    """Text (or an attribute's value, quotes included) safe inside HTML and its inline SVG."""
    return html.escape(_CONTROL.sub("\ufffd", str(value)), quote=True)


def color_of(kind: str) -> str:
    if kind in COLORS:
        return COLORS[kind]
    return OTHER_COLORS[hashlib.sha256(kind.encode()).digest()[0] % len(OTHER_COLORS)]


# --- reading -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    """One application metric: Unix time, value, series."""

    time: float
    value: float
    name: str = ""


def read_events(text: str, source: str = "EVENTS") -> list[FaultEvent]:
    """Events as ``pyqga fault events`` prints them (JSON lines), or its ``--json`` document
    (``{"events": [...], "cursor": N}``), or the agent's own fault-events.jsonl.  ValueError
    naming the line for anything else."""
    stripped = text.strip()
    raws: list[tuple[int, object]] = []
    try:
        whole = json.loads(stripped) if stripped else None
    except ValueError:
        whole = None
    if isinstance(whole, dict) and isinstance(whole.get("events"), list):
        raws = [(0, raw) for raw in whole["events"]]
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    raws.append((number, json.loads(line)))
                except ValueError as exc:
                    raise ValueError(f"{source} line {number}: not JSON ({exc})") from None
    events = []
    for number, raw in raws:
        where = f"{source} line {number}" if number else source
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: an event is a JSON object, not {type(raw).__name__}")
        try:
            event = parse_event(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: not a fault event (needs event, kind, target, mono, wall, "
                             f"boot-id): {type(exc).__name__} {exc}") from None
        if not (math.isfinite(event.mono) and math.isfinite(event.wall)):
            raise ValueError(f"{where}: mono and wall must be finite numbers")
        events.append(event)
    if not events:
        raise ValueError(f"{source}: no fault events")
    return events


def read_metrics(text: str, source: str = "METRICS") -> list[Sample]:
    """JSON lines ``{"time": UNIX_SECONDS, "value": NUMBER}`` (and optionally ``"name"``, the
    series); ValueError naming the line otherwise."""
    samples = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            t, v = raw["time"], raw["value"]
            if isinstance(t, bool) or isinstance(v, bool):
                raise TypeError("a boolean")
            sample = Sample(float(t), float(v), str(raw.get("name", "")))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{source} line {number}: expected {METRIC_FORM} "
                             f"({type(exc).__name__}: {exc})") from None
        if not (math.isfinite(sample.time) and math.isfinite(sample.value)):
            raise ValueError(f"{source} line {number}: time and value must be finite numbers")
        samples.append(sample)
    return samples


# --- the picture's content ----------------------------------------------------------------------

@dataclass(frozen=True)
class Bar:
    lane: int
    id: str
    kind: str
    start: float
    end: float
    how: str          # how it ended: "reverted (revert)", "expired (deadline)", "no end in the events"
    plan: str | None


@dataclass(frozen=True)
class Mark:
    lane: int
    at: float
    text: str


@dataclass
class Picture:
    """Everything placed on the time axis, in seconds from the first event."""

    first_wall: float
    lanes: list[str] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    boots: list[tuple[float, str]] = field(default_factory=list)   # (when, boot id) of each reboot
    times: list[float] = field(default_factory=list)               # of every event, in order
    samples: list[tuple[float, Sample]] = field(default_factory=list)
    t0: float = 0.0
    t1: float = 1.0

    def x(self, t: float) -> float:
        return LEFT + (t - self.t0) * PLOT / (self.t1 - self.t0)


def lay_out(events: Sequence[FaultEvent], samples: Sequence[Sample] = ()) -> Picture:
    picture = Picture(events[0].wall)
    offsets: dict[str, float] = {}    # boot id -> what to add to mono for seconds on the axis
    for event in events:
        if event.boot_id not in offsets:
            offsets[event.boot_id] = event.wall - picture.first_wall - event.mono
            if len(offsets) > 1:
                picture.boots.append((event.wall - picture.first_wall, event.boot_id))
        picture.times.append(event.mono + offsets[event.boot_id])
    lanes: dict[str, int] = {}
    open_: dict[str, tuple[int, FaultEvent, float]] = {}
    for event, t in zip(events, picture.times, strict=True):
        lane = lanes.setdefault(event.target, len(lanes))
        if event.event == "armed" and event.id is not None:
            open_[event.id] = (lane, event, t)
        elif event.event == "fired" and event.id in open_:
            lane0, armed, _ = open_[event.id]
            open_[event.id] = (lane0, armed, t)
        elif event.ends_lease and event.id in open_:
            lane0, armed, start = open_.pop(event.id)
            why = f" ({event.reason})" if event.reason else ""
            picture.bars.append(Bar(lane0, armed.id or "", armed.kind, start, t, event.event + why,
                                    armed.plan))
        elif event.event in ("refused", "revert-failed"):
            picture.marks.append(Mark(lane, t, f"{event.event} {event.kind}: {event.detail or ''}".strip()))
    picture.lanes = list(lanes)
    picture.samples = [(s.time - picture.first_wall, s) for s in samples]
    every = picture.times + [t for t, _ in picture.samples]
    picture.t0 = min(0.0, *every)
    last = max(every)
    for lane, armed, start in open_.values():
        picture.bars.append(Bar(lane, armed.id or "", armed.kind, start, last, "no end in the events",
                                armed.plan))
    picture.bars.sort(key=lambda bar: (bar.start, bar.lane))
    span = max(last - picture.t0, 1e-3)
    picture.t1 = last + span * 0.02
    return picture


# --- drawing -------------------------------------------------------------------------------------

def nice_step(span: float, target: int = 10) -> float:
    """A tick step of 1, 2 or 5 times a power of ten giving about ``target`` ticks."""
    raw = span / target
    power = 10 ** math.floor(math.log10(raw))
    return float(next(m * power for m in (1, 2, 5, 10) if m * power >= raw))


def fmt_seconds(t: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    return f"{t:.{decimals}f} s"


def render(events: Sequence[FaultEvent], samples: Sequence[Sample] = (), title: str = "pyqga fault timeline",
           source: str = "") -> str:
    """The whole page."""
    p = lay_out(events, samples)
    lanes_bottom = TOP + LANE * max(1, len(p.lanes))
    panel_top = lanes_bottom + GAP
    height = (panel_top + PANEL if p.samples else lanes_bottom) + LEGEND
    svg: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" data-t0="{p.t0!r}" data-t1="{p.t1!r}" font-family="sans-serif">',
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="10" y="22" font-size="17" font-weight="bold">{esc(title)}</text>',
        *(f'<text x="10" y="{40 + 15 * n}" font-size="12" fill="#444">{esc(line)}</text>'
          for n, line in enumerate(summary(events, p, source))),
    ]
    for i, name in enumerate(p.lanes):
        top = TOP + i * LANE
        label = name if len(name) <= MAX_LABEL else name[:MAX_LABEL - 1] + "\u2026"
        svg += [f'<rect x="0" y="{top}" width="{WIDTH}" height="{LANE}" fill="{BACKGROUND[i % 2]}"/>',
                f'<text x="{LEFT - 8}" y="{top + BAR_Y + BAR - 4}" font-size="13" text-anchor="end">'
                f'<title>{esc(name)}</title>{esc(label)}</text>']
    step = nice_step(p.t1 - p.t0)
    tick = math.ceil(p.t0 / step) * step
    bottom = panel_top + PANEL if p.samples else lanes_bottom
    while tick <= p.t1:
        x = p.x(tick)
        svg += [f'<line x1="{x:.2f}" y1="{TOP - 6}" x2="{x:.2f}" y2="{bottom}" stroke="{GRID}"/>',
                f'<text x="{x:.2f}" y="{TOP - 10}" font-size="11" text-anchor="middle" fill="#555">'
                f'{fmt_seconds(tick, step)}</text>']
        tick += step
    for at, boot in p.boots:
        x = p.x(at)
        svg += [f'<line x1="{x:.2f}" y1="{TOP - 6}" x2="{x:.2f}" y2="{bottom}" stroke="#000" '
                f'stroke-dasharray="4 3"/>',
                f'<text x="{x + 3:.2f}" y="{bottom + 14}" font-size="11">reboot, boot {esc(boot[:8])}</text>']
    for bar in p.bars:
        top = TOP + bar.lane * LANE
        x0, x1 = p.x(bar.start), p.x(bar.end)
        tip = (f"{bar.id} {bar.kind} on {p.lanes[bar.lane]}: {bar.start:.3f} s to {bar.end:.3f} s, "
               f"{bar.how}" + (f", plan {bar.plan}" if bar.plan else ""))
        svg += [f'<rect class="bar" x="{x0:.2f}" y="{top + BAR_Y}" width="{max(x1 - x0, 1.0):.2f}" '
                f'height="{BAR}" fill="{color_of(bar.kind)}" data-id="{esc(bar.id)}">'
                f'<title>{esc(tip)}</title></rect>',
                f'<text x="{x0:.2f}" y="{top + BAR_Y - 5}" font-size="11" fill="#222">'
                f'{esc(bar.kind)} \u00b7 {esc(bar.how)}</text>']
    for mark in p.marks:
        x, y = p.x(mark.at), TOP + mark.lane * LANE + BAR_Y + BAR / 2
        svg.append(f'<path d="M{x - 5:.2f},{y - 5:.2f} L{x + 5:.2f},{y + 5:.2f} M{x - 5:.2f},{y + 5:.2f} '
                   f'L{x + 5:.2f},{y - 5:.2f}" stroke="{REFUSED}" stroke-width="2.5">'
                   f'<title>{esc(mark.text)}</title></path>')
    if p.samples:
        svg += metrics_panel(p, panel_top)
    svg += legend(p, height - LEGEND + 8)
    svg.append("</svg>")
    return page(title, "\n".join(svg), events, p)


def summary(events: Sequence[FaultEvent], p: Picture, source: str) -> tuple[str, str]:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(p.first_wall))
    boots = f", {len(p.boots) + 1} boots" if p.boots else ""
    what = f"{os.path.basename(source) or source}: " if source else ""
    return (f"{what}{len(p.bars)} faults on {len(p.lanes)} targets, {len(events)} events{boots}",
            f"time: seconds from the first event ({when} UTC by the guest's clock), on the guest's "
            "monotonic clock; a reboot is placed by the guest's wall clock")


def metrics_panel(p: Picture, top: int) -> list[str]:
    values = [s.value for _, s in p.samples]
    low, high = min(values), max(values)
    if high == low:
        low, high = low - 1, high + 1
    pad = (high - low) * 0.08
    low, high = low - pad, high + pad

    def y(v: float) -> float:
        return top + PANEL - (v - low) * PANEL / (high - low)

    out = [f'<rect x="{LEFT}" y="{top}" width="{PLOT}" height="{PANEL}" fill="none" stroke="#999"/>']
    for at, v in ((top + 12, high), (top + PANEL, low)):
        out.append(f'<text x="{LEFT - 8}" y="{at}" font-size="11" text-anchor="end">{v:.4g}</text>')
    names = list(dict.fromkeys(s.name for _, s in p.samples))
    for n, name in enumerate(names):
        color = SERIES[n % len(SERIES)]
        points = sorted((t, s.value) for t, s in p.samples if s.name == name)
        path = " ".join(f"{p.x(t):.2f},{y(v):.2f}" for t, v in points)
        out.append(f'<polyline class="metric" points="{path}" fill="none" stroke="{color}" '
                   f'stroke-width="1.5"/>')
        out += [f'<circle cx="{p.x(t):.2f}" cy="{y(v):.2f}" r="2.5" fill="{color}"/>' for t, v in points]
        out.append(f'<text x="{LEFT - 8}" y="{top + 34 + 16 * n}" font-size="12" text-anchor="end" '
                   f'fill="{color}">{esc(name or "metric")}</text>')
    return out


def legend(p: Picture, top: int) -> list[str]:
    out, x = [], 10
    for kind in dict.fromkeys(bar.kind for bar in p.bars):
        out += [f'<rect x="{x}" y="{top}" width="14" height="14" fill="{color_of(kind)}"/>',
                f'<text x="{x + 19}" y="{top + 12}" font-size="12">{esc(kind)}</text>']
        x += 30 + 7 * len(kind)
    if p.marks:
        out.append(f'<text x="{x}" y="{top + 12}" font-size="12" fill="{REFUSED}">\u2715 refused or '
                   f'failed to revert</text>')
    return out


def page(title: str, svg: str, events: Sequence[FaultEvent], p: Picture) -> str:
    rows = "\n".join(
        f"<tr><td>{t:.3f}</td><td>{esc(time.strftime('%H:%M:%S', time.gmtime(e.wall)))}"
        f"{esc(f'.{int(e.wall % 1 * 1000):03d}')}</td><td>{esc(e.event)}</td><td>{esc(e.id or '')}</td>"
        f"<td>{esc(e.kind)}</td><td>{esc(e.target)}</td><td>{esc(e.reason or e.detail or '')}</td>"
        f"<td>{esc(e.plan or '')}</td><td>{esc(e.boot_id[:8])}</td></tr>"
        for e, t in zip(events, p.times, strict=True))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ margin: 0; font-family: sans-serif; }}
svg {{ display: block; }}
table {{ border-collapse: collapse; margin: 16px 10px; font-size: 12px; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 2px 8px; text-align: left; }}
</style></head>
<body>
{svg}
<details><summary style="margin: 8px 10px">Every event ({len(events)})</summary>
<table><tr><th>s</th><th>wall (UTC)</th><th>event</th><th>id</th><th>kind</th><th>target</th>
<th>reason / detail</th><th>plan</th><th>boot</th></tr>
{rows}
</table></details>
</body></html>
"""
