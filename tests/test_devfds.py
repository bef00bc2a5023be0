"""Devices' fds handed over by the hypervisor (PYXEN_op_pass_fd), without
domain processes: what it opens and refuses (hypervisor/devfds.py), who may
ask (Dom0 only), and the kernel's table that receives them
(domains/kernel/fdtable.py: by key, bounded, waited for on a condition)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading

import msgpack
import pytest

from domains.kernel.fdtable import FdTable, vbd_key, vif_key
from domains.kernel.memchan import MemChannel as KernelMemChannel
from hypervisor import (
    devfds,
    ops,  # noqa: F401  (fills the dispatch table)
)
from hypervisor.loop import serve
from hypervisor.memchan import MemChannel
from hypervisor.public.errno import EINVAL, ENOENT, EPERM, ESRCH, XenError
from hypervisor.public.xen import HYPERVISOR_pyxen_op, PYXEN_op_pass_fd
from tests.hvfakes import FakeMachine

pytestmark = pytest.mark.timeout(60)


# -- what the hypervisor opens ---------------------------------------------------


def test_an_image_opens_as_its_mode_says_close_on_exec(tmp_path):
    image = tmp_path / "a.img"
    image.write_bytes(b"x" * 8192)
    fd, kind, size = devfds.open_image(str(image), writable=False)
    try:
        assert (kind, size) == ("file", 8192)
        assert not os.get_inheritable(fd) and os.get_blocking(fd)
        with pytest.raises(OSError):
            os.write(fd, b"y")  # read-only: the fd itself refuses
    finally:
        os.close(fd)
    fd, _, _ = devfds.open_image(str(image), writable=True)
    try:
        assert os.pwrite(fd, b"y", 0) == 1
    finally:
        os.close(fd)
    assert image.read_bytes()[:1] == b"y"


@pytest.mark.parametrize("what, errno", [
    ("missing", ENOENT),
    ("directory", EINVAL),
    ("/dev/null", EINVAL),  # a character device is no disk
    ("fifo", EINVAL),  # and opening one must not wait for a writer
    ("relative", EINVAL),
])
def test_what_is_no_image_is_a_typed_error(tmp_path, what, errno):
    path = {"missing": str(tmp_path / "nope.img"), "directory": str(tmp_path),
            "/dev/null": "/dev/null", "fifo": str(tmp_path / "fifo"),
            "relative": "disks/a.img"}[what]
    if what == "fifo":
        os.mkfifo(path)
    for writable in (False, True):
        with pytest.raises(XenError) as exc:
            devfds.open_image(path, writable)
        assert exc.value.errno == errno, (writable, exc.value)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to be another uid)")
def test_an_image_the_opener_may_not_read_is_eacces(tmp_path):
    image = tmp_path / "secret.img"
    image.write_bytes(bytes(512))
    image.chmod(0o600)
    tmp_path.chmod(0o755)
    code = ("import os, sys\n"
            "from hypervisor import devfds\n"
            "from hypervisor.public.errno import XenError\n"
            "os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)\n"
            "try:\n"
            f"    devfds.open_image({str(image)!r}, False)\n"
            "except XenError as exc:\n"
            "    print(exc.name)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, cwd=os.path.dirname(os.path.dirname(__file__)), check=False)
    assert out.stdout.strip() == "EACCES", out.stderr


def test_no_tap_in_the_hypervisors_own_network_namespace():
    # A process that shares our namespace (here: ourselves) would get a
    # TAP on the host.
    with pytest.raises(XenError) as exc:
        devfds.open_tun_in(os.getpid())
    assert exc.value.errno == EINVAL


def test_no_tap_for_a_process_that_is_gone():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with pytest.raises(XenError) as exc:
        devfds.open_tun_in(proc.pid)
    assert exc.value.errno == ESRCH


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun")
                    or not shutil.which("unshare") or not shutil.which("nsenter"),
                    reason="needs root, /dev/net/tun, unshare and nsenter (util-linux)")
def test_a_tun_fd_belongs_to_the_domains_own_namespace():
    """A TAP made on the fd appears in the process's namespace, not ours,
    and the hypervisor's own thread never left the host's."""
    import fcntl
    import struct

    ns_before = os.readlink("/proc/thread-self/ns/net")
    child = subprocess.Popen(["unshare", "-n", "sleep", "60"])
    try:
        # unshare(1) execs sleep once it is in its namespace.
        while os.readlink(f"/proc/{child.pid}/ns/net") == ns_before:
            os.sched_yield()
        fd = devfds.open_tun_in(child.pid)
        try:
            name = b"pyxtest0"
            fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", name, 0x0002 | 0x1000))
            assert name.decode() not in os.listdir("/sys/class/net")
            links = subprocess.run(["nsenter", "-t", str(child.pid), "-n", "cat",
                                    "/proc/net/dev"], capture_output=True, text=True,
                                   check=False).stdout
            assert "pyxtest0" in links
        finally:
            os.close(fd)
    finally:
        child.kill()
        child.wait()
    assert os.readlink("/proc/thread-self/ns/net") == ns_before


# -- who may ask, and where it goes ---------------------------------------------------


@pytest.fixture
def machine(sleeper, tmp_path):
    m = FakeMachine(sleeper, tmp_path)
    m.add("Domain-0", domid=0, privileged=True)
    m.add("driver")
    m.add("guest")
    yield m
    m.close()


def call(m: FakeMachine, domid: int, args):
    return serve(m, domid, (domid, b"id"),
                 msgpack.packb([HYPERVISOR_pyxen_op, PYXEN_op_pass_fd, args, 0]))


def test_only_dom0_may_have_an_fd_handed_over(machine, tmp_path):
    image = tmp_path / "victim.img"
    image.write_bytes(bytes(4096))
    args = {"domain": 2, "key": vbd_key(2, 51712), "kind": "image", "path": str(image),
            "writable": True}
    for caller in (1, 2):  # a driver domain, a guest: for another, or itself
        for target in (1, 2):
            rc, _ = call(machine, caller, {**args, "domain": target})
            assert rc == -EPERM
    assert not _received(machine, 1) and not _received(machine, 2)


def test_dom0_has_an_image_handed_to_a_driver_domain_under_its_key(machine, tmp_path):
    image = tmp_path / "g.img"
    image.write_bytes(b"data".ljust(1 << 20, b"\0"))
    key = vbd_key(2, 51712)
    rc, result = call(machine, 0, {"domain": 1, "key": key, "kind": "image",
                                   "path": str(image), "writable": False})
    assert (rc, result) == (0, {"type": "file", "size": 1 << 20})
    (meta, fd), = _received(machine, 1)
    try:
        assert (meta["tag"], meta["key"], meta["writable"]) == ("fd", key, False)
        assert os.pread(fd, 4, 0) == b"data"
    finally:
        os.close(fd)
    assert not _received(machine, 2)  # nobody else got anything


def test_dom0_gets_typed_errors_and_nothing_is_sent(machine, tmp_path):
    cases = [({"kind": "image", "path": str(tmp_path / "none.img")}, ENOENT),
             ({"kind": "image", "path": str(tmp_path)}, EINVAL),
             ({"kind": "image"}, EINVAL),
             ({"kind": "disk", "path": str(tmp_path)}, EINVAL),
             ({"kind": "tun"}, EINVAL),  # the fake domains share our namespace
             ({"kind": "image", "path": str(tmp_path), "domain": 77}, ESRCH)]
    for extra, errno in cases:
        rc, _ = call(machine, 0, {"domain": 1, "key": "k", **extra})
        assert rc == -errno, extra
    assert not _received(machine, 1)


def _received(m: FakeMachine, domid: int) -> list[tuple[dict, int]]:
    """What a domain's end of its memory channel holds (messages, fds)."""
    end = m.peer_ends[[d for d in sorted(m.domains)].index(domid)]
    got: list[tuple[dict, int]] = []
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(end, 4096, 4)
        except BlockingIOError:
            return got
        got.append((msgpack.unpackb(data), fds[0] if fds else -1))


# -- the kernel's table ------------------------------------------------------------


@pytest.fixture
def channel():
    hv_end, dom_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    hv, dom = MemChannel(hv_end), KernelMemChannel(dom_end)
    yield hv, dom
    hv.close()
    dom.close()


def test_an_fd_sent_before_the_take_is_found_by_key(channel):
    hv, dom = channel
    table = FdTable(dom)
    r, w = os.pipe()
    hv.send({"tag": "fd", "key": vif_key(0), "kind": "tun"}, [r])
    os.close(r)
    fd, meta = table.take(vif_key(0), timeout=0)
    try:
        os.write(w, b"!")
        assert os.read(fd, 1) == b"!" and meta["kind"] == "tun"
    finally:
        os.close(fd)
        os.close(w)
    with pytest.raises(TimeoutError):
        table.take(vif_key(0), timeout=0)  # taken: it is the caller's now


def test_a_take_waits_for_an_fd_in_flight(channel):
    hv, dom = channel
    table = FdTable(dom)
    got = []
    waiter = threading.Thread(target=lambda: got.append(table.take("vbd/3/1", timeout=30)))
    waiter.start()
    r, w = os.pipe()
    hv.send({"tag": "fd", "key": "vbd/3/1", "kind": "image"}, [r])
    os.close(r)
    dom.pump()  # what the upcall loop does when the channel is readable
    waiter.join(30)
    assert got and got[0][1]["key"] == "vbd/3/1"
    os.close(got[0][0])
    os.close(w)


def _open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def test_fds_nobody_takes_are_bounded_and_a_key_handed_again_replaces(channel):
    hv, dom = channel
    table = FdTable(dom, max_waiting=4)
    before = _open_fds()
    for i in range(10):
        r, w = os.pipe()
        hv.send({"tag": "fd", "key": f"k{i}", "kind": "image"}, [r])
        os.close(r)
        os.close(w)
    dom.pump()
    assert len(table) == 4  # the oldest were closed
    for _ in range(3):
        r, w = os.pipe()
        hv.send({"tag": "fd", "key": "k9", "kind": "image"}, [r])
        os.close(r)
        os.close(w)
    dom.pump()
    assert len(table) == 4
    assert len(_open_fds() - before) == 4  # no fd beyond the table's
    for key in ("k6", "k7", "k8"):
        table.discard(key)
    fd, _ = table.take("k9", timeout=0)
    os.close(fd)
    assert _open_fds() - before == set()
    with pytest.raises(TimeoutError):
        table.take("k0", timeout=0)
