"""xenstored's transactions: private views, generation-checked commits."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domains.dom0.xenstored import XenStore
from hypervisor.public.io import xs_wire as xs
from tests.xsclient import Client, guest_dir

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def xsd() -> XenStore:
    return XenStore()


@pytest.fixture
def a(xsd: XenStore) -> Client:
    return Client(xsd, 0)


@pytest.fixture
def b(xsd: XenStore) -> Client:
    return Client(xsd, 0)


def test_ids_and_private_view(a: Client, b: Client) -> None:
    a.write("/k", "old")
    t1, t2 = a.start(), a.start()
    assert (t1, t2) == (1, 2)
    a.write("/k", "new", tx=t1)
    a.write("/fresh/node", "f", tx=t1)
    assert a.read("/k", tx=t1) == b"new"
    assert a.read("/k", tx=t2) == b"old"
    assert a.read("/k") == b"old" and b.read("/k") == b"old"
    assert b.error(xs.XS_READ, "/fresh") == "ENOENT"
    assert a.directory("/fresh", tx=t1) == ["node"]
    assert a.commit(t1) is None
    assert b.read("/k") == b"new"
    assert b.read("/fresh/node") == b"f"
    a.abort(t2)
    assert a.error(xs.XS_READ, "/k", tx=t1) == "ENOENT"     # the id is gone


def test_conflicting_write_gets_eagain_and_a_retry_succeeds(a: Client, b: Client) -> None:
    a.write("/counter", "1")
    tx = a.start()
    value = int(a.read("/counter", tx=tx))
    b.write("/counter", "10")                                 # someone else
    a.write("/counter", str(value + 1), tx=tx)
    assert a.commit(tx) == "EAGAIN"
    assert b.read("/counter") == b"10"
    tx = a.start()                                            # the retry
    a.write("/counter", str(int(a.read("/counter", tx=tx)) + 1), tx=tx)
    assert a.commit(tx) is None
    assert b.read("/counter") == b"11"


def test_listing_conflicts_with_a_new_child(a: Client, b: Client) -> None:
    a.mkdir("/dir/x")
    tx = a.start()
    assert a.directory("/dir", tx=tx) == ["x"]
    a.write("/elsewhere", "e", tx=tx)
    b.mkdir("/dir/y")
    assert a.commit(tx) == "EAGAIN"
    assert b.error(xs.XS_READ, "/elsewhere") == "ENOENT"


def test_missing_node_created_meanwhile_conflicts(a: Client, b: Client) -> None:
    tx = a.start()
    assert a.error(xs.XS_READ, "/later", tx=tx) == "ENOENT"
    b.write("/later", "x")
    assert a.error(xs.XS_READ, "/later", tx=tx) == "ENOENT"   # still its view
    assert a.commit(tx) == "EAGAIN"


def test_unrelated_changes_do_not_conflict(a: Client, b: Client) -> None:
    a.write("/mine", "1")
    b.write("/theirs", "1")
    tx = a.start()
    a.write("/mine", "2", tx=tx)
    b.write("/theirs", "2")
    assert a.commit(tx) is None


def test_rm_in_a_transaction(a: Client, b: Client) -> None:
    a.write("/t/x/y", "1")
    tx = a.start()
    a.rm("/t/x", tx=tx)
    assert a.error(xs.XS_READ, "/t/x/y", tx=tx) == "ENOENT"
    assert b.read("/t/x/y") == b"1"
    assert a.commit(tx) is None
    assert b.directory("/t") == []


def test_abort_discards(a: Client, b: Client) -> None:
    tx = a.start()
    a.write("/gone", "x", tx=tx)
    a.abort(tx)
    assert b.error(xs.XS_READ, "/gone") == "ENOENT"


def test_watches_fire_on_commit_only(a: Client, b: Client) -> None:
    b.watch("/w", "tok")
    b.take_events()
    tx = a.start()
    a.write("/w/one", "1", tx=tx)
    a.write("/w/two", "2", tx=tx)
    a.write("/w/one", "1b", tx=tx)
    assert b.take_events() == []
    assert a.commit(tx) is None
    assert b.take_events() == [("/w/one", "tok"), ("/w/two", "tok")]
    tx = a.start()
    a.write("/w/three", "3", tx=tx)
    a.abort(tx)
    assert b.take_events() == []
    b.watch("/w/two", "two")
    b.take_events()
    tx = a.start()
    a.rm("/w", tx=tx)
    assert b.take_events() == []
    assert a.commit(tx) is None
    # each removed node fires the watches on it; the subtree's root those above
    assert sorted(b.take_events()) == [("/w", "tok"), ("/w/two", "two")]


def test_end_errors(a: Client) -> None:
    assert a.error(xs.XS_TRANSACTION_END, "T") == "ENOENT"      # tx_id 0
    tx = a.start()
    assert a.error(xs.XS_TRANSACTION_END, "X", tx=tx) == "EINVAL"
    assert a.error(xs.XS_TRANSACTION_END, "T", "F", tx=tx) == "EINVAL"
    assert a.error(xs.XS_TRANSACTION_START, "", tx=tx) == "EBUSY"   # no nesting
    assert a.commit(tx) is None
    assert a.commit(tx) == "ENOENT"


def test_transactions_are_per_connection(a: Client, b: Client) -> None:
    tx = a.start()
    assert b.error(xs.XS_READ, "/", tx=tx) == "ENOENT"


def test_permissions_apply_inside_transactions(xsd: XenStore, a: Client) -> None:
    guest_dir(a, 1)
    a.write("/local/domain/0/secret", "s")
    g = Client(xsd, 1)
    tx = g.start()
    assert g.error(xs.XS_READ, "/local/domain/0/secret", tx=tx) == "EACCES"
    assert g.error(xs.XS_WRITE, "/local/domain/1/x", "y", tx=tx) == "EACCES"
    assert g.commit(tx) is None


def test_guest_transaction_creates_owned_nodes(xsd: XenStore, a: Client) -> None:
    guest_dir(a, 2, "n0", "b2")
    g = Client(xsd, 2)
    tx = g.start()
    g.write("mine/leaf", "v", tx=tx)
    assert xsd.store.owned[2] == 0
    assert g.commit(tx) is None
    assert xsd.store.owned[2] == 2
    assert a.get_perms("/local/domain/2/mine/leaf") == ["n2", "b2"]


# -- a model: commits succeed iff nothing the transaction touched changed ----------

KEYS = ["/k/a", "/k/b", "/k/c"]
steps = st.lists(st.tuples(st.sampled_from(["tx-read", "tx-write", "outside-write"]),
                           st.sampled_from(KEYS), st.integers(0, 99)), max_size=12)


@settings(max_examples=150, deadline=None)
@given(steps)
def test_commit_matches_the_model(script) -> None:
    xsd = XenStore()
    a, b = Client(xsd, 0), Client(xsd, 0)
    for key in KEYS:
        b.write(key, "init")
    expected = {key: b"init" for key in KEYS}
    tx = a.start()
    touched: set[str] = set()
    conflict = False
    tx_values: dict[str, bytes] = {}
    for op, key, n in script:
        if op == "outside-write":
            b.write(key, str(n))
            expected[key] = str(n).encode()
            conflict |= key in touched
        elif op == "tx-read":
            seen = a.read(key, tx=tx)
            assert seen == tx_values.get(key, expected[key] if key not in touched else seen)
            touched.add(key)
            tx_values.setdefault(key, seen)
        else:
            a.write(key, f"tx{n}", tx=tx)
            touched.add(key)
            tx_values[key] = f"tx{n}".encode()
    result = a.commit(tx)
    assert result == ("EAGAIN" if conflict else None)
    if not conflict:
        for key in touched:
            expected[key] = tx_values[key]
    assert {key: b.read(key) for key in KEYS} == expected
