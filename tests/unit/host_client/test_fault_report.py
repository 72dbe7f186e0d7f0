"""``pyqga fault report``'s page as HTML: what it draws, its time base, its escaping, its input
errors (tests/process/test_fault_report_render.py looks at the picture in Chromium)."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from pyqga.host_client.cli import main
from pyqga.host_client.fault_report import COLORS, lay_out, read_events, read_metrics, render

BOOT = "0123456789abcdef0123456789abcdef"
WALL = 1_733_000_000.0


def ev(event: str, id: str | None, kind: str, target: str, mono: float, boot: str = BOOT,
       wall: float | None = None, **extra: str) -> dict[str, Any]:
    return {"event": event, "id": id, "kind": kind, "target": target, "mono": mono,
            "wall": WALL + mono if wall is None else wall, "boot-id": boot, **extra}


def lines(events: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(e) + "\n" for e in events)


class Tags(HTMLParser):
    """Every start tag with its attributes, and all text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parsed(page: str) -> Tags:
    tags = Tags()
    tags.feed(page)
    return tags


EVENTS = [ev("armed", "f1", "disk-full", "/data", 10.0), ev("fired", "f1", "disk-full", "/data", 10.5),
          ev("armed", "f2", "process-pause", "pid:7", 11.0),
          ev("fired", "f2", "process-pause", "pid:7", 11.0),
          ev("reverted", "f1", "disk-full", "/data", 13.0, reason="revert"),
          ev("expired", "f2", "process-pause", "pid:7", 16.0, reason="deadline"),
          ev("refused", None, "io-stall", "/data", 17.0, detail="no dm")]


def test_a_bar_per_lease_in_a_lane_per_target_from_fired_to_its_end() -> None:
    picture = lay_out(read_events(lines(EVENTS)))
    assert picture.lanes == ["/data", "pid:7"]
    assert [(b.id, b.lane, b.start, b.end, b.how) for b in picture.bars] == [
        ("f1", 0, 0.5, 3.0, "reverted (revert)"), ("f2", 1, 1.0, 6.0, "expired (deadline)")]
    assert [(m.lane, m.at) for m in picture.marks] == [(0, 7.0)]
    tags = parsed(render(read_events(lines(EVENTS))))
    bars = [attrs for tag, attrs in tags.tags if tag == "rect" and attrs.get("class") == "bar"]
    assert [(b["data-id"], b["fill"]) for b in bars] == [("f1", COLORS["disk-full"]),
                                                         ("f2", COLORS["process-pause"])]
    text = "".join(tags.text)
    assert "disk-full \u00b7 reverted (revert)" in text and "process-pause \u00b7 expired (deadline)" in text


def test_the_time_base_is_the_monotonic_clock_so_a_clock_step_does_not_move_bars() -> None:
    stepped = [ev("armed", "f1", "clock-step", "clock", 5.0),
               ev("fired", "f1", "clock-step", "clock", 5.0, wall=WALL + 5.0 + 3600),
               ev("reverted", "f1", "clock-step", "clock", 7.0, wall=WALL + 7.0, reason="revert")]
    assert [(b.start, b.end) for b in lay_out(read_events(lines(stepped))).bars] == [(0.0, 2.0)]


def test_a_reboot_is_placed_by_the_wall_clock_of_its_first_event() -> None:
    events = [ev("armed", "f1", "drop-writes", "/data", 100.0),
              ev("expired", "f1", "drop-writes", "/data", 3.0, boot="b2" * 16, wall=WALL + 130.0,
                 reason="agent-restart")]
    picture = lay_out(read_events(lines(events)))
    assert picture.boots == [(30.0, "b2" * 16)]
    assert [(b.start, b.end) for b in picture.bars] == [(0.0, 30.0)]
    assert "reboot, boot b2b2b2b2" in "".join(parsed(render(read_events(lines(events)))).text)


def test_a_lease_without_an_end_runs_to_the_last_time_and_says_so() -> None:
    events = [ev("armed", "f1", "net-loss", "eth0", 1.0), ev("armed", "f2", "cpu-hog", "cpu", 4.0)]
    bars = lay_out(read_events(lines(events))).bars
    assert [(b.id, b.end, b.how) for b in bars] == [("f1", 3.0, "no end in the events"),
                                                     ("f2", 3.0, "no end in the events")]


def test_metrics_share_the_axis_through_unix_time() -> None:
    samples = read_metrics(json.dumps({"time": WALL + 12.0, "value": 12.5}) + "\n"
                           + json.dumps({"time": WALL + 14.0, "value": 3, "name": "p99"}) + "\n")
    picture = lay_out(read_events(lines(EVENTS)), samples)
    assert [(t, s.value, s.name) for t, s in picture.samples] == [(2.0, 12.5, ""), (4.0, 3.0, "p99")]
    tags = parsed(render(read_events(lines(EVENTS)), samples))
    assert len([a for t, a in tags.tags if t == "polyline" and a.get("class") == "metric"]) == 2


HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>&amp;\x07'


def test_every_text_from_the_events_is_escaped() -> None:
    events = [ev("armed", HOSTILE, HOSTILE, HOSTILE, 1.0),
              ev("reverted", HOSTILE, HOSTILE, HOSTILE, 2.0, reason=HOSTILE, plan=HOSTILE),
              ev("refused", None, HOSTILE, HOSTILE, 3.0, detail=HOSTILE)]
    samples = read_metrics(json.dumps({"time": WALL + 1.5, "value": 1, "name": HOSTILE}) + "\n")
    page = render(read_events(lines(events)), samples, title=HOSTILE, source=HOSTILE)
    tags = parsed(page)
    names = {tag for tag, _ in tags.tags}
    assert names <= {"html", "head", "meta", "title", "style", "body", "svg", "rect", "text", "line", "path",
                     "polyline", "circle", "details", "summary", "table", "tr", "th", "td"}, names
    assert not any(name.startswith("on") for _, attrs in tags.tags for name in attrs)
    assert "\x07" not in page
    text = "".join(tags.text)
    assert '"><script>alert(1)</script><img src=x onerror=alert(2)>&amp;\ufffd' in text   # shown as text
    assert HOSTILE[:10] not in page


def test_the_json_document_of_events_json_is_read_too() -> None:
    document = json.dumps({"events": EVENTS, "cursor": 7})
    assert read_events(document) == read_events(lines(EVENTS))


@pytest.mark.parametrize(("text", "error"), [
    ("", "EVENTS: no fault events"),
    ('{"event": "armed"}\n', "EVENTS line 1: not a fault event"),
    (lines(EVENTS[:1]) + "{oops\n", "EVENTS line 2: not JSON"),
    ("[1, 2]\n", "EVENTS line 1: an event is a JSON object, not list"),
])
def test_bad_events_are_one_line_naming_it(text: str, error: str) -> None:
    with pytest.raises(ValueError, match="^" + error.replace("(", r"\(").replace("[", r"\[")):
        read_events(text)


@pytest.mark.parametrize("line", ['{"time": 1}', '{"time": "x", "value": 1}', '{"time": 1, "value": true}',
                                  '{"time": 1, "value": NaN}', "7"])
def test_bad_metrics_are_one_line_naming_it(line: str) -> None:
    with pytest.raises(ValueError, match=r"^METRICS line 2: "):
        read_metrics('{"time": 1, "value": 2}\n' + line + "\n")


def test_the_cli_writes_the_page_and_refuses_bad_input_with_status_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events, metrics, out = tmp_path / "e.jsonl", tmp_path / "m.jsonl", tmp_path / "r.html"
    events.write_text(lines(EVENTS))
    metrics.write_text(json.dumps({"time": WALL + 12, "value": 1}) + "\n")
    assert main(["fault", "report", str(events), "--metrics", str(metrics), "-o", str(out)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>") and 'class="metric"' in out.read_text()
    assert "wrote" in capsys.readouterr().err
    metrics.write_text("not json\n")
    assert main(["fault", "report", str(events), "--metrics", str(metrics), "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip().startswith(f"pyqga: error: {metrics} line 1: expected")
    assert main(["fault", "report", str(tmp_path / "missing"), "-o", str(out)]) == 2
    assert "cannot read" in capsys.readouterr().err
