"""`pyxen chaos`'s pure parts: block format, image check, recovery matching,
and the topology it derives."""

import tomllib

import pytest

from deploy import DEFAULT_TOPOLOGY
from domains.dom0.chaos import analysis, toml_out
from domains.dom0.chaos.analysis import Device
from domains.dom0.chaos.runner import ChaosError, derive, devices_of, plan
from domains.dom0.topology import load_topology
from domains.guest import chaos_blocks as blocks

TAG = blocks.tag_of("guest1")


def image_of(writes: dict[int, bytes], slots: int) -> bytearray:
    image = bytearray(slots * blocks.BLOCK)
    for slot, data in writes.items():
        image[slot * blocks.BLOCK:(slot + 1) * blocks.BLOCK] = data
    return image


def test_a_block_says_what_it_is_and_a_torn_one_does_not_pass():
    data = blocks.encode(TAG, 5, 1234)
    assert blocks.decode(data) == blocks.Found(TAG, 5, 1234, True)
    torn = data[:2048] + blocks.encode(TAG, 5, 1235)[2048:]
    assert not blocks.decode(torn).intact
    assert blocks.decode(bytes(blocks.BLOCK)) == blocks.EMPTY
    assert not blocks.decode(b"x" * blocks.BLOCK).intact


def test_latest_write_of_a_slot():
    assert blocks.latest(9, 3, 4) == 7
    assert blocks.latest(9, 1, 4) == 9
    assert blocks.latest(2, 3, 4) is None


def test_an_image_holding_every_last_write_is_clean():
    slots, top = 8, 20
    image = image_of({s: blocks.encode(TAG, s, blocks.latest(top, s, slots))
                      for s in range(slots)}, slots)
    found = analysis.check_image(bytes(image), TAG, top, slots)
    assert (found.lost, found.duplicated, found.corrupted) == ([], [], [])
    assert found.checked == slots


def test_lost_duplicated_and_corrupted_blocks_are_told_apart():
    slots, top = 8, 20
    writes = {s: blocks.encode(TAG, s, blocks.latest(top, s, slots)) for s in range(slots)}
    writes[1] = blocks.encode(TAG, 1, 9)  # an older write: the last one (17) is lost
    writes[2] = bytes(blocks.BLOCK)  # nothing where write 18 was acknowledged
    writes[3] = blocks.encode(TAG, 4, 12)  # a block meant for slot 4
    writes[4] = blocks.encode(TAG, 4, 28)  # a write never acknowledged
    writes[5] = writes[5][:100] + b"\xff" + writes[5][101:]  # a flipped byte
    writes[6] = blocks.encode(blocks.tag_of("guest2"), 6, 14)  # another guest's block
    found = analysis.check_image(bytes(image_of(writes, slots)), TAG, top, slots)
    assert found.lost == [1, 2]
    assert found.duplicated == [3, 4]
    assert found.corrupted == [5, 6]


def test_a_slot_never_written_may_stay_empty():
    found = analysis.check_image(bytes(image_of({0: blocks.encode(TAG, 0, 0)}, 4)), TAG, 0, 4)
    assert (found.lost, found.duplicated, found.corrupted) == ([], [], [])


def test_recovery_is_the_first_completion_through_another_backend_after_the_kill():
    disk = Device("guest1", "vbd", "xvda")
    vif = Device("guest1", "vif", "eth0")
    events = [
        {"guest": "guest1", "ev": "blk", "disk": "xvda", "t": 9.0, "backend": 1},
        {"guest": "guest1", "ev": "blk", "disk": "xvda", "t": 10.05, "backend": 1},  # old one
        {"guest": "guest2", "ev": "blk", "disk": "xvda", "t": 10.1, "backend": 5},
        {"guest": "guest1", "ev": "blk", "disk": "xvda", "t": 10.2, "backend": 5},
        {"guest": "guest1", "ev": "net", "t": 10.3, "sent": 9.99},  # probe from before
        {"guest": "guest1", "ev": "net", "t": 10.4, "sent": 10.35},
    ]
    assert analysis.resumed_at(disk, events, 10.0, killed=1) == 10.2
    assert analysis.resumed_at(vif, events, 10.0, killed=2) == 10.4
    assert analysis.resumed_at(disk, events, 11.0, killed=5) is None


def test_percentiles_are_nearest_rank():
    assert analysis.percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert analysis.summary_ms([0.1, 0.2, 0.3, 0.4]) == {"p50": 200.0, "p90": 400.0,
                                                         "p99": 400.0, "max": 400.0}
    assert analysis.summary_ms([]) is None


def test_toml_written_back_reads_the_same():
    data = {"platform": {"memory": 1024, "name": "virt"},
            "domain": {"guest-1": {"extra": 'a "quoted" \\ value', "vcpus": 2,
                                   "restart_backoff": [0, 0.5], "driver_domain": False,
                                   "disk": ["backend=dd, vdev=xvda, target=x.img"]},
                       "empty": {}}}
    assert tomllib.loads(toml_out.dumps(data)) == data


def test_the_derived_topology_runs_the_verifier_and_lifts_the_targets_budget(tmp_path):
    topology = load_topology(DEFAULT_TOPOLOGY)
    targets, guests, raw = plan(topology, ["disk-dd"])
    assert targets == ["disk-dd"] and [g.name for g in guests] == ["guest1", "guest2"]
    for guest in guests:
        guest.report, guest.control = tmp_path / "r", tmp_path / "c"
    derived = derive(raw, targets, guests, kills=50)
    path = tmp_path / "t.toml"
    path.write_text(toml_out.dumps(derived))
    again = load_topology(path)  # still a valid topology
    dd, g1 = again.domain("disk-dd"), again.domain("guest1")
    assert dd.restart_limit == (51, 3600.0) and dd.restart_backoff == (0.0, 0.0)
    assert again.domain("net-dd").restart_limit == (5, 60.0)  # not a target
    assert g1.workload == "domains.guest.chaos:verify"
    assert "peer=10.0.0.2" in g1.extra and "disks=xvda" in g1.extra
    assert devices_of("disk-dd", topology, network=False) == [
        Device("guest1", "vbd", "xvda"), Device("guest2", "vbd", "xvda")]
    assert devices_of("net-dd", topology, network=False) == []
    assert devices_of("net-dd", topology, network=True) == [
        Device("guest1", "vif", "eth0"), Device("guest2", "vif", "eth0")]


def test_bad_targets_and_real_disks_are_refused(tmp_path):
    topology = load_topology(DEFAULT_TOPOLOGY)
    with pytest.raises(ChaosError, match="guest1: not a driver domain"):
        plan(topology, ["guest1"])
    path = tmp_path / "t.toml"
    real = tmp_path / "real.img"  # a user's own image, outside any run dir
    real.write_bytes(b"\0" * 512)
    path.write_text('[domain.dd]\ndriver_domain = true\n[domain.g]\n'
                    f'disk = ["backend=dd, vdev=xvda, target={real}"]\n')
    with pytest.raises(ChaosError, match="only takes images inside its own run directory"):
        plan(load_topology(path), None)
