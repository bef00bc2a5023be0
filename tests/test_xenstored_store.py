"""xenstored's node tree, paths and permissions (store.py, permissions.py)."""

import pytest

from domains.dom0.xenstored.errors import XsError
from domains.dom0.xenstored.permissions import (
    XS_PERM_ALL,
    XS_PERM_NONE,
    XS_PERM_READ,
    XS_PERM_WRITE,
    Perm,
    forget_domain,
    format_perms,
    inherit,
    parse_perm,
    parse_perms,
    perm_for,
    perms_from_wire,
    perms_to_wire,
)
from domains.dom0.xenstored.store import (
    Node,
    Store,
    basename,
    canonicalize,
    child_name,
    domain_path,
    get_parent,
    is_child,
    is_valid_nodename,
)
from hypervisor.public.io.xs_wire import XENSTORE_REL_PATH_MAX

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("path", [
    "/", "/a", "/local/domain/1/device/vif/0", "/a-b_c@d/E9",
])
def test_valid_paths(path: str) -> None:
    assert is_valid_nodename(path)


@pytest.mark.parametrize("path", [
    "", "a", "@releaseDomain", "/a/", "/a//b", "//", "/a b", "/a.b", "/a\0", "/ä",
    "/" + "x" * XENSTORE_REL_PATH_MAX,
])
def test_invalid_paths(path: str) -> None:
    assert not is_valid_nodename(path)


def test_path_length_discounts_the_domain_directory() -> None:
    rest = "x" * (XENSTORE_REL_PATH_MAX - 1)
    assert is_valid_nodename("/" + rest)                 # 2048 characters
    assert not is_valid_nodename("/" + rest + "x")
    assert is_valid_nodename("/local/domain/12345/" + rest + "x")
    assert not is_valid_nodename("/local/domain/12345/" + rest + "xx")
    # six digits are no domid to sscanf("%5u"): the whole path counts
    assert not is_valid_nodename("/local/domain/123456/" + rest)
    assert not is_valid_nodename("/local/domain/1/" + rest, path_max=100)


def test_path_helpers() -> None:
    assert canonicalize("device/vif", "/local/domain/3") == "/local/domain/3/device/vif"
    assert canonicalize("/abs", "/local/domain/3") == "/abs"
    assert canonicalize("@releaseDomain", "/local/domain/3") == "@releaseDomain"
    assert get_parent("/a/b") == "/a" and get_parent("/a") == "/" and get_parent("/") == "/"
    assert basename("/a/b") == "b"
    assert child_name("/", "a") == "/a" and child_name("/a", "b") == "/a/b"
    assert is_child("/a/b", "/a") and is_child("/a", "/a") and is_child("/x", "/")
    assert not is_child("/ab", "/a") and not is_child("/a", "/a/b")
    assert domain_path(7) == "/local/domain/7"
    assert domain_path(-1) == "/local/domain/4294967295"


def test_initial_tree() -> None:
    store = Store()
    root, tool, domains = (store.get(path) for path in ("/", "/tool", "/local/domain"))
    assert root is not None and tool is not None and domains is not None
    assert root.children == ("tool", "local")
    assert tool.children == ("xenstored",)
    assert domains.children == ()
    for node in store.nodes.values():
        assert node.perms == (Perm(0, XS_PERM_NONE),)
    assert store.owned[0] == len(store.nodes) == 5


def test_store_put_delete_account_owners_and_generations() -> None:
    store = Store()
    gen = store.generation
    a = store.put(Node("/a", b"v", (Perm(3, XS_PERM_NONE),)))
    assert a.generation == gen and store.generation == gen + 1
    assert store.owned[3] == 1
    store.put(Node("/a", b"v", (Perm(4, XS_PERM_NONE),)))
    assert store.owned[3] == 0 and store.owned[4] == 1
    store.delete("/a")
    assert store.owned[4] == 0 and store.get("/a") is None


def test_node_size_is_xens() -> None:
    node = Node("/a", b"12345", (Perm(0, 0), Perm(1, 1)), ("x", "yz"))
    assert node.size == 24 + 2 * 8 + 5 + 5
    assert node.children_payload() == b"x\0yz\0"
    assert node.with_child("w").children == ("x", "yz", "w")
    assert node.without_child("x").children == ("yz",)


def test_walk_is_parents_first() -> None:
    assert [n.name for n in Store().walk()] == [
        "/", "/tool", "/tool/xenstored", "/local", "/local/domain"]


# -- permissions --------------------------------------------------------------------


def test_perm_strings_round_trip() -> None:
    perms = parse_perms(["n0", "r1", "w2", "b3"])
    assert perms == (Perm(0, 0), Perm(1, 1), Perm(2, 2), Perm(3, 3))
    assert format_perms(perms) == ["n0", "r1", "w2", "b3"]
    assert perms_to_wire(perms) == b"n0\0r1\0w2\0b3\0"
    assert perms_from_wire(b"n0\0r1\0") == perms[:2]
    assert parse_perm("r0x10") == Perm(16, 1)      # strtol(.., 0), as Xen
    assert format_perms((Perm(0xFFFFFFFF, 0),)) == ["n-1"]


@pytest.mark.parametrize("text", ["", "x1", "r", "r1x", "r 1x", "n-", "b1 2"])
def test_bad_perm_strings(text: str) -> None:
    with pytest.raises(XsError) as info:
        parse_perm(text)
    assert info.value.name == "EINVAL"


def test_no_perms_is_invalid() -> None:
    with pytest.raises(XsError):
        parse_perms([])


def test_perm_for_follows_xen() -> None:
    perms = parse_perms(["r5", "w6", "n7", "b8"])
    assert perm_for(perms, 5) == XS_PERM_ALL                 # owner
    assert perm_for(perms, 9, privileged=True) == XS_PERM_ALL
    assert perm_for(perms, 6) == XS_PERM_WRITE
    assert perm_for(perms, 7) == XS_PERM_NONE
    assert perm_for(perms, 8) == XS_PERM_READ | XS_PERM_WRITE
    assert perm_for(perms, 9) == XS_PERM_READ                # the first entry's
    # a device model acts for its target
    assert perm_for(perms, 20, target=5) == XS_PERM_ALL
    assert perm_for(perms, 20, target=6) == XS_PERM_WRITE
    # the first matching entry wins
    assert perm_for(parse_perms(["n0", "r1", "w1"]), 1) == XS_PERM_READ


def test_inherit_and_forget() -> None:
    parent = parse_perms(["r0", "b4"])
    assert inherit(parent, 0, privileged=True) == parent
    assert inherit(parent, 4, privileged=False) == parse_perms(["r4", "b4"])
    forgotten = forget_domain(parse_perms(["n0", "r4", "b5"]), 4)
    assert perm_for(forgotten, 4) == XS_PERM_NONE
    assert perm_for(forgotten, 5) == XS_PERM_READ | XS_PERM_WRITE
    assert format_perms(forgotten) == ["n0", "r4", "b5"]   # still listed, as Xen
    same = parse_perms(["n4"])
    assert forget_domain(same, 4) is same                  # never the owner
