"""xenstored's watches: what fires, when, with which path."""

import pytest

from domains.dom0.xenstored import XenStore
from hypervisor.public.io import xs_wire as xs
from tests.xsclient import Client, guest_dir

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def xsd() -> XenStore:
    return XenStore()


@pytest.fixture
def dom0(xsd: XenStore) -> Client:
    return Client(xsd, 0)


def test_fires_once_on_registration_then_on_changes_at_or_below(xsd: XenStore,
                                                               dom0: Client) -> None:
    w = Client(xsd, 0)
    w.watch("/a/b", "tok")
    assert w.take_events() == [("/a/b", "tok")]                 # even though missing
    for change in [lambda: dom0.write("/a/b", "1"), lambda: dom0.write("/a/b/c/d", "2"),
                   lambda: dom0.write("/a/b", "3"), lambda: dom0.set_perms("/a/b", "n0")]:
        change()
        assert len(w.take_events()) == 1
    dom0.write("/a/b/c", "4")
    assert w.take_events() == [("/a/b/c", "tok")]
    dom0.write("/a", "above")
    dom0.write("/a/bc", "sibling-ish")
    dom0.write("/x", "elsewhere")
    dom0.mkdir("/a/b")                                          # exists: no change
    assert w.take_events() == []
    dom0.mkdir("/a/b/new")
    assert w.take_events() == [("/a/b/new", "tok")]


def test_removing_a_parent_fires_watches_below(xsd: XenStore, dom0: Client) -> None:
    dom0.write("/p/q/r", "1")
    w = Client(xsd, 0)
    w.watch("/p/q/r", "deep")
    w.watch("/p/q/missing", "missing")
    w.watch("/", "root")
    w.take_events()
    dom0.rm("/p")
    # Each removed node fires the watches exactly on it, children first;
    # the removed subtree's root also those above it.
    assert w.take_events() == [("/p/q/r", "deep"), ("/p", "root")]


def test_relative_watch_paths_are_reported_relative(xsd: XenStore, dom0: Client) -> None:
    guest_dir(dom0, 3, "n3")
    g = Client(xsd, 3)
    g.watch("device", "rel")
    g.watch("/local/domain/3/device", "abs")
    assert g.take_events() == [("device", "rel"), ("/local/domain/3/device", "abs")]
    dom0.write("/local/domain/3/device/vif/0", "x")
    assert g.take_events() == [("device/vif/0", "rel"),
                               ("/local/domain/3/device/vif/0", "abs")]
    g.unwatch("device", "rel")
    assert g.error(xs.XS_UNWATCH, "device", "rel") == "ENOENT"
    g.unwatch("/local/domain/3/device", "abs")
    dom0.write("/local/domain/3/device/vif/1", "x")
    assert g.take_events() == []


def test_events_need_read_access(xsd: XenStore, dom0: Client) -> None:
    guest_dir(dom0, 1, "n1")
    dom0.write("/local/domain/0/secret", "s")
    g = Client(xsd, 1)
    g.watch("/local/domain/0", "snoop")
    g.watch("/local/domain/1", "own")
    g.take_events()
    dom0.write("/local/domain/0/secret/x", "change")
    dom0.write("/local/domain/1/x", "mine")
    assert g.take_events() == [("/local/domain/1/x", "own")]
    # losing access still tells about the change that took it away
    dom0.set_perms("/local/domain/1/x", "n0")
    assert g.take_events() == [("/local/domain/1/x", "own")]


def test_special_watches(xsd: XenStore, dom0: Client) -> None:
    g = Client(xsd, 5)
    dom0.watch("@introduceDomain", "i")
    dom0.watch("@releaseDomain", "r")
    g.watch("@releaseDomain", "gr")
    assert dom0.take_events() == [("@introduceDomain", "i"), ("@releaseDomain", "r")]
    assert g.take_events() == [("@releaseDomain", "gr")]
    dom0.call(xs.XS_INTRODUCE, "7", "0", "1")
    assert dom0.take_events() == [("@introduceDomain", "i")]
    xsd.domain_released(7)
    assert dom0.take_events() == [("@releaseDomain", "r")]
    assert g.take_events() == []                           # no read access
    assert g.error(xs.XS_GET_PERMS, "@releaseDomain") == "EACCES"
    assert g.error(xs.XS_SET_PERMS, "@releaseDomain", "n5") == "EACCES"
    dom0.set_perms("@releaseDomain", "n0", "r5")
    assert g.get_perms("@releaseDomain") == ["n0", "r5"]
    dom0.call(xs.XS_INTRODUCE, "8", "0", "1")
    dom0.call(xs.XS_RELEASE, "8")
    assert g.take_events() == [("@releaseDomain", "gr")]
    assert dom0.take_events() == [("@introduceDomain", "i"), ("@releaseDomain", "r")]
    assert dom0.error(xs.XS_SET_PERMS, "@other", "n0") == "EINVAL"
    assert dom0.error(xs.XS_GET_PERMS, "@other") == "EINVAL"
    assert dom0.error(xs.XS_READ, "@releaseDomain") == "EINVAL"    # not a node
    xsd.domain_released(9)                                 # never introduced
    assert dom0.take_events() == []


def test_watch_errors(xsd: XenStore, dom0: Client) -> None:
    dom0.watch("/a", "t")
    assert dom0.error(xs.XS_WATCH, "/a", "t") == "EEXIST"
    dom0.watch("/a", "t2")                                 # another token is fine
    assert dom0.error(xs.XS_WATCH, "/a") == "EINVAL"
    assert dom0.error(xs.XS_WATCH, "/a", "t", "extra") == "EINVAL"
    assert dom0.error(xs.XS_WATCH, "/a b", "t") == "EINVAL"
    assert dom0.error(xs.XS_WATCH, "/a/", "t") == "EINVAL"
    assert dom0.error(xs.XS_WATCH, "@" + "x" * 2048, "t") == "EINVAL"
    assert dom0.error(xs.XS_UNWATCH, "/a") == "EINVAL"
    assert dom0.error(xs.XS_UNWATCH, "/b", "t") == "ENOENT"


def test_identical_pending_events_are_dropped(xsd: XenStore, dom0: Client) -> None:
    w = xsd.connect(0)
    xsd.handle(w, xs_msg(xs.XS_WATCH, b"/d\0t\0"))
    dom0.write("/d", "1")
    dom0.write("/d", "2")                                  # w has not read the first
    dom0.write("/d/e", "3")
    events = [m.payload for m in w.outbox if m.type == xs.XS_WATCH_EVENT]
    assert events == [b"/d\0t\0", b"/d/e\0t\0"]


def test_every_connection_with_a_matching_watch_hears(xsd: XenStore, dom0: Client) -> None:
    others = [Client(xsd, 0) for _ in range(3)]
    for i, c in enumerate(others):
        c.watch("/shared", f"t{i}")
        c.take_events()
    dom0.write("/shared/x", "1")
    for i, c in enumerate(others):
        assert c.take_events() == [("/shared/x", f"t{i}")]


def test_reset_watches(xsd: XenStore, dom0: Client) -> None:
    w = Client(xsd, 0)
    w.watch("/r", "t")
    w.call(xs.XS_RESET_WATCHES, "")
    w.take_events()
    dom0.write("/r", "x")
    assert w.take_events() == []


def xs_msg(type_: int, payload: bytes):
    from domains.dom0.xenstored import Message
    return Message(type_, 1, 0, payload)
