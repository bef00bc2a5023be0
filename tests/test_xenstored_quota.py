"""xenstored's quotas: Xen 4.17's defaults, limits and errors."""

import struct

import pytest

from domains.dom0.xenstored import Message, Quotas, XenStore, encode
from domains.dom0.xenstored.quota import node_size
from hypervisor.public.io import xs_wire as xs
from tests.xsclient import Client, guest_dir

pytestmark = pytest.mark.timeout(60)


def setup(quotas: Quotas | None = None) -> tuple[XenStore, Client, Client]:
    xsd = XenStore(quotas)
    dom0 = Client(xsd, 0)
    guest_dir(dom0, 1, "n1")
    return xsd, dom0, Client(xsd, 1)


def test_xens_defaults() -> None:
    q = Quotas()
    assert (q.nodes, q.watches, q.transactions, q.node_size, q.permissions) == (
        1000, 128, 10, 2048, 5)
    assert (q.transaction_nodes, q.path_max, q.outstanding, q.payload_max) == (
        1024, 2048, 20, 4096)
    assert (q.memory, q.memory_soft) == (2560 * 1024, 2048 * 1024)
    assert node_size(1, 0, 0) == 32


def test_nodes_per_domain_enospc() -> None:
    xsd, dom0, guest = setup()
    assert xsd.store.owned[1] == 1                   # /local/domain/1 itself
    for d in range(9):                               # 9 directories of 110 nodes
        for n in range(110):                         # (short child lists: node-size)
            guest.write(f"d{d}/n{n}", "")
    assert xsd.store.owned[1] == 1000
    assert guest.error(xs.XS_WRITE, "one-more", "") == "ENOSPC"
    assert guest.error(xs.XS_MKDIR, "one-more") == "ENOSPC"
    guest.write("d0/n0", "rewriting is fine")
    guest.rm("d0/n0")
    guest.write("one-more", "")                      # room again
    dom0.write("/local/domain/1/by-dom0", "x")       # Dom0 is exempt; the node
    assert xsd.store.owned[1] == 1001                # inherits its parent's owner
    assert guest.error(xs.XS_WRITE, "yet-another", "") == "ENOSPC"


def test_nodes_quota_counts_every_missing_parent() -> None:
    xsd, dom0, guest = setup(Quotas(nodes=4))
    assert xsd.store.owned[1] == 1
    assert guest.error(xs.XS_WRITE, "a/b/c/d", "") == "ENOSPC"
    assert dom0.error(xs.XS_READ, "/local/domain/1/a") == "ENOENT"   # all or nothing
    guest.write("a/b/c", "")
    assert xsd.store.owned[1] == 4


def test_nodes_quota_at_commit() -> None:
    _xsd, dom0, guest = setup(Quotas(nodes=3))
    tx = guest.start()
    guest.write("a", "", tx=tx)                      # would own 2 of 3
    assert guest.commit(tx) is None
    tx = guest.start()
    guest.write("b", "", tx=tx)                      # would own 3: Xen says >=
    assert guest.commit(tx) == "ENOSPC"
    assert dom0.error(xs.XS_READ, "/local/domain/1/b") == "ENOENT"


def test_watches_e2big() -> None:
    xsd, dom0, guest = setup()
    for i in range(129):                             # Xen checks "> 128" first
        guest.watch(f"w{i}", "t")
    assert guest.error(xs.XS_WATCH, "w-too-many", "t") == "E2BIG"
    other = Client(xsd, 1)                           # counted per domain
    assert other.error(xs.XS_WATCH, "w-too-many", "t") == "E2BIG"
    guest.unwatch("w0", "t")
    guest.watch("w-too-many", "t")
    for i in range(200):
        dom0.watch(f"/d{i}", "t")                    # Dom0 is exempt


def test_node_size_enospc() -> None:
    _xsd, dom0, guest = setup()
    limit = 2048 - node_size(1, 0, 0)                # one permission entry
    guest.write("big", b"x" * (limit - 1))
    assert guest.error(xs.XS_WRITE, "big", b"x" * limit) == "ENOSPC"
    assert guest.read("big") == b"x" * (limit - 1)
    dom0.write("/local/domain/1/big", b"x" * 4000)   # Dom0 is exempt
    # a parent's child list counts too
    guest.write("parent/" + "c" * (limit - 2), "")
    assert guest.error(xs.XS_WRITE, "parent/d", "") == "ENOSPC"


def test_transactions_enospc() -> None:
    _xsd, dom0, guest = setup()
    ids = [guest.start() for _ in range(11)]         # Xen checks "> 10" first
    assert guest.error(xs.XS_TRANSACTION_START, "") == "ENOSPC"
    guest.abort(ids[0])
    guest.start()
    assert len({dom0.start() for _ in range(30)}) == 30   # Dom0 is exempt


def test_permissions_enospc() -> None:
    _xsd, dom0, guest = setup()
    guest.write("p", "")
    guest.set_perms("p", "n1", "r2", "r3", "r4", "r5")
    assert guest.error(xs.XS_SET_PERMS, "p", "n1", "r2", "r3", "r4", "r5", "r6") == "ENOSPC"
    dom0.set_perms("/local/domain/1/p", "n1", *[f"r{i}" for i in range(2, 12)])


def test_transaction_nodes_enospc() -> None:
    _xsd, dom0, guest = setup(Quotas(transaction_nodes=6))
    for i in range(10):
        dom0.write(f"/local/domain/1/r{i}", "x")
        dom0.set_perms(f"/local/domain/1/r{i}", "n1")
    tx = guest.start()
    errors = [guest.error(xs.XS_READ, f"r{i}", tx=tx) for i in range(10)]
    assert errors[:6] == [None] * 6 and "ENOSPC" in errors
    assert guest.commit(tx) == "ENOMEM"              # the transaction failed
    tx = dom0.start()
    for i in range(10):
        dom0.read(f"/local/domain/1/r{i}", tx=tx)    # Dom0 is exempt
    assert dom0.commit(tx) is None


def test_path_length_einval_for_everybody() -> None:
    _xsd, dom0, guest = setup()
    long_rel = "/".join(["x" * 100] * 19 + ["y" * 129])
    assert len(long_rel) == 2048
    guest.write(long_rel, "")                        # relative part == 2048
    assert guest.error(xs.XS_WRITE, long_rel + "y", "") == "EINVAL"
    assert dom0.error(xs.XS_WRITE, "/" + long_rel, "") == "EINVAL"
    dom0.write("/" + long_rel[:-1], "")
    assert dom0.error(xs.XS_WATCH, "/" + long_rel, "t") == "EINVAL"


def test_payload_over_4096_closes_the_connection() -> None:
    xsd, dom0, guest = setup()
    oversized = Message(xs.XS_WRITE, 1, 0, b"v\0" + b"x" * 4095)
    xsd.handle_bytes(guest.conn, encode(oversized))
    assert guest.conn.closed and not guest.conn.outbox
    assert dom0.read("/local/domain/1") == b""
    header_only = struct.pack("<IIII", xs.XS_READ, 1, 0, 0xFFFFFFFF)
    other = xsd.connect(0)
    xsd.handle_bytes(other, header_only[:10])
    assert not other.closed
    xsd.handle_bytes(other, header_only[10:])
    assert other.closed


def test_control_changes_quotas_at_runtime() -> None:
    _xsd, dom0, guest = setup()
    dom0.call(xs.XS_CONTROL, "quota", "set", "permissions", "1")
    guest.write("p", "")
    assert guest.error(xs.XS_SET_PERMS, "p", "n1", "r2") == "ENOSPC"
    dom0.call(xs.XS_CONTROL, "quota", "set", "node-size", "100")
    assert guest.error(xs.XS_WRITE, "p", b"x" * 80) == "ENOSPC"


def test_may_read_after_outstanding_replies() -> None:
    xsd, dom0, guest = setup(Quotas(outstanding=2))
    for i in range(2):
        xsd.handle(guest.conn, Message(xs.XS_READ, i, 0, b"/local/domain/1\0"))
    assert not xsd.may_read(guest.conn)
    guest.conn.outbox.popleft()
    assert xsd.may_read(guest.conn)
    assert xsd.may_read(dom0.conn)


def test_a_domain_may_have_quotas_of_its_own() -> None:
    """A driver domain's backend nodes are its own: the toolstack raises its
    quotas for what it serves, nobody else's (CONTROL quota set <domid>)."""
    xsd, dom0, guest = setup(Quotas(nodes=4, watches=1))
    dom0.call(xs.XS_INTRODUCE, "1", "0", "1")
    guest_dir(dom0, 2, "n2")
    other = Client(xsd, 2)
    assert guest.error(xs.XS_WRITE, "a/b/c/d", "") == "ENOSPC"
    assert dom0.call(xs.XS_CONTROL, "quota", "set", "1", "nodes", "10") == b"OK\0"
    assert dom0.call(xs.XS_CONTROL, "quota", "set", "1", "watches", "3") == b"OK\0"
    guest.write("a/b/c/d", "")                       # its own quota now
    assert other.error(xs.XS_WRITE, "a/b/c/d", "") == "ENOSPC"   # not the others'
    for n in range(4):                               # Xen's off-by-one: watches + 1
        guest.call(xs.XS_WATCH, f"w{n}", f"t{n}")
    assert guest.error(xs.XS_WATCH, "w9", "t9") == "E2BIG"
    for n in range(2):                               # the others keep the global 1 (+1)
        other.call(xs.XS_WATCH, f"w{n}", f"t{n}")
    assert other.error(xs.XS_WATCH, "w9", "t9") == "E2BIG"
    text = dom0.call(xs.XS_CONTROL, "quota", "1").decode()
    assert "nodes           :        5" in text
    assert "Quota settings of the domain:" in text and "nodes            :       10" in text
    assert "Quota settings" not in dom0.call(xs.XS_CONTROL, "quota", "2").decode()
    assert dom0.error(xs.XS_CONTROL, "quota", "set", "7", "nodes", "10") == "ENOENT"
    assert dom0.error(xs.XS_CONTROL, "quota", "set", "1", "bogus", "10") == "EINVAL"
    assert dom0.error(xs.XS_CONTROL, "quota", "set", "1", "nodes", "0") == "EINVAL"
    assert guest.error(xs.XS_CONTROL, "quota", "set", "1", "nodes", "99") == "EACCES"
    # Transactions commit against the quotas of the domains they change.
    tx = int(guest.call(xs.XS_TRANSACTION_START, "").rstrip(b"\0"))
    guest.write("e/f", "", tx=tx)
    assert guest.commit(tx) is None
    dom0.call(xs.XS_RELEASE, "1")                    # gone: a later domain 1 starts over
    assert 1 not in xsd.domain_quotas


def test_a_quota_refusal_is_told_once_a_while_not_in_a_flood() -> None:
    """A guest can hit a quota in a loop, a new path each time: Dom0 is told
    once a while (dmesg, its log), and the last refusal is kept."""
    xsd, dom0, guest = setup(Quotas(nodes=1))
    told: list[tuple[int, str]] = []
    xsd.on_quota_error = lambda domid, text: told.append((domid, text))
    for n in range(50):
        assert guest.error(xs.XS_WRITE, f"x{n}", "") == "ENOSPC"
    assert len(told) == 1 and told[0][0] == 1
    assert told[0][1].startswith("ENOSPC") and "WRITE" in told[0][1]
    assert "x49" in xsd.quota_errors[1]  # the last one is kept, told or not
