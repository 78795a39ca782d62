"""The fuzz suite: CI's seeded slice of the campaign, and the engine itself (it must be able to fail).

The slice feeds some 20,000 inputs (a few seconds) to every core and port-side transform; the full
campaign is ``python -m bench fuzz`` (1,000,000 inputs).
"""

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

import bench
from bench import fuzz
from bench.common import Options
from vswitch.core.l2.fdb import Fdb

ROOT = Path(__file__).parents[2]
SLICE = 20_000


@pytest.fixture(scope="module")
def report() -> fuzz.Report:
    return fuzz.campaign(SLICE, seed=fuzz.DEFAULT_SEED)


def test_the_slice_raises_nothing(report: fuzz.Report) -> None:
    assert report.inputs == SLICE
    details = [f"{f.target}: {f.exception} at {f.site}" for f in report.findings.values()]
    assert report.exceptions == 0, details


def test_the_slice_reaches_every_target(report: fuzz.Report) -> None:
    names = {spec.name for spec in fuzz.Campaign(1).specs}
    assert {"bridge", "router-nat", "overlay-udp", "overlay-vxlan", "dropin-udp", "dropin-vxlan", "coalesce_tcp4",
            "segment_tcp4", "complete_checksum", "from_vnet", "split_gro", "capture_frame", "codec"} <= names
    assert set(report.by_target) == names
    assert all(count >= 100 for count in report.by_target.values()), report.by_target


def test_every_table_stays_within_its_bound(report: fuzz.Report) -> None:
    assert report.over_bound() == []
    tables = {name for _, name in report.tables}
    assert {"fdb", "neighbours.gw", "neighbours.gw.resolving", "neighbours.gw.queue", "route-cache", "icmp-peers",
            "nat.connections", "nat.fragments", "nat.sources", "nat.per-source", "nat.port-pools", "overlay.peers"} <= tables
    # the floods are big enough to fill some tables to the brim even in the slice
    assert any(size == bound for size, bound in report.tables.values())


def test_valid_traffic_flows_through_every_core_at_once_and_once_the_timeouts_have_run(report: fuzz.Report) -> None:
    """At once too in the cores with NAT: what the floods left in its table is unanswered, so early drop makes
    room for a new connection."""
    assert set(report.forwards) == {"bridge", "router-nat", "overlay-udp", "overlay-vxlan", "dropin-udp", "dropin-vxlan"}
    for name, (at_once, after) in report.forwards.items():
        assert after.ok, (name, after.problems)
        assert after.steps >= 2
        assert at_once.ok, (name, at_once.problems)


def test_a_seed_gives_the_same_inputs() -> None:
    one, two = fuzz.Campaign(seed=3), fuzz.Campaign(seed=3)
    other = fuzz.Campaign(seed=4)
    for campaign in (one, two, other):
        campaign.run(1500)
    history = lambda c: [(b.port, b.inputs, b.now) for h in c.history.values() for b in h]  # noqa: E731
    assert history(one) == history(two)
    assert history(one) != history(other)


# -- the engine finds, attributes and minimises what raises ----------------------------------------------


def test_an_exception_is_a_finding_with_a_minimised_reproducer(monkeypatch: pytest.MonkeyPatch) -> None:
    # Plant a bug: coalesce_tcp4 trips on a frame whose TCP flags byte (47) is ACK|PSH, as the last of a run's
    # is. The finding names the site and the target, and its reproducer is one batch of one 48-byte frame.
    real = fuzz.coalesce_tcp4

    def planted(frames, start, limit=64):
        if len(frames[start]) > 47 and frames[start][47] == 0x18:
            raise IndexError("planted")
        return real(frames, start, limit)

    monkeypatch.setattr(fuzz, "coalesce_tcp4", planted)
    report = fuzz.campaign(4000, seed=fuzz.DEFAULT_SEED)
    assert report.exceptions > 0
    (finding,) = report.findings.values()
    assert (finding.target, finding.exception) == ("coalesce_tcp4", "IndexError: planted")
    assert finding.site.startswith("tests/bench/test_fuzz.py:") and finding.site.endswith("in planted")
    (batch,) = finding.reproducer
    (frame,) = batch.inputs
    assert len(frame) == 48 and frame[47] == 0x18
    line = next(line for line in fuzz.lines(report) if line["name"] == "fuzz.exception.0")
    assert fuzz.from_hex(line["reproducer"][0]["inputs"][0]) == frame
    assert line["value"] == finding.count and line["minimised"] is True


def test_an_exception_that_needs_earlier_batches_keeps_them(monkeypatch: pytest.MonkeyPatch) -> None:
    # Plant a stateful bug in the bridge: the third batch on one core raises. A fresh core needs the two
    # before it, so the reproducer keeps three batches (with one frame each, the shortest that still pass).
    def feed(self, batch, real=fuzz.CoreTarget.feed):
        self.calls = getattr(self, "calls", 0) + 1
        if self.name == "bridge" and self.calls == 3:
            raise KeyError("third")
        return real(self, batch)

    monkeypatch.setattr(fuzz.CoreTarget, "feed", feed)
    report = fuzz.campaign(3000, seed=fuzz.DEFAULT_SEED)
    finding = report.findings["bridge", "KeyError", next(iter(report.findings))[2]]
    assert len(finding.reproducer) == 3
    assert all(len(batch.inputs) == 1 for batch in finding.reproducer)


def test_a_table_past_its_bound_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Fdb, "_evict_oldest", lambda self: True)   # plant a bug: a full FDB evicts nothing
    campaign = fuzz.Campaign()
    bridge = campaign.spec("bridge")
    while campaign.report.inputs < 8000:
        for batch in campaign.batches(bridge, 8000 - campaign.report.inputs):
            campaign.step(bridge, batch)
    (problem,) = campaign.report.over_bound()
    assert problem.startswith("bridge.fdb: ") and problem.endswith(" > 1024")


# -- the suite's lines ------------------------------------------------------------------------------------


def test_the_suite_prints_its_lines() -> None:
    out = io.StringIO()
    lines = bench.run_suites(["fuzz"], Options(count=300, seed=5), out)
    assert [json.loads(text) for text in out.getvalue().splitlines()] == lines
    names = [line["name"] for line in lines]
    assert names[:2] == ["fuzz.inputs", "fuzz.exceptions"] and names[-1] == "fuzz.rate"
    assert lines[0]["value"] == 300 and lines[0]["seed"] == 5
    assert lines[-1]["unit"] == "inputs/s" and lines[-1]["value"] > 0
    tables = [line for line in lines if line["name"].startswith("fuzz.table.")]
    assert tables and all(line["within_bound"] == (line["value"] <= line["bound"]) for line in tables)
    assert len([line for line in lines if line["name"].startswith("fuzz.forwards.")]) == 6


def test_command_line_count_and_seed() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "fuzz", "--count", "200", "--seed", "7"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, check=True)
    first = json.loads(proc.stdout.splitlines()[0])
    assert (first["name"], first["value"], first["seed"]) == ("fuzz.inputs", 200, 7)
    bad = subprocess.run([sys.executable, "-m", "bench", "fuzz", "--count", "0"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert bad.returncode == 2 and "--count" in bad.stderr


# -- what comes from etcd ----------------------------------------------------------------------------------


def test_the_slice_feeds_what_etcd_holds(report: fuzz.Report) -> None:
    assert {"flannel-config", "flannel-lease", "flannel-key", "flannel-book"} <= set(report.by_target)
    size, bound = report.tables["flannel-book", "flannel.keys"]
    assert size == bound == fuzz.FLANNEL_MAX_LEASES          # the floods fill the lease book to its bound
    assert report.tables["flannel-book", "flannel.peers"][0] > 0


def test_a_lease_book_whose_peers_conflict_is_a_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    # Plant a bug: the book forgets to drop the younger of two leases claiming one address or MAC. The peer
    # table, fed its peers after each batch as the daemon feeds it, refuses the set: a finding on the book.
    from vswitch.overlay.core.flannel import LeaseBook
    from vswitch.overlay.core.peers import Lease

    def everyone(self):
        return [Lease(r.subnet, *self._keys(r)) for r in self._contested.values()]

    monkeypatch.setattr(LeaseBook, "_resolve", everyone)
    report = fuzz.campaign(6000, seed=fuzz.DEFAULT_SEED)
    (finding,) = [f for f in report.findings.values() if f.target == "flannel-book"]
    assert finding.exception.startswith("ValueError: leases ") and "conflict" in finding.exception
    assert finding.site.startswith("overlay/core/peers.py:") and finding.site.endswith("in update")
