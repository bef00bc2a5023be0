"""The control socket's requests and the toolstack's creates, without
processes: a Toolstack over a fake libxc and a real xenstored core."""

from __future__ import annotations

import io
import math
import select
import socket
import threading
from pathlib import Path

import msgpack
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domains.dom0.announce import parse_announce
from domains.dom0.control import SCHEMAS, BadRequest, Control, parse_request
from domains.dom0.main import unpack_request
from domains.dom0.toolstack import Toolstack
from domains.dom0.topology import Platform
from domains.dom0.xc import Abandoned
from domains.dom0.xenstored import XenStore, encode
from domains.kernel.xenbus.client import XenStoreClient
from domains.kernel.xenbus.transport import UnixTransport
from hypervisor.public.domctl import XEN_DOMINF_blocked
from hypervisor.public.errno import EINVAL, EPERM, ESRCH, ETIMEDOUT, XenError

pytestmark = pytest.mark.timeout(120)

GOOD_ANNOUNCE = {"store": {"ring-ref": 1, "port": 5, "mfn": 10},
                 "console": {"ring-ref": 2, "port": 6, "mfn": 11}}


class LoopbackXenstored:
    """xenstored's core behind a socketpair, served by a thread."""

    def __init__(self) -> None:
        self.store = XenStore()
        self.ours, theirs = socket.socketpair()
        self.conn = self.store.connect(0)
        self.stop_r, self.stop_w = socket.socketpair()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.client = XenStoreClient(UnixTransport.from_socket(theirs))

    def _serve(self) -> None:
        while True:
            ready, _, _ = select.select([self.ours, self.stop_r], [], [])
            if self.stop_r in ready:
                return
            data = self.ours.recv(65536)
            if not data:
                return
            self.store.handle_bytes(self.conn, data)
            while self.conn.outbox:
                self.ours.sendall(encode(self.conn.outbox.popleft()))

    def close(self) -> None:
        self.client.close()
        self.stop_w.send(b"x")
        self.thread.join()
        for s in (self.ours, self.stop_r, self.stop_w):
            s.close()


class FakeXc:
    """libxc's calls the toolstack makes, on a dict of domains."""

    def __init__(self) -> None:
        self.doms: dict[int, dict] = {0: self._info(0, "Domain-0")}
        self.next_domid = 1
        self.announce: object = GOOD_ANNOUNCE
        self.hold: threading.Event | None = None  # createdomain waits for it
        self.create_error: XenError | None = None
        self.destroyed: list[int] = []
        self.console: list[str] = []

    @staticmethod
    def _info(domid: int, name: str) -> dict:
        return {"domain": domid, "name": name, "flags": XEN_DOMINF_blocked,
                "tot_pages": 8192, "nr_online_vcpus": 1, "max_vcpu_id": 0,
                "cpu_time": 0, "pid": 100 + domid, "handle": f"uuid-{domid}"}

    def domain_create(self, name, memory_mib, vcpus, kernel, cmdline, cpus,
                      boot_timeout=None, max_window_mib=None, abandon=None, sandbox=None):
        domid = self.next_domid
        self.next_domid += 1
        self.doms[domid] = self._info(domid, name)
        if self.hold is not None:
            waits = [abandon.fileno()] if abandon is not None else []
            while not self.hold.is_set():
                if waits and select.select(waits, [], [], 0.01)[0]:
                    raise Abandoned()
        if self.create_error is not None:
            del self.doms[domid]
            raise self.create_error
        return {"domid": domid, "announce": self.announce}

    def domain_destroy(self, domid: int) -> None:
        if domid not in self.doms:
            raise XenError(ESRCH, f"no domain {domid}")
        self.destroyed.append(domid)
        del self.doms[domid]

    def domain_getinfo(self, domid: int) -> dict:
        if domid not in self.doms:
            raise XenError(ESRCH, f"no domain {domid}")
        return dict(self.doms[domid])

    def domain_getinfolist(self) -> list[dict]:
        return [dict(self.doms[d]) for d in sorted(self.doms)]

    def domain_pause(self, domid: int) -> None:
        self.domain_getinfo(domid)

    domain_unpause = domain_pause

    def vcpu_getinfo(self, domid, vcpu):
        return {"cpu": 0, "online": True, "running": False, "blocked": True, "cpu_time": 0}

    def vcpu_getaffinity(self, domid, vcpu):
        return {"cpumap_hard": [0, 1]}

    def vcpu_setaffinity(self, domid, vcpu, cpus):
        self.domain_getinfo(domid)
        if not 0 <= vcpu <= 0:
            raise XenError(EINVAL, "no such vcpu")

    def sched_credit2_domain_get(self, domid):
        self.domain_getinfo(domid)
        return {"weight": 256, "cap": 0}

    def sched_credit2_domain_set(self, domid, weight, cap=0):
        self.domain_getinfo(domid)

    def physinfo(self):
        return {"nr_cpus": 2, "total_pages": 262144, "free_pages": 100000}

    def version(self):
        return {"xen_major": 4, "xen_minor": 17}

    def readconsole(self, clear=False):
        return "(XEN) [t] d1 \x1b[31mred\x1b[0m\n"

    def console_write(self, text: str) -> None:
        self.console.append(text)


@pytest.fixture
def rig(tmp_path):
    xsd = LoopbackXenstored()
    xc = FakeXc()
    log = structlog.wrap_logger(structlog.PrintLogger(io.StringIO()))
    ts = Toolstack(xc, xsd.client, Platform("virt", 2, 1024), log, disk_dir=tmp_path)
    try:
        yield ts, xc, xsd, tmp_path
    finally:
        ts.halt()
        xsd.close()


def cfg(tmp: Path, name: str, extra: str = "") -> str:
    path = tmp / f"{name}.cfg"
    path.write_text(f'name = "{name}"\nmemory = 32\n{extra}')
    return str(path)


def create(ctl: Control, path: str) -> dict:
    """A create through the control handler; its (later) reply."""
    replies: list[dict] = []
    got = threading.Event()

    def respond(reply):
        replies.append(reply)
        got.set()

    reply, _ = ctl.handle({"cmd": "create", "args": {"path": path}}, respond)
    if reply is not None:
        return reply
    assert got.wait(60)
    return replies[0]


# -- schemas -------------------------------------------------------------------------


def test_every_command_has_a_schema_and_a_handler():
    from domains.dom0.control import COMMANDS
    assert set(COMMANDS) | {"wait"} == set(SCHEMAS)


@pytest.mark.parametrize("request_, problem", [
    ({"cmd": "pause", "args": {"domain": True}}, "domain must be str or int, not bool"),
    ({"cmd": "network-detach", "args": {"domain": "g", "devid": True}}, "devid must be int"),
    ({"cmd": "network-detach", "args": {"domain": "g", "devid": "1"}}, "devid must be int"),
    ({"cmd": "dmesg", "args": {"clear": 1}}, "clear must be bool"),
    ({"cmd": "pause", "args": {}}, "missing argument domain"),
    ({"cmd": "pause", "args": {"domain": "g", "x": 1}}, "unexpected argument"),
    ({"cmd": "pause", "args": [1]}, "args must be a map"),
    ({"cmd": "pause", "args": {"domain": "g"}, "extra": 1}, "unexpected request keys"),
    ({"cmd": "pause", "args": {"domain": 1 << 40}}, "must be 0 to"),
    ({"cmd": "pause", "args": {"domain": "x" * 1000}}, "must be 1 to 128 characters"),
    ({"cmd": "wait", "args": {"domain": "g", "until": "running", "timeout": math.inf}},
     "finite"),
    ({"cmd": "wait", "args": {"domain": "g", "until": "later"}}, "must be one of"),
    ({"cmd": "create", "args": {"path": "a\0b"}}, "NUL"),
    ({"cmd": 5}, "unknown command"),
    ([1, 2], "a request is a map"),
    (None, "a request is a map"),
])
def test_requests_off_schema_are_refused_with_a_reason(request_, problem):
    with pytest.raises(BadRequest, match=problem):
        parse_request(request_)


def test_oversized_or_malformed_msgpack_is_no_request():
    assert unpack_request(b"\xc1") is None                     # never used byte
    assert unpack_request(b"\x91" * 5000 + b"\xc0") is None    # nested too deep
    assert unpack_request(msgpack.packb({"cmd": "list"})) == {"cmd": "list"}


# -- announce ------------------------------------------------------------------------


@pytest.mark.parametrize("announce", [
    ["store"], "x", 5, {"store": []}, {"store": {"ring-ref": 1, "port": True, "mfn": 0}},
    {"store": {"ring-ref": 1, "port": "5", "mfn": 0}},
    {"store": {"ring-ref": 1, "port": 5, "mfn": -1}},
    {"store": {"ring-ref": 1 << 32, "port": 5, "mfn": 0}},
    {"store": {"ring-ref": 1, "port": 0, "mfn": 0}},
    {"store": {"ring-ref": 1, "port": 5}},
    {"store": {"ring-ref": 1, "port": 5, "mfn": 0, "extra": 1}},
    {"keyboard": {}},
])
def test_bad_announces_are_refused(announce):
    with pytest.raises(XenError) as info:
        parse_announce(announce)
    assert info.value.errno == EINVAL and "bad announce" in str(info.value)


def test_good_announce_passes():
    assert parse_announce(GOOD_ANNOUNCE) == GOOD_ANNOUNCE
    assert parse_announce(None) == {"store": None, "console": None}


def test_a_bad_announce_destroys_the_domain_and_the_toolstack_goes_on(rig):
    ts, xc, xsd, tmp = rig
    ctl = Control(ts)
    xc.announce = ["not", "a", "map"]
    reply = create(ctl, cfg(tmp, "liar"))
    assert not reply["ok"] and "liar (d1)" in reply["error"] and "bad announce" in reply["error"]
    assert xc.destroyed == [1] and "liar" not in ts.running_names()
    assert any("liar" in line for line in xc.console)
    xc.announce = GOOD_ANNOUNCE
    reply = create(ctl, cfg(tmp, "honest"))
    assert reply == {"ok": True, "result": {"name": "honest", "domid": 2}}
    assert xsd.client.read("/local/domain/2/store/port") == b"5"


# -- creates do not hold the control loop ----------------------------------------------


def test_a_create_waiting_for_its_kernel_blocks_no_request(rig):
    ts, xc, _xsd, tmp = rig
    ctl = Control(ts)
    xc.hold = threading.Event()
    replies: list[dict] = []
    done = threading.Event()
    reply, _ = ctl.handle({"cmd": "create", "args": {"path": cfg(tmp, "slow")}},
                          lambda r: (replies.append(r), done.set()))
    assert reply is None  # comes later
    listed, _ = ctl.handle({"cmd": "list"}, replies.append)
    row = next(r for r in listed["result"] if r["name"] == "slow")
    assert row["note"] == "booting"
    busy, _ = ctl.handle({"cmd": "pause", "args": {"domain": "slow"}}, replies.append)
    assert "still booting" in busy["error"]
    again = create(ctl, cfg(tmp, "slow"))
    assert not again["ok"] and "already exists" in again["error"]
    xc.hold.set()
    assert done.wait(30)
    assert replies == [{"ok": True, "result": {"name": "slow", "domid": 1}}]
    assert ts.find("slow").domid == 1 and not ts.booting


def test_destroying_a_booting_domain_ends_its_create(rig):
    ts, xc, _xsd, tmp = rig
    ctl = Control(ts)
    xc.hold = threading.Event()
    replies: list[dict] = []
    done = threading.Event()
    ctl.handle({"cmd": "create", "args": {"path": cfg(tmp, "sloth")}},
               lambda r: (replies.append(r), done.set()))
    reply, _ = ctl.handle({"cmd": "destroy", "args": {"domain": "sloth"}}, replies.append)
    assert reply["ok"]
    assert done.wait(30)
    assert not replies[0]["ok"] and "sloth was destroyed while booting" in replies[0]["error"]
    assert xc.destroyed == [1] and not ts.booting and not ts.workers


def test_a_boot_deadline_is_a_clean_error(rig):
    ts, xc, _xsd, tmp = rig
    xc.create_error = XenError(ETIMEDOUT, "d1 sloth: not ready after 30s, destroyed")
    reply = create(Control(ts), cfg(tmp, "sloth"))
    assert not reply["ok"]
    assert "ETIMEDOUT" in reply["error"] and "sloth did not finish booting" in reply["error"]
    assert "sloth" not in ts.running_names()
    xc.create_error = None
    assert create(Control(ts), cfg(tmp, "sloth"))["ok"]


def test_halt_stops_the_creates_in_flight(rig):
    ts, xc, _xsd, tmp = rig
    xc.hold = threading.Event()
    replies: list[dict] = []
    Control(ts).handle({"cmd": "create", "args": {"path": cfg(tmp, "late")}}, replies.append)
    ts.halt()
    assert not ts.workers and replies and not replies[0]["ok"]


def test_dmesg_reaches_the_admin_without_escapes(rig):
    ts, *_ = rig
    reply, _ = Control(ts).handle({"cmd": "dmesg"}, print)
    assert reply == {"ok": True, "result": "(XEN) [t] d1 red\n"}


# -- fuzz ----------------------------------------------------------------------------

_ARG_NAMES = sorted({key for schema in SCHEMAS.values() for key in schema})
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats(allow_nan=True) | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=10)
requests = st.one_of(
    values,
    st.fixed_dictionaries({
        "cmd": st.sampled_from(sorted(SCHEMAS)) | st.text(max_size=10),
        "args": st.dictionaries(st.sampled_from(_ARG_NAMES) | st.text(max_size=8), values,
                                max_size=5) | values,
    }),
)


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(request_=requests)
def test_fuzz_every_request_gets_one_reply_and_the_toolstack_stays_up(rig, request_):
    ts, _xc, _xsd, _tmp = rig
    ctl = Control(ts)
    replies: list[dict] = []
    reply, _halt = ctl.handle(unpack_request(msgpack.packb(request_)), replies.append)
    if reply is not None:
        replies.append(reply)
    while True:  # creates answer from their worker
        with ts.lock:
            workers = list(ts.workers)
        if not workers:
            break
        for worker in workers:
            worker.join()
    ctl.waiters.settle(ts)
    ctl.waiters.cancel("test over")
    assert len(replies) == 1, replies
    assert isinstance(replies[0], dict) and isinstance(replies[0]["ok"], bool)
    msgpack.packb(replies[0])
    listed, _ = ctl.handle({"cmd": "list"}, replies.append)
    assert listed["ok"] and any(r["name"] == "Domain-0" for r in listed["result"])
    for dom in list(ts.domains.values()):
        if dom.domid:
            ts.destroy(dom)


# -- devices' fds come before the nodes that make a driver look for them ---------------


def test_image_and_tap_fds_are_handed_over_before_the_device_nodes(rig):
    """Boot disks and vifs, block-attach, network-attach and a driver
    domain's restart: the hypervisor is asked for the fd (PYXEN_op_pass_fd)
    before the nodes that make blkback or netfront look for it exist, and
    the new driver domain gets its own."""
    from domains.dom0.topology import load_topology
    from domains.dom0.xlspec import parse_disk, parse_vif

    ts, xc, _xsd, tmp = rig
    handed: list[tuple] = []

    def pass_image(domid, key, path, writable):
        _, fe, devid = key.split("/")
        back = f"/local/domain/{domid}/backend/vbd/{fe}/{devid}"
        handed.append(("image", domid, key, path, writable, ts.xs.exists(back)))
        return {"type": "file", "size": 1 << 20}

    def pass_tun(domid, key):
        front = f"/local/domain/{domid}/device/vif/{key.split('/')[1]}"
        handed.append(("tun", domid, key, ts.xs.exists(front)))

    xc.pass_image, xc.pass_tun = pass_image, pass_tun
    outside = tmp / "elsewhere" / "hot.img"
    outside.parent.mkdir()  # the user's directory: pyxen makes images, not directories
    topo = tmp / "t.toml"
    topo.write_text("""[platform]
memory = 1024
[dom0]
memory = 256
[domain.dd]
driver_domain = true
[domain.g]
disk = ["backend=dd, vdev=xvda, size=1M, target=g.img",
        "backend=dd, vdev=xvdc, access=ro, size=1M, target=ro.img"]
vif = ["backend=dd, bridge=xenbr0"]
""")
    topology = load_topology(topo)
    dd = ts.create(topology.domain("dd"))
    g = ts.create(topology.domain("g"))
    assert handed == [
        ("image", dd.domid, f"vbd/{g.domid}/51712", str(tmp / "g.img"), True, False),
        ("image", dd.domid, f"vbd/{g.domid}/51744", str(tmp / "ro.img"), False, False),
        ("tun", g.domid, "vif/0", False)]
    assert ts.xs.exists(f"/local/domain/{dd.domid}/backend/vbd/{g.domid}/51712")
    handed.clear()
    ts.block_attach(g, parse_disk(f"backend=dd, vdev=xvdb, size=1M, target={outside}"))
    ts.network_attach(g, parse_vif("backend=dd, bridge=xenbr0"))
    assert handed == [("image", dd.domid, f"vbd/{g.domid}/51728", str(outside), True, False),
                      ("tun", g.domid, "vif/1", False)]
    handed.clear()
    ts.destroy(dd)
    new = ts.create(topology.domain("dd"))
    ts.republish(new)
    assert sorted(handed) == sorted(
        ("image", new.domid, f"vbd/{g.domid}/{devid}", path, rw, False)
        for devid, path, rw in ((51712, str(tmp / "g.img"), True),
                                (51744, str(tmp / "ro.img"), False),
                                (51728, str(outside), True)))


def test_errors_name_what_went_wrong(rig):
    """A second domain of a name is EEXIST (not ESRCH: the name is found,
    not missing); destroying Domain-0 is EPERM (it exists, and may not)."""
    ts, _xc, _xsd, tmp = rig
    ctl = Control(ts)
    assert create(ctl, cfg(tmp, "twin"))["ok"]
    again = create(ctl, cfg(tmp, "twin"))
    assert not again["ok"] and again["error"].startswith("EEXIST:")
    with pytest.raises(XenError) as caught:
        ts.destroy_requested(ts.find(0))
    assert caught.value.errno == EPERM
    reply, _ = ctl.handle({"cmd": "destroy", "args": {"domain": 0}}, lambda r: None)
    assert not reply["ok"] and reply["error"].startswith("EPERM:")
    assert ts.find(0).domid == 0
