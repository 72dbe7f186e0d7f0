"""The network kinds without a network: parameters and their ranges, the refusals, the recipes
(the nft script, the netem words, what a step from a snapshot may carry) and the model kernel's
tables and root qdiscs, through :func:`run_step` as the engine and the keeper call it."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from pyqga.agent.faults import catalog, kinds, nettools, network
from pyqga.agent.faults.kinds import Context
from pyqga.agent.faults.machine import Refused
from pyqga.agent.faults.recipes import StepError, check_step, run_step, run_steps
from pyqga.agent.faults.vocabulary import Kind
from tests.rig.model_kernel import ModelFaultKernel

CONTEXT = Context([], frozenset())
IFACES = ["eth0", "lo", "veth-a"]


@pytest.fixture
def guest(monkeypatch: pytest.MonkeyPatch) -> dict[str, nettools.RootQdisc]:
    """Interfaces and root qdiscs as the preparers see them (a test changes the dict)."""
    roots = {"eth0": nettools.RootQdisc("fq_codel", "0:"), "lo": nettools.RootQdisc("noqueue", "0:"),
             "veth-a": nettools.RootQdisc("noqueue", "0:")}
    monkeypatch.setattr(nettools, "interfaces", lambda: sorted(roots))
    monkeypatch.setattr(nettools, "interface_exists", lambda name: name in roots)
    monkeypatch.setattr(nettools, "root_qdisc", lambda dev: roots.get(dev))
    return roots


def prepare(kind: str, target: str, params: dict[str, Any] | None = None, force: bool = False) -> kinds.Spec:
    """As catalog.prepare, without asking this machine whether it has nft and tc."""
    checked = kinds.check_params(Kind(kind), params, catalog.PARAMS)
    return catalog.PREPARERS[Kind(kind)](target, checked, force, CONTEXT)


# --- parameters -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "params", "message"), [
    ("net-delay", {"delay-ms": 60_001}, "net-delay: delay-ms must be between 0 and 60000, not 60001"),
    ("net-delay", {"delay-ms": -1}, "delay-ms must be between 0 and 60000"),
    ("net-delay", {"jitter-ms": 1.5}, "jitter-ms must be int"),
    ("net-loss", {"percent": 100.5}, "net-loss: percent must be between 0 and 100, not 100.5"),
    ("net-loss", {"percent": float("nan")}, "percent must be finite"),
    ("net-duplicate", {"correlation": -3}, "correlation must be between 0 and 100"),
    ("net-reorder", {"delay-ms": 0}, "delay-ms must be between 1 and 60000"),
    ("net-corrupt", {"percent": "5"}, "percent must be float"),
    ("net-corrupt", {"rate": 5}, "net-corrupt has no parameter 'rate'; it takes: percent, correlation"),
    ("net-partition", {"direction": "sideways"}, "direction must be one of both, in, out"),
])
def test_out_of_range_parameters_are_refused_in_one_line(kind: str, params: dict[str, Any],
                                                         message: str) -> None:
    with pytest.raises(Refused) as caught:
        kinds.check_params(Kind(kind), params, catalog.PARAMS)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(("kind", "params", "words"), [
    ("net-delay", {}, ["delay", "100ms"]),
    ("net-delay", {"delay-ms": 50, "jitter-ms": 10, "correlation": 25}, ["delay", "50ms", "10ms", "25%"]),
    ("net-delay", {"correlation": 25}, ["delay", "100ms", "0ms", "25%"]),
    ("net-loss", {"percent": 0.5}, ["loss", "0.5%"]),
    ("net-loss", {"percent": 30, "correlation": 12.25}, ["loss", "30%", "12.25%"]),
    ("net-duplicate", {}, ["duplicate", "10%"]),
    ("net-reorder", {}, ["delay", "10ms", "reorder", "25%"]),
    ("net-corrupt", {"percent": 0.0001}, ["corrupt", "0.0001%"]),
])
def test_netem_words(kind: str, params: dict[str, Any], words: list[str]) -> None:
    checked = kinds.check_params(Kind(kind), params, catalog.PARAMS)
    assert network.netem_args(Kind(kind), checked) == words
    assert all(nettools.NETEM_WORD_RE.fullmatch(w) for w in words)


# --- the netem recipe -----------------------------------------------------------------------------

def test_a_netem_fault_holds_its_interface_and_undoes_by_its_own_handle(guest: dict[str, Any]) -> None:
    spec = prepare("net-delay", "eth0", {"delay-ms": 200})
    assert spec.device == "net:eth0"
    (apply,), (undo,) = spec.apply, spec.undo
    assert apply == {"op": "netem", "dev": "eth0", "handle": apply["handle"], "args": ["delay", "200ms"],
                     "mode": "add"}
    assert undo == {"op": "netem-remove", "dev": "eth0", "handle": apply["handle"]}
    assert 0x1000 <= int(apply["handle"], 16) < 0x8000
    check_step(apply)
    check_step(undo)


def test_a_root_qdisc_someone_set_is_refused_unless_forced(guest: dict[str, Any]) -> None:
    guest["eth0"] = nettools.RootQdisc("htb", "1:")
    with pytest.raises(Refused, match=r"eth0's root qdisc is htb 1:, someone's; revert restores only the "
                                      r"kernel's default root qdisc.*pass force"):
        prepare("net-loss", "eth0")
    assert prepare("net-loss", "eth0", force=True).apply[0]["mode"] == "replace"


@pytest.mark.parametrize("kind", [k.value for k in network.NETEM_KINDS] + ["net-partition"])
def test_an_interface_that_does_not_exist_is_refused(guest: dict[str, Any], kind: str) -> None:
    with pytest.raises(Refused, match=rf"{kind}: no network interface 'eth9'.*has: eth0, lo, veth-a"):
        prepare(kind, "eth9")


# --- the partition recipe -------------------------------------------------------------------------

def test_a_partition_is_a_table_of_its_own(guest: dict[str, Any]) -> None:
    spec = prepare("net-partition", "any", {"peers": "10.0.0.2, fd00::/64", "ports": "5432,8000-8100"})
    (apply,), (undo,) = spec.apply, spec.undo
    table = apply["table"]
    assert nettools.TABLE_RE.fullmatch(table) and spec.device == f"nft:{table}"
    assert apply == {"op": "nft-table", "table": table, "iface": "", "peers": ["10.0.0.2", "fd00::/64"],
                     "ports": ["5432", "8000-8100"], "protocol": "any", "direction": "both"}
    assert undo == {"op": "nft-delete", "table": table}
    other = prepare("net-partition", "any", {"peers": "10.0.0.2"})
    assert other.apply[0]["table"] != table   # two partitions never share a table


RULE = '    iifname "veth-a" ip saddr { 10.0.0.2/32, 10.1.0.0/16 } meta l4proto udp th '


def test_the_partition_script() -> None:
    script = nettools.partition_script("pyqga-0123456789ab", "veth-a", ["10.0.0.2", "10.1.0.0/16"], ["53"],
                                       "udp", "in")
    assert script == (
        "table inet pyqga-0123456789ab {\n"
        "  chain input {\n"
        "    type filter hook input priority filter - 10; policy accept;\n"
        f"{RULE}sport {{ 53 }} counter drop\n"
        f"{RULE}dport {{ 53 }} counter drop\n"
        "  }\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter - 10; policy accept;\n"
        f"{RULE}sport {{ 53 }} counter drop\n"
        f"{RULE}dport {{ 53 }} counter drop\n"
        "  }\n"
        "  chain output {\n"
        "    type filter hook output priority filter - 10; policy accept;\n"
        "  }\n"
        "}\n")


def test_a_partition_both_ways_drops_to_and_from_each_family() -> None:
    script = nettools.partition_script("pyqga-0123456789ab", "", ["10.0.0.2", "fd00::1"], [], "any", "both")
    rules = [line.strip() for line in script.splitlines() if line.strip().endswith("drop")]
    assert rules == [
        "ip saddr { 10.0.0.2/32 } counter drop", "ip6 saddr { fd00::1/128 } counter drop",   # input
        "ip saddr { 10.0.0.2/32 } counter drop", "ip6 saddr { fd00::1/128 } counter drop",   # forward, in
        "ip daddr { 10.0.0.2/32 } counter drop", "ip6 daddr { fd00::1/128 } counter drop",   # forward, out
        "ip daddr { 10.0.0.2/32 } counter drop", "ip6 daddr { fd00::1/128 } counter drop",   # output
    ]
    everything = nettools.partition_script("pyqga-0123456789ab", "", [], ["80"], "any", "out")
    assert "meta l4proto { tcp, udp } th dport { 80 } counter drop" in everything


@pytest.mark.parametrize(("target", "params", "message"), [
    ("vsock", {}, "net-partition: vsock is the agent's control channel: virtio-serial, a serial line or "
                  "vsock, never IP"),
    ("any", {"peers": "vsock:3"}, "peers 'vsock:3' is the agent's control channel"),
    ("any", {"protocol": "vsock"}, "protocol 'vsock' is the agent's control channel"),
    ("any", {"protocol": "icmp"}, "protocol must be one of any, tcp, udp, not 'icmp'"),
    ("any", {"peers": "10.0.0.300"}, "'10.0.0.300' is not an IP address or a CIDR network"),
    ("any", {"ports": "0"}, "'0' is not a port (1-65535) or a range LOW-HIGH"),
    ("any", {"ports": "90-80"}, "'90-80' is not a port"),
    ("any", {"ports": "http"}, "'http' is not a port"),
    ("any", {"peers": ",".join(f"10.0.{i // 256}.{i % 256}" for i in range(300))}, "at most 256 peers"),
])
def test_bad_partition_rules_are_refused(guest: dict[str, Any], target: str, params: dict[str, Any],
                                         message: str) -> None:
    with pytest.raises(Refused) as caught:
        prepare("net-partition", target, params)
    assert message in str(caught.value), caught.value


def test_netem_on_the_control_channel_is_refused_by_name(guest: dict[str, Any]) -> None:
    with pytest.raises(Refused, match="net-delay: virtio-serial is the agent's control channel"):
        prepare("net-delay", "virtio-serial")


# --- steps read back from a snapshot ---------------------------------------------------------------

@pytest.mark.parametrize("step", [
    {"op": "nft-delete", "table": "filter"},                       # not one of ours
    {"op": "nft-delete", "table": "pyqga-00000000; flush ruleset"},
    {"op": "nft-table", "table": "pyqga-0123456789ab", "iface": "", "peers": ["1.2.3.4 } accept"],
     "ports": [], "protocol": "any", "direction": "both"},
    {"op": "nft-table", "table": "pyqga-0123456789ab", "iface": 'x" accept', "peers": [], "ports": [],
     "protocol": "any", "direction": "both"},
    {"op": "netem", "dev": "eth0", "handle": "1234", "args": ["delay", "1ms;reboot"], "mode": "add"},
    {"op": "netem", "dev": "eth0", "handle": "1234", "args": ["delay"], "mode": "change"},
    {"op": "netem-remove", "dev": "eth0 root", "handle": "1234"},
    {"op": "netem-remove", "dev": "eth0", "handle": "12345"},
])
def test_a_network_step_carries_names_and_words_never_syntax(step: dict[str, Any]) -> None:
    with pytest.raises(StepError):
        check_step(step)


# --- the model kernel ------------------------------------------------------------------------------

def model() -> ModelFaultKernel:
    return ModelFaultKernel({}, {}, interfaces={"eth0": "fq_codel", "lo": "noqueue"})


def test_netem_then_its_undo_twice_leaves_the_root_qdisc_as_it_was(guest: dict[str, Any]) -> None:
    k = model()
    before = k.state()
    spec = prepare("net-reorder", "eth0")
    assert run_steps(spec.apply, k) == (None, True)
    assert k.qdisc["eth0"] == ("netem", spec.apply[0]["handle"] + ":", ("delay", "10ms", "reorder", "25%"))
    for _ in range(2):   # the agent and the keeper may both run it
        assert run_steps(spec.undo, k) == (None, True)
    assert k.state() == before and k.count("netem-remove") == 1


def test_netem_add_over_a_root_someone_set_meanwhile_fails_and_changes_nothing(guest: dict[str, Any]) -> None:
    k = model()
    spec = prepare("net-loss", "eth0")   # prepared over the default root ...
    k.foreign_qdisc("eth0", "tbf", "1:")  # ... then someone sets theirs
    error, changed = run_steps(spec.apply, k)
    assert error is not None and "File exists" in error and changed is False
    run_steps(spec.undo, k)              # an undo by our handle leaves theirs alone
    assert k.qdisc["eth0"] == ("tbf", "1:", ())


def test_a_partition_table_and_its_undo_twice(guest: dict[str, Any]) -> None:
    k = model()
    spec = prepare("net-partition", "lo", {"ports": "80", "direction": "out"})
    assert run_steps(spec.apply, k) == (None, True)
    table = spec.apply[0]["table"]
    assert k.tables == {table: {"iface": "lo", "peers": [], "ports": ["80"], "protocol": "any",
                                "direction": "out"}}
    with pytest.raises(OSError) as caught:
        run_step(spec.apply[0], k)
    assert caught.value.errno == errno.EEXIST
    run_steps(spec.undo, k)
    run_steps(spec.undo, k)
    assert k.tables == {} and k.count("nft-delete") == 1


# --- capabilities ----------------------------------------------------------------------------------

def test_a_missing_tool_makes_its_kinds_unavailable_with_the_package_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nettools, "tool", lambda name: None)
    assert catalog.unavailable(Kind.NET_PARTITION) == "nft is not installed (Debian's nftables package)"
    assert catalog.unavailable(Kind.NET_LOSS) == "tc is not installed (Debian's iproute2 package)"
    with pytest.raises(Refused, match="net-delay is not available in this guest: tc is not installed"):
        catalog.prepare("net-delay", "eth0", {}, False, CONTEXT)


def test_a_kernel_without_the_module_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nettools, "tool", lambda name: f"/usr/sbin/{name}")
    asked: list[tuple[str, str]] = []

    def missing(module: str, tree: str, release: str | None = None, what: str = "") -> str:
        asked.append((module, tree))
        return f"this kernel has no {module}"
    monkeypatch.setattr(network, "module_missing", missing)
    assert catalog.unavailable(Kind.NET_PARTITION) == "this kernel has no nf_tables"
    assert catalog.unavailable(Kind.NET_CORRUPT) == "this kernel has no sch_netem"
    assert asked == [("nf_tables", "kernel/net/netfilter"), ("sch_netem", "kernel/net/sched")]
