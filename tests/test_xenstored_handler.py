"""xenstored's message handler: requests, permissions, domains, errors."""

from __future__ import annotations

import struct

import pytest

from domains.dom0.xenstored import Message, Quotas, XenStore, encode, handler
from hypervisor.public.io import xs_wire as xs
from tests.xsclient import Client, guest_dir

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def xsd() -> XenStore:
    return XenStore()


@pytest.fixture
def dom0(xsd: XenStore) -> Client:
    return Client(xsd, 0)


# -- basic node operations ------------------------------------------------------------


def test_initial_tree(dom0: Client) -> None:
    assert dom0.directory("/") == ["tool", "local"]
    assert dom0.directory("/tool") == ["xenstored"]
    assert dom0.directory("/local") == ["domain"]
    assert dom0.get_perms("/") == ["n0"]
    assert dom0.read("/local/domain") == b""


def test_write_read_creates_parents(dom0: Client) -> None:
    dom0.write("/a/b/c", b"v\0with\0nuls")
    assert dom0.read("/a/b/c") == b"v\0with\0nuls"
    assert dom0.read("/a") == b""
    assert dom0.directory("/a") == ["b"]
    dom0.write("/a/b/c", "")
    assert dom0.read("/a/b/c") == b""
    assert dom0.call(xs.XS_WRITE, "/a/b/c") == b"OK\0"
    assert dom0.read("/a/b/c") == b""


def test_mkdir_keeps_existing_values(dom0: Client) -> None:
    dom0.write("/a", "keep")
    dom0.mkdir("/a")
    dom0.mkdir("/a/b/c")
    assert dom0.read("/a") == b"keep"
    assert dom0.directory("/a/b") == ["c"]


def test_children_keep_creation_order(dom0: Client) -> None:
    for name in ["z", "a", "m"]:
        dom0.mkdir(f"/d/{name}")
    assert dom0.directory("/d") == ["z", "a", "m"]
    dom0.rm("/d/a")
    assert dom0.directory("/d") == ["z", "m"]


def test_rm(dom0: Client) -> None:
    dom0.write("/a/b/c", "x")
    dom0.rm("/a/b")
    assert dom0.directory("/a") == []
    assert dom0.error(xs.XS_READ, "/a/b/c") == "ENOENT"
    dom0.rm("/a/b")                                   # gone, but its parent is there
    assert dom0.error(xs.XS_RM, "/a/nope/deeper") == "ENOENT"
    assert dom0.error(xs.XS_RM, "/") == "EINVAL"


def test_read_missing(dom0: Client) -> None:
    assert dom0.error(xs.XS_READ, "/nope") == "ENOENT"
    assert dom0.error(xs.XS_DIRECTORY, "/nope") == "ENOENT"
    assert dom0.error(xs.XS_GET_PERMS, "/nope") == "ENOENT"


def test_relative_paths_are_in_the_domain_directory(xsd: XenStore, dom0: Client) -> None:
    dom0.write("mine", "dom0's")                      # socket clients act as Dom0
    assert dom0.read("/local/domain/0/mine") == b"dom0's"
    guest_dir(dom0, 3, "n3")
    guest = Client(xsd, 3)
    guest.write("device/vif", "1")
    assert dom0.read("/local/domain/3/device/vif") == b"1"
    assert guest.read("device/vif") == b"1"


def test_get_domain_path(xsd: XenStore) -> None:
    guest = Client(xsd, 5)
    assert guest.call(xs.XS_GET_DOMAIN_PATH, "7") == b"/local/domain/7\0"
    assert guest.error(xs.XS_GET_DOMAIN_PATH, "7", "8") == "EINVAL"


def test_directory_part_pages_a_long_list(dom0: Client) -> None:
    names = [f"child-{i:04d}-" + "x" * 20 for i in range(300)]
    for name in names:
        dom0.mkdir(f"/big/{name}")
    assert dom0.error(xs.XS_DIRECTORY, "/big") == "E2BIG"
    got, offset, gens = [], 0, set()
    while True:
        reply = dom0.call(xs.XS_DIRECTORY_PART, "/big", str(offset))
        assert len(reply) <= xs.XENSTORE_PAYLOAD_MAX
        gen, rest = reply.split(b"\0", 1)
        gens.add(gen)
        parts = rest.split(b"\0")[:-1]
        if parts and parts[-1] == b"":
            got += [p.decode() for p in parts[:-1]]
            break
        got += [p.decode() for p in parts]
        offset += len(rest)
    assert got == names
    assert len(gens) == 1
    end = sum(len(n) + 1 for n in names)
    assert dom0.call(xs.XS_DIRECTORY_PART, "/big", str(end)) == gens.pop() + b"\0\0"
    dom0.mkdir("/big/one-more")
    gen2 = dom0.call(xs.XS_DIRECTORY_PART, "/big", "0").split(b"\0")[0]
    assert gen2 not in gens
    assert dom0.error(xs.XS_DIRECTORY_PART, "/big") == "EINVAL"


def test_directory_part_small(dom0: Client) -> None:
    dom0.mkdir("/s/a")
    dom0.mkdir("/s/bb")
    reply = dom0.call(xs.XS_DIRECTORY_PART, "/s", "0")
    assert reply.split(b"\0", 1)[1] == b"a\0bb\0\0"
    assert dom0.call(xs.XS_DIRECTORY_PART, "/s", "2").split(b"\0", 1)[1] == b"bb\0\0"


# -- permissions ----------------------------------------------------------------------


def test_guest_cannot_touch_dom0_or_other_guests(xsd: XenStore, dom0: Client) -> None:
    dom0.write("/local/domain/0/secret", "x")
    guest_dir(dom0, 1)
    guest_dir(dom0, 2)
    dom0.write("/local/domain/2/data", "two")
    dom0.set_perms("/local/domain/2/data", "n2")
    g1 = Client(xsd, 1)
    for path in ["/local/domain/0/secret", "/local/domain/2/data"]:
        assert g1.error(xs.XS_READ, path) == "EACCES"
        assert g1.error(xs.XS_WRITE, path, "x") == "EACCES"
        assert g1.error(xs.XS_RM, path) == "EACCES"
        assert g1.error(xs.XS_GET_PERMS, path) == "EACCES"
        assert g1.error(xs.XS_DIRECTORY, path) == "EACCES"
    # a missing node where it may not look is EACCES too, not ENOENT ...
    assert g1.error(xs.XS_READ, "/local/domain/0/nothing") == "EACCES"
    assert g1.error(xs.XS_WRITE, "/local/domain/0/nothing", "x") == "EACCES"
    assert g1.error(xs.XS_WRITE, "/new/node", "x") == "EACCES"
    # ... while it may learn what its own directory lacks
    assert g1.error(xs.XS_READ, "/local/domain/1/nothing") == "ENOENT"
    assert dom0.read("/local/domain/2/data") == b"two"


def test_owner_and_entries(xsd: XenStore, dom0: Client) -> None:
    dom0.write("/p", "v")
    dom0.set_perms("/p", "n5", "r6", "w7")
    g5, g6, g7, g8 = (Client(xsd, d) for d in (5, 6, 7, 8))
    assert g5.read("/p") == b"v"                      # the owner has every right
    g5.write("/p", "5")
    assert g6.read("/p") == b"5"
    assert g6.error(xs.XS_WRITE, "/p", "x") == "EACCES"
    assert g7.error(xs.XS_READ, "/p") == "EACCES"
    g7.write("/p", "7")
    assert g8.error(xs.XS_READ, "/p") == "EACCES"     # default: the first entry's "n"
    dom0.set_perms("/p", "r5")
    assert g8.read("/p") == b"7"                      # default now "r"
    assert g8.get_perms("/p") == ["r5"]


def test_set_perms_only_by_owner_or_privileged(xsd: XenStore, dom0: Client) -> None:
    dom0.write("/p", "v")
    dom0.set_perms("/p", "n5", "b6")
    g5, g6 = Client(xsd, 5), Client(xsd, 6)
    assert g6.error(xs.XS_SET_PERMS, "/p", "n5", "b6", "r7") == "EACCES"
    g5.set_perms("/p", "n5", "r6")
    assert g6.error(xs.XS_WRITE, "/p", "x") == "EACCES"
    assert g5.error(xs.XS_SET_PERMS, "/p", "n6") == "EPERM"   # no giving away
    dom0.set_perms("/p", "n6")                                 # Dom0 may
    assert g6.get_perms("/p") == ["n6"]
    assert dom0.error(xs.XS_SET_PERMS, "/p") == "EINVAL"
    assert dom0.error(xs.XS_SET_PERMS, "/p", "x6") == "EINVAL"
    assert dom0.error(xs.XS_SET_PERMS, "/nope", "n0") == "ENOENT"


def test_new_nodes_inherit_and_guests_own_what_they_create(xsd: XenStore,
                                                           dom0: Client) -> None:
    guest_dir(dom0, 4, "r0", "b4", "r9")
    dom0.write("/local/domain/4/by-dom0", "x")
    assert dom0.get_perms("/local/domain/4/by-dom0") == ["r0", "b4", "r9"]
    g4 = Client(xsd, 4)
    g4.write("/local/domain/4/mine/deep", "y")
    assert dom0.get_perms("/local/domain/4/mine") == ["r4", "b4", "r9"]
    assert dom0.get_perms("/local/domain/4/mine/deep") == ["r4", "b4", "r9"]
    g4.set_perms("/local/domain/4/mine/deep", "n4")          # it owns it
    assert Client(xsd, 9).error(xs.XS_READ, "/local/domain/4/mine/deep") == "EACCES"


def test_dom0_is_privileged(xsd: XenStore, dom0: Client) -> None:
    g = Client(xsd, 3)
    guest_dir(dom0, 3, "n3")
    g.write("private", "p")
    g.set_perms("private", "n3")
    assert dom0.read("/local/domain/3/private") == b"p"
    dom0.write("/local/domain/3/private", "d")
    dom0.rm("/local/domain/3/private")


def test_rm_needs_write_on_the_node_only(xsd: XenStore, dom0: Client) -> None:
    guest_dir(dom0, 3, "n0", "b3")
    dom0.write("/local/domain/3/dir/dom0-only", "x")
    dom0.set_perms("/local/domain/3/dir", "n0", "b3")
    dom0.set_perms("/local/domain/3/dir/dom0-only", "n0")
    Client(xsd, 3).rm("/local/domain/3/dir")                  # subtree and all
    assert dom0.error(xs.XS_READ, "/local/domain/3/dir/dom0-only") == "ENOENT"


def test_set_target_gives_a_device_model_its_targets_rights(xsd: XenStore,
                                                            dom0: Client) -> None:
    guest_dir(dom0, 2, "n2")
    g2, dm = Client(xsd, 2), Client(xsd, 7)
    g2.write("data", "x")
    assert dm.error(xs.XS_READ, "/local/domain/2/data") == "EACCES"
    assert dom0.error(xs.XS_SET_TARGET, "7", "2") == "ENOENT"   # not introduced
    for domid in (7, 2):
        dom0.call(xs.XS_INTRODUCE, str(domid), "0", "1")
    assert dm.error(xs.XS_SET_TARGET, "7", "2") == "EACCES"
    dom0.call(xs.XS_SET_TARGET, "7", "2")
    assert dm.read("/local/domain/2/data") == b"x"
    dm.set_perms("/local/domain/2/data", "n2", "r5")
    assert dom0.error(xs.XS_SET_TARGET, "7") == "EINVAL"


# -- domains ------------------------------------------------------------------------


def test_introduce_and_release(dom0: Client) -> None:
    calls = []
    xsd = XenStore(on_introduce=lambda *a: calls.append(("introduce", *a)),
                   on_release=lambda d: calls.append(("release", d)))
    dom0 = Client(xsd, 0)
    dom0.watch("@introduceDomain", "intro")
    dom0.watch("@releaseDomain", "rel")
    dom0.take_events()
    assert dom0.call(xs.XS_IS_DOMAIN_INTRODUCED, "3") == b"F\0"
    assert dom0.call(xs.XS_INTRODUCE, "3", "-5", "12") == b"OK\0"
    assert calls == [("introduce", 3, -5, 12)]
    assert dom0.take_events() == [("@introduceDomain", "intro")]
    assert xsd.is_introduced(3)
    assert dom0.call(xs.XS_IS_DOMAIN_INTRODUCED, "3") == b"T\0"
    assert dom0.call(xs.XS_IS_DOMAIN_INTRODUCED, "0") == b"T\0"
    assert dom0.call(xs.XS_IS_DOMAIN_INTRODUCED, str(0x7FF0)) == b"T\0"   # DOMID_SELF
    assert dom0.call(xs.XS_RESUME, "3") == b"OK\0"

    guest_dir(dom0, 3, "n3")
    dom0.take_events()
    g3 = Client(xsd, 3)
    g3.watch("x", "t")
    assert dom0.call(xs.XS_RELEASE, "3") == b"OK\0"
    assert calls[-1] == ("release", 3)
    assert ("@releaseDomain", "rel") in dom0.take_events()
    assert not xsd.is_introduced(3)
    assert g3.conn.closed and len(g3.conn.watches) == 0
    assert dom0.error(xs.XS_READ, "/local/domain/3") == "ENOENT"   # it owned it
    assert dom0.error(xs.XS_RELEASE, "3") == "ENOENT"
    assert dom0.error(xs.XS_RELEASE, "0") == "EINVAL"
    assert dom0.error(xs.XS_RESUME, "3") == "ENOENT"


def test_introduce_errors(xsd: XenStore, dom0: Client) -> None:
    assert dom0.error(xs.XS_INTRODUCE, "3", "0") == "EINVAL"
    assert dom0.error(xs.XS_INTRODUCE, "3", "0", "0") == "EINVAL"   # port 0
    refusing = XenStore(on_introduce=lambda *a: (_ for _ in ()).throw(OSError("no")))
    assert Client(refusing, 0).error(xs.XS_INTRODUCE, "3", "0", "1") == "EINVAL"
    assert not refusing.is_introduced(3)


def test_reintroduce_resets_the_domain_and_fires_nothing(xsd: XenStore, dom0: Client) -> None:
    dom0.call(xs.XS_INTRODUCE, "3", "0", "1")
    g3 = Client(xsd, 3)
    guest_dir(dom0, 3, "n3")
    g3.watch("x", "t")
    tx = g3.start()
    dom0.watch("@introduceDomain", "i")
    dom0.take_events()
    dom0.call(xs.XS_INTRODUCE, "3", "0", "1")
    assert dom0.take_events() == []
    assert len(g3.conn.watches) == 0 and not g3.conn.transactions
    assert g3.error(xs.XS_READ, "x", tx=tx) == "ENOENT"


def test_domain_released_removes_what_it_owned(xsd: XenStore, dom0: Client) -> None:
    dom0.call(xs.XS_INTRODUCE, "4", "0", "1")
    guest_dir(dom0, 4, "n0", "b4")
    dom0.write("/shared", "s")
    dom0.set_perms("/shared", "n0", "b4")
    g4 = Client(xsd, 4)
    g4.write("/local/domain/4/owned/sub", "o")
    g4.write("/shared/owned", "o")
    dom0.watch("@releaseDomain", "rel")
    dom0.watch("/shared", "sh")
    dom0.take_events()
    xsd.domain_released(4)
    assert set(dom0.take_events()) == {("@releaseDomain", "rel"), ("/shared/owned", "sh")}
    assert dom0.directory("/local/domain/4") == []
    assert dom0.directory("/shared") == []
    assert dom0.read("/shared") == b"s"
    assert xsd.store.owned[4] == 0
    assert g4.conn.closed
    # a later domain 4 does not inherit the dead one's rights
    assert Client(xsd, 4).error(xs.XS_WRITE, "/shared/x", "y") == "EACCES"
    assert dom0.get_perms("/shared") == ["n0", "b4"]
    dom0.set_perms("/shared", "n0", "b4")
    Client(xsd, 4).write("/shared/x", "y")


def test_domain_privileged_operations_are_refused_to_guests(xsd: XenStore) -> None:
    g = Client(xsd, 1)
    for type_, args in [(xs.XS_INTRODUCE, ("2", "0", "1")), (xs.XS_RELEASE, ("2",)),
                        (xs.XS_RESUME, ("2",)), (xs.XS_SET_TARGET, ("2", "3")),
                        (xs.XS_IS_DOMAIN_INTRODUCED, ("2",)), (xs.XS_CONTROL, ("print", "x"))]:
        assert g.error(type_, *args) == "EACCES"


# -- malformed requests -------------------------------------------------------------


def test_unserved_types_are_enosys(dom0: Client) -> None:
    for type_ in (xs.XS_WATCH_EVENT, xs.XS_ERROR, 20, xs.XS_TYPE_COUNT, 99, xs.XS_INVALID):
        assert dom0.raw_error(type_, b"/\0") == "ENOSYS"


@pytest.mark.parametrize("type_", [xs.XS_READ, xs.XS_DIRECTORY, xs.XS_MKDIR, xs.XS_RM,
                                   xs.XS_GET_PERMS])
def test_path_arguments_must_be_one_nul_terminated_valid_path(dom0: Client, type_: int) -> None:
    for payload in [b"/tool", b"", b"/tool\0extra\0", b"/tool\0\0", b"/to ol\0",
                    b"/tool/\0", b"//tool\0", b"/tool\xff\0",
                    b"/" + b"x" * 2048 + b"\0", b"/" + b"x" * 3100 + b"\0"]:
        assert dom0.raw_error(type_, payload) == "EINVAL", payload[:20]


def test_write_needs_a_path(dom0: Client) -> None:
    assert dom0.raw_error(xs.XS_WRITE, b"/no-nul") == "EINVAL"
    assert dom0.raw_error(xs.XS_WRITE, b"/bad path\0v") == "EINVAL"


def test_unknown_transaction_is_enoent(dom0: Client) -> None:
    assert dom0.error(xs.XS_READ, "/", tx=42) == "ENOENT"
    assert dom0.error(xs.XS_WRITE, "/a", "b", tx=42) == "ENOENT"
    assert dom0.error(xs.XS_WATCH, "/a", "t", tx=42) is None   # WATCH ignores tx_id


def test_oversized_payload_closes_only_that_connection(xsd: XenStore, dom0: Client) -> None:
    logs: list[str] = []
    xsd = XenStore(log=logs.append)
    good, bad = Client(xsd, 0), Client(xsd, 0)
    header = struct.pack("<IIII", xs.XS_WRITE, 1, 0, xs.XENSTORE_PAYLOAD_MAX + 1)
    first = encode(Message(xs.XS_WRITE, 9, 0, b"/before\0x"))
    xsd.handle_bytes(bad.conn, first + header + b"x" * 100)
    assert bad.conn.closed
    assert [m.req_id for m in bad.conn.outbox] == [9]      # handled before the error
    assert any("protocol violation" in line for line in logs)
    xsd.handle_bytes(bad.conn, encode(Message(xs.XS_READ, 10, 0, b"/\0")))
    assert len(bad.conn.outbox) == 1                       # ignored from now on
    assert good.read("/before") == b"x"
    good.write("/after", "fine")


def test_handle_bytes_byte_by_byte(xsd: XenStore) -> None:
    conn = xsd.connect(0)
    stream = b"".join(encode(Message(xs.XS_WRITE, i, 0, f"/n{i}\0{i}".encode()))
                      for i in range(5))
    for i in range(len(stream)):
        xsd.handle_bytes(conn, stream[i:i + 1])
    assert [(m.type, m.req_id) for m in conn.outbox] == [(xs.XS_WRITE, i) for i in range(5)]


def test_big_replies_become_e2big(dom0: Client) -> None:
    dom0.write("/v", b"x" * (xs.XENSTORE_PAYLOAD_MAX - 3))
    assert len(dom0.read("/v")) == xs.XENSTORE_PAYLOAD_MAX - 3


def test_disconnect_drops_watches_and_transactions(xsd: XenStore, dom0: Client) -> None:
    other = Client(xsd, 0)
    other.watch("/a", "t")
    other.start()
    xsd.disconnect(other.conn)
    assert other.conn not in xsd.connections and other.conn.closed
    dom0.write("/a", "x")
    xsd.handle(other.conn, Message(xs.XS_READ, 1, 0, b"/\0"))
    assert not other.conn.outbox                           # no events, no replies
    xsd.disconnect(other.conn)                             # twice is fine


def test_internal_errors_are_eio_and_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    logs: list[str] = []
    xsd = XenStore(log=logs.append)
    c = Client(xsd, 0)
    monkeypatch.setitem(handler.OPS, xs.XS_READ, handler._Op("READ", lambda s, r: bytes(1 // 0)))
    assert c.error(xs.XS_READ, "/") == "EIO"
    assert any("internal error" in line for line in logs)


# -- CONTROL ------------------------------------------------------------------------


def test_control(xsd: XenStore) -> None:
    logs: list[str] = []
    xsd = XenStore(log=logs.append)
    dom0 = Client(xsd, 0)
    assert dom0.call(xs.XS_CONTROL, "print", "hello") == b"OK\0"
    assert logs == ["control: hello"]
    text = dom0.call(xs.XS_CONTROL, "quota").decode()
    assert text.startswith("Quota settings:\n")
    assert "nodes            :     1000 Nodes per domain\n" in text
    assert "watches          :      128 Watches per domain\n" in text
    assert "node-size        :     2048 Max. size of a node\n" in text
    assert "transactions     :       10 Transactions per domain\n" in text
    assert "permissions      :        5 Max. number of permissions per node\n" in text
    assert "memory" in dom0.call(xs.XS_CONTROL, "quota-soft").decode()
    dom0.call(xs.XS_CONTROL, "quota", "set", "nodes", "50")
    assert xsd.quotas.nodes == 50
    assert dom0.error(xs.XS_CONTROL, "quota", "set", "nodes", "0") == "EINVAL"
    assert dom0.error(xs.XS_CONTROL, "quota", "set", "bogus", "3") == "EINVAL"
    assert dom0.error(xs.XS_CONTROL, "quota", "17") == "ENOENT"
    dom0.write("/x", "y")
    dom0.set_perms("/x", "n17")
    usage = dom0.call(xs.XS_CONTROL, "quota", "17").decode()
    assert usage.startswith("Domain 17:\nnodes           :        1\n")
    assert b"quota\t" in dom0.call(xs.XS_CONTROL, "help")
    assert dom0.error(xs.XS_CONTROL, "no-such-command") == "EINVAL"
    assert dom0.error(xs.XS_CONTROL, "print") == "EINVAL"
    assert dom0.raw_error(xs.XS_CONTROL, b"") == "EINVAL"
    assert dom0.call(xs.XS_CONTROL, "check") == b"OK\0"
    dom0.call(xs.XS_CONTROL, "log", "off")
    dom0.call(xs.XS_CONTROL, "print", "quiet")
    assert logs[-1] == "control: hello"
    assert dom0.call(xs.XS_DEBUG, "log", "on") == b"OK\0"
    assert dom0.error(xs.XS_CONTROL, "log", "maybe") == "EINVAL"


def test_reset_watches(xsd: XenStore) -> None:
    g = Client(xsd, 0)
    g.watch("/a", "t")
    tx = g.start()
    assert g.call(xs.XS_RESET_WATCHES, "") == b"OK\0"
    assert len(g.conn.watches) == 0
    assert g.error(xs.XS_READ, "/", tx=tx) == "ENOENT"


def test_quotas_are_per_store() -> None:
    a, b = XenStore(Quotas(nodes=3)), XenStore()
    assert a.quotas.nodes == 3 and b.quotas.nodes == 1000
