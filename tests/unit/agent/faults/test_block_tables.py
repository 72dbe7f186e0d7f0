"""The device-mapper kinds' pure parts: the tables they build from a live table and parameters,
the extent splitting of bad-extents, their parameter checks, what the dm ioctl layer sends and
parses, and the reasons a kind is unavailable.  No device-mapper here (tests/vm has the real one)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyqga.agent.faults import block, catalog, dm, kinds
from pyqga.agent.faults.block import Extent, Segment
from pyqga.agent.faults.kinds import Context
from pyqga.agent.faults.machine import Refused
from pyqga.agent.faults.vocabulary import Kind
from pyqga.agent.freeze.mounts import Mount

L = dm.TableLine
LVM = [L(0, 2048, "linear", "8:2 2048"), L(2048, 4096, "linear", "8:3 0"),
       L(6144, 1024, "linear", "8:2 8192")]


def test_a_table_line_prints_as_dmsetup_does() -> None:
    assert L(0, 8, "error", "").text() == "0 8 error "
    assert L(0, 8, "flakey", "8:2 0 0 1 1 drop_writes ").text() == "0 8 flakey 8:2 0 0 1 1 drop_writes "
    assert L(0, 8, "linear", "8:2 0").text() == "0 8 linear 8:2 0"


def test_flakey_turns_every_linear_segment_into_flakey_over_the_same_place() -> None:
    table = block.flakey_table(LVM, "vg-lv", Kind.IO_ERROR, block.flakey_features("write"), 3, 2)
    assert table == [L(0, 2048, "flakey", "8:2 2048 3 2 1 error_writes"),
                     L(2048, 4096, "flakey", "8:3 0 3 2 1 error_writes"),
                     L(6144, 1024, "flakey", "8:2 8192 3 2 1 error_writes")]


@pytest.mark.parametrize(("args", "features"), [
    ({}, "0"),
    ({"io": "write"}, "1 error_writes"),
    ({"io": "read"}, "1 error_reads"),
    ({"drop_writes": True}, "1 drop_writes"),
    ({"corrupt": (7, "w", 255)}, "5 corrupt_bio_byte 7 w 255 0"),
])
def test_flakey_features(args: dict[str, Any], features: str) -> None:
    assert block.flakey_features(**args) == features


def test_delay_has_a_read_a_write_and_a_flush_class_per_segment() -> None:
    assert block.delay_table(LVM[:2], "vg-lv", 10, 20, 30) == [
        L(0, 2048, "delay", "8:2 2048 10 8:2 2048 20 8:2 2048 30"),
        L(2048, 4096, "delay", "8:3 0 10 8:3 0 20 8:3 0 30")]


@pytest.mark.parametrize("line", [L(0, 8, "flakey", "8:2 0 0 1 0"), L(0, 8, "striped", "2 8 8:1 0 8:2 0"),
                                  L(0, 8, "error", ""), L(0, 8, "linear", "8:2")])
def test_a_table_not_all_linear_is_refused_naming_the_segment(line: dm.TableLine) -> None:
    with pytest.raises(Refused, match=f"has a {line.type} segment"):
        block.flakey_table([LVM[0], line], "vg-lv", Kind.DROP_WRITES, "1 drop_writes", 0, 1)
    with pytest.raises(Refused, match="linear"):
        block.error_extents_table([line], "vg-lv", [(0, 1)])


def test_bad_extents_maps_exactly_the_file_to_error() -> None:
    table = [L(0, 1000, "linear", "254:16 0")]
    assert block.error_extents_table(table, "d", [(100, 108), (108, 116), (500, 504)]) == [
        L(0, 100, "linear", "254:16 0"), L(100, 16, "error", ""), L(116, 384, "linear", "254:16 116"),
        L(500, 4, "error", ""), L(504, 496, "linear", "254:16 504")]
    assert block.error_extents_table(table, "d", [(0, 10), (990, 1000)]) == [
        L(0, 10, "error", ""), L(10, 980, "linear", "254:16 10"), L(990, 10, "error", "")]


def test_bad_extents_across_segments_keeps_each_segments_device_and_offset() -> None:
    assert block.error_extents_table(LVM, "vg-lv", [(2000, 2100)]) == [
        L(0, 2000, "linear", "8:2 2048"), L(2000, 48, "error", ""), L(2048, 52, "error", ""),
        L(2100, 4044, "linear", "8:3 52"), L(6144, 1024, "linear", "8:2 8192")]


def test_bad_extents_past_the_device_are_refused() -> None:
    with pytest.raises(Refused, match="past the end"):
        block.error_extents_table(LVM, "vg-lv", [(7000, 7200)])


def _where(table: list[dm.TableLine], sector: int) -> tuple[str, int] | None:
    """Where ``sector`` of the dm device goes: (device, sector) or None for the error target."""
    for line in table:
        if line.start <= sector < line.start + line.length:
            if line.type == "error":
                return None
            device, offset = line.params.split()
            return device, int(offset) + sector - line.start
    raise AssertionError(f"sector {sector} is not mapped")


@settings(max_examples=300, deadline=None)
@given(lengths=st.lists(st.integers(1, 64), min_size=1, max_size=5),
       bad=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 40)), max_size=6))
def test_bad_extents_errors_exactly_the_bad_sectors_and_moves_no_other(lengths: list[int],
                                                                       bad: list[tuple[int, int]]) -> None:
    table, start = [], 0
    for i, length in enumerate(lengths):
        table.append(L(start, length, "linear", f"8:{i % 2} {1000 * i + 7}"))
        start += length
    ranges = [(s, s + n) for s, n in bad if s + n <= start]
    new = block.error_extents_table(table, "d", ranges)
    assert [line.start for line in new] == [0, *(line.start + line.length for line in new[:-1])]
    assert sum(line.length for line in new) == start
    for sector in range(start):
        expected = None if any(s <= sector < e for s, e in ranges) else _where(table, sector)
        assert _where(new, sector) == expected


def test_extents_become_sector_ranges_and_unplaceable_ones_are_refused() -> None:
    assert block.extent_sectors("/f", [Extent(0, 4096, 4096, 0), Extent(4096, 1024, 100, 1)]) == [
        (8, 16), (2, 3)]
    with pytest.raises(Refused, match="inline"):
        block.extent_sectors("/f", [Extent(0, 0, 60, 0x200 | 1)])
    with pytest.raises(Refused, match="not yet allocated"):
        block.extent_sectors("/f", [Extent(0, 0, 4096, 0x4)])


@pytest.mark.parametrize(("kind", "params", "message"), [
    (Kind.IO_ERROR, {"io": "both"}, "must be one of read-write, write, read"),
    (Kind.IO_ERROR, {"up-seconds": -1}, "between 0"),
    (Kind.IO_ERROR, {"down-seconds": 1.5}, "must be int"),
    (Kind.IO_ERROR, {"down-seconds": True}, "must be int"),
    (Kind.IO_DELAY, {"read-ms": 60_001}, "between 0 and 60000"),
    (Kind.IO_DELAY, {"latency": 3}, "takes: read-ms, write-ms, flush-ms"),
    (Kind.CORRUPT, {"value": 256}, "between 0 and 255"),
    (Kind.CORRUPT, {"byte": 0}, "between 1"),
    (Kind.CORRUPT, {"direction": "both"}, "one of write, read"),
    (Kind.DROP_WRITES, {"up-seconds": 1}, "takes: no parameters"),
    (Kind.BAD_EXTENTS, {}, "needs the parameter 'path'"),
    (Kind.BAD_EXTENTS, {"path": 3}, "must be str"),
])
def test_bad_parameters_are_refused(kind: Kind, params: dict[str, Any], message: str) -> None:
    with pytest.raises(Refused, match=message):
        kinds.check_params(kind, params, catalog.PARAMS)


def test_every_dm_kind_documents_its_parameters_in_the_wire_style() -> None:
    for kind in block.PREPARERS:
        for spec in block.PARAMS[kind]:
            assert spec.name == spec.name.lower() and "_" not in spec.name and spec.doc
    assert kinds.check_params(Kind.IO_DELAY, {}, catalog.PARAMS) == {"read-ms": 100, "write-ms": 100,
                                                                     "flush-ms": 100}


# --- the preparers, on a model of the guest --------------------------------------------------

DATA = Mount("/data", "ext4", "/dev/mapper/data", 253, 0)
ROOT = Mount("/", "ext4", "/dev/vda", 254, 0)
LIVE = [L(0, 131072, "linear", "254:16 0")]


@pytest.fixture
def guest(monkeypatch: pytest.MonkeyPatch) -> Context:
    monkeypatch.setattr(block, "dm_name", lambda major, minor: "data" if (major, minor) == (253, 0) else None)
    monkeypatch.setattr(dm, "table", lambda name: list(LIVE))
    monkeypatch.setattr(block, "flakey_accepts", lambda table, feature: False)   # Debian's 6.1
    monkeypatch.setattr(block, "unavailable", lambda kind: None)
    return Context([ROOT, DATA], frozenset({"254:0"}))


@pytest.mark.parametrize(("kind", "params", "new"), [
    ("io-error", {}, "0 131072 flakey 254:16 0 0 1 0"),
    ("io-error", {"io": "write", "up-seconds": 5, "down-seconds": 2},
     "0 131072 flakey 254:16 0 5 2 1 error_writes"),
    ("io-delay", {"read-ms": 7}, "0 131072 delay 254:16 0 7 254:16 0 100 254:16 0 100"),
    ("corrupt", {"value": 90, "byte": 3}, "0 131072 flakey 254:16 0 0 1 5 corrupt_bio_byte 3 w 90 0"),
    ("drop-writes", {}, "0 131072 flakey 254:16 0 0 1 1 drop_writes"),
])
def test_a_dm_kind_swaps_in_its_table_and_its_undo_is_the_live_table(
        guest: Context, kind: str, params: dict[str, Any], new: str) -> None:
    spec = catalog.prepare(kind, "/data", params, False, guest)
    assert spec.device == "253:0"
    assert [step["op"] for step in spec.apply] == ["dm-table"]
    assert [" ".join(map(str, line)) for line in spec.apply[0]["table"]] == [new]
    assert spec.undo == ({"op": "dm-table", "name": "data", "table": [[0, 131072, "linear", "254:16 0"]]},)


@pytest.mark.parametrize(("kind", "params", "message"), [
    ("io-error", {"io": "read"}, "needs dm-flakey's error_reads"),
    ("corrupt", {"direction": "read"}, "leaves the data unchanged"),
    ("io-delay", {"read-ms": 0, "write-ms": 0, "flush-ms": 0}, "needs a delay"),
    ("io-error", {"up-seconds": 0, "down-seconds": 0}, "cannot both be 0"),
])
def test_what_the_kernel_cannot_do_is_refused_with_the_reason(
        guest: Context, kind: str, params: dict[str, Any], message: str) -> None:
    with pytest.raises(Refused, match=message):
        catalog.prepare(kind, "/data", params, False, guest)


def test_a_mount_not_on_dm_is_refused_naming_the_fix(guest: Context) -> None:
    with pytest.raises(Refused, match=r"/dev/vda, not a device-mapper device.*'A dm layer'"):
        catalog.prepare("drop-writes", "/", {}, False, guest)


def test_bad_extents_refuses_a_path_on_another_filesystem(guest: Context, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(Refused, match="is not on /data"):
        catalog.prepare("bad-extents", "/data", {"path": str(tmp_path / "f")}, False, guest)
    with pytest.raises(Refused, match="cannot stat"):
        catalog.prepare("bad-extents", "/data", {"path": "/data/no-such-file"}, False, guest)
    with pytest.raises(Refused, match="absolute"):
        catalog.prepare("bad-extents", "/data", {"path": "relative"}, False, guest)


def test_capabilities_ask_whether_the_target_fits_without_a_path(guest: Context) -> None:
    on_data = {c["kind"]: c for c in catalog.capabilities("/data", guest)}
    assert all(on_data[kind.value]["available"] for kind in block.PREPARERS), on_data
    on_root = {c["kind"]: c for c in catalog.capabilities("/", guest)}
    assert "not a device-mapper device" in on_root["bad-extents"]["reason"]


# --- availability ------------------------------------------------------------------------------

@pytest.fixture
def no_kernel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty modules tree, no loaded modules, no dm answering."""
    def no_dm() -> dict[str, tuple[int, int, int]]:
        raise OSError(2, "no dm")
    monkeypatch.setattr(dm, "targets", no_dm)
    monkeypatch.setattr(block, "MODULES", str(tmp_path / "modules"))
    monkeypatch.setattr(block, "SYS_MODULE", str(tmp_path / "sys-module"))
    monkeypatch.setattr(block, "MODPROBE", str(tmp_path / "modprobe-path"))
    (tmp_path / "modules/6.1/kernel/drivers/md").mkdir(parents=True)
    (tmp_path / "sys-module").mkdir()
    return tmp_path


def test_a_target_the_kernel_lacks_is_named(no_kernel: Path) -> None:
    assert block.target_missing("flakey", "6.1") == ("this kernel (6.1) has no dm-flakey target: not loaded, "
                                                     f"not built in, not in {no_kernel}/modules/6.1")
    assert block.target_missing("error", "6.1") is None


def test_a_target_module_on_disk_needs_the_module_loader(no_kernel: Path) -> None:
    (no_kernel / "modules/6.1/kernel/drivers/md/dm-delay.ko.xz").write_bytes(b"")
    (no_kernel / "modprobe-path").write_text(str(no_kernel / "sbin-modprobe") + "\n")
    assert "module loader" in (block.target_missing("delay", "6.1") or "")
    (no_kernel / "sbin-modprobe").write_text("")
    assert block.target_missing("delay", "6.1") is None


def test_a_loaded_or_built_in_target_is_available(no_kernel: Path) -> None:
    (no_kernel / "sys-module/dm_flakey").mkdir()
    assert block.target_missing("flakey", "6.1") is None
    (no_kernel / "modules/6.1/modules.builtin").write_text("kernel/drivers/md/dm-delay.ko\n")
    assert block.target_missing("delay", "6.1") is None


# --- the ioctl layer's bytes -------------------------------------------------------------------

def test_a_table_goes_out_as_8_byte_aligned_specs_each_pointing_to_the_next() -> None:
    payload = dm._table_payload([L(0, 8, "linear", "8:2 0"), L(8, 8, "error", "")])
    first = dm._SPEC.unpack_from(payload, 0)
    assert first[:2] == (0, 8) and first[4].rstrip(b"\0") == b"linear" and first[3] % 8 == 0
    assert payload[dm._SPEC.size:].startswith(b"8:2 0\0")
    second = dm._SPEC.unpack_from(payload, first[3])
    assert second[:2] == (8, 8) and second[4].rstrip(b"\0") == b"error" and len(payload) % 8 == 0


def test_the_kernels_table_reply_is_read_with_offsets_from_the_data_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytearray()
    for start, length, kind, params in ((0, 8, b"linear", b"8:2 0"), (8, 8, b"error", b"")):
        spec_at = len(data)
        data += dm._SPEC.pack(start, length, 0, 0, kind) + params + b"\0"
        data += bytes(-len(data) % 8)
        struct.pack_into("=I", data, spec_at + 20, len(data))   # ``next``: from the data start
    fields = (4, 0, 0, 0, 312, 2, 0, 0, 0, 0, 0, b"", b"", b"")
    monkeypatch.setattr(dm, "_call", lambda *args, **kwargs: (fields, bytes(data)))
    assert dm.table("x") == [L(0, 8, "linear", "8:2 0"), L(8, 8, "error", "")]


def test_device_numbers_are_decoded_as_the_kernel_encodes_them(monkeypatch: pytest.MonkeyPatch) -> None:
    dev = (0x12345 & 0xFF) | (253 << 8) | ((0x12345 & ~0xFF) << 12)   # huge_encode_dev(253, 0x12345)
    fields = (4, 0, 0, 0, 312, 1, 2, dm.SUSPEND_FLAG, 0, 0, dev, b"", b"", b"")
    monkeypatch.setattr(dm, "_call", lambda *args, **kwargs: (fields, b""))
    assert dm.info("x") == dm.DeviceInfo("x", (253, 0x12345), True, 2, 1)


def test_segment_parsing() -> None:
    assert block.linear_segments(LVM[:1], "d", Kind.IO_DELAY) == [Segment(0, 2048, "8:2", 2048)]
    assert block.merge_ranges([(5, 9), (0, 2), (2, 3), (8, 12), (20, 20)]) == [(0, 3), (5, 12)]
