"""``pyqga fault report``'s page as people see it: rendered by headless Chromium (Debian's
``chromium``), and the screenshot's pixels checked against the times in the events.

The page puts its SVG at (0, 0) at one CSS pixel a pixel, so a time t is at column
``fr.LEFT + (t - t0) * fr.PLOT / (t1 - t0)``: t0 and t1 are the axis's ends (the SVG's data-t0 and
data-t1), the times come from the events here.  Skips without chromium; fails in CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from pyqga.host_client import fault_report as fr
from pyqga.host_client.cli import main
from tests.rig.png import Image, read_png
from tests.rig.requirements import require

BOOT = "5eed" * 8
WALL = 1_733_000_000.0
WINDOW = (1200, 600)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars",
                  "--force-device-scale-factor=1")


def ev(event: str, id: str | None, kind: str, target: str, mono: float, wall_shift: float = 0.0,
       **extra: str) -> dict[str, object]:
    return {"event": event, "id": id, "kind": kind, "target": target, "mono": 500.0 + mono,
            "wall": WALL + mono + wall_shift, "boot-id": BOOT, **extra}


# Three targets; the clock-step's events carry a wall clock an hour ahead, which must not move it.
EVENTS = [
    ev("armed", "f1", "disk-full", "/data", 0.0), ev("fired", "f1", "disk-full", "/data", 1.0),
    ev("armed", "f2", "process-pause", "pid:4242", 2.0), ev("fired", "f2", "process-pause", "pid:4242", 2.0),
    ev("armed", "f3", "clock-step", "clock", 3.0), ev("fired", "f3", "clock-step", "clock", 3.0, 3600),
    ev("reverted", "f1", "disk-full", "/data", 4.0, 3600, reason="revert"),
    ev("reverted", "f3", "clock-step", "clock", 5.0, reason="revert"),
    ev("refused", None, "io-stall", "/data", 6.0, detail="not on dm"),
    ev("expired", "f2", "process-pause", "pid:4242", 7.5, reason="deadline"),
]
BARS = [("/data", "disk-full", 1.0, 4.0), ("pid:4242", "process-pause", 2.0, 7.5),
        ("clock", "clock-step", 3.0, 5.0)]
# Latency: 10 ms, 50 ms while the process is paused.
METRICS = [(t / 2, 50.0 if 2.0 <= t / 2 <= 7.5 else 10.0) for t in range(0, 19)]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    require(path is not None, "needs Debian's chromium (apt-get install chromium) to render the page")
    assert path is not None
    return path


def screenshot(page: Path, png: Path, tmp: Path) -> Image:
    command = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}",
               f"--screenshot={png}", f"--window-size={WINDOW[0]},{WINDOW[1]}", page.as_uri()]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and png.exists(), f"chromium failed ({done.returncode}): {done.stderr[-800:]}"
    print(f"chromium screenshot: {time.monotonic() - started:.2f} s")
    return read_png(png)


def rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def near(a: tuple[int, int, int], b: tuple[int, int, int], tolerance: int = 10) -> bool:
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) <= tolerance


def test_chromium_draws_each_bar_where_its_times_say(tmp_path: Path) -> None:
    events, metrics, page = tmp_path / "events.jsonl", tmp_path / "latency.jsonl", tmp_path / "faults.html"
    events.write_text("".join(json.dumps(e) + "\n" for e in EVENTS))
    metrics.write_text("".join(json.dumps({"time": WALL + t, "value": v}) + "\n" for t, v in METRICS))
    assert main(["fault", "report", str(events), "--metrics", str(metrics), "-o", str(page)]) == 0
    html = page.read_text()
    t0, t1 = (float(v) for v in re.search(r'data-t0="([^"]+)" data-t1="([^"]+)"', html).groups())  # type: ignore[union-attr]

    def x(t: float) -> int:
        return round(fr.LEFT + (t - t0) * fr.PLOT / (t1 - t0))

    image = screenshot(page, tmp_path / "faults.png", tmp_path)
    assert (image.width, image.height) == WINDOW
    lanes = ["/data", "pid:4242", "clock"]      # in order of first appearance: one lane per target
    for target, kind, start, end in BARS:
        y = fr.TOP + lanes.index(target) * fr.LANE + fr.BAR_Y + fr.BAR // 2
        color = rgb(fr.COLORS[kind])
        inside = [image.pixel(x(start + (end - start) * f) + (2 if f == 0 else -2 if f == 1 else 0), y)
                  for f in (0, 0.25, 0.5, 0.75, 1)]
        assert all(near(p, color) for p in inside), (kind, inside, color)
        for outside in (x(start) - 4, x(end) + 4):
            assert not near(image.pixel(outside, y), color, 40), (kind, "spills to", outside)
        # The bar's own lane only: the lanes above and below have no pixel of its color at its middle.
        for other in range(len(lanes) + 1):
            if other != lanes.index(target):
                middle = image.pixel(x((start + end) / 2), fr.TOP + other * fr.LANE + fr.BAR_Y + fr.BAR // 2)
                assert not near(middle, color, 40), (kind, "also in lane", other)
    # Exactly three lanes: alternating backgrounds, then the white gap before the metrics panel.
    right = fr.LEFT + fr.PLOT + 10
    backgrounds = [image.pixel(right, fr.TOP + i * fr.LANE + 4) for i in range(3)]
    expected = [rgb(fr.BACKGROUND[i % 2]) for i in range(3)]
    assert all(near(p, e, 3) for p, e in zip(backgrounds, expected, strict=True)), backgrounds
    assert near(image.pixel(right, fr.TOP + 3 * fr.LANE + fr.GAP // 2), (255, 255, 255), 3)
    # The refusal: a red mark at 6 s in the /data lane.
    middle = fr.TOP + fr.BAR_Y + fr.BAR // 2
    mark = [image.pixel(x(6.0) + dx, middle + dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)]
    assert any(near(p, rgb(fr.REFUSED), 40) for p in mark), mark
    # The metrics line: a point of the series' color at each sample's place (10 ms low, 50 ms high).
    top = fr.TOP + 3 * fr.LANE + fr.GAP
    low, high = 10 - 40 * 0.08, 50 + 40 * 0.08

    def y_of(v: float) -> int:
        return round(top + fr.PANEL - (v - low) * fr.PANEL / (high - low))

    for t, v in METRICS:
        around = [image.pixel(x(t) + dx, y_of(v) + dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)]
        assert any(near(p, rgb(fr.SERIES[0]), 30) for p in around), (t, v, around)
        other = y_of(10.0 if v == 50.0 else 50.0)
        line = rgb(fr.SERIES[0])
        assert not any(near(image.pixel(x(t) + dx, other), line, 30) for dx in (-1, 0, 1)), (t, v)
    if os.environ.get("PYQGA_KEEP_REPORT_PNG"):
        shutil.copy(tmp_path / "faults.png", os.environ["PYQGA_KEEP_REPORT_PNG"])
