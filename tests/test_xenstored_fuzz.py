"""Random traffic from several connections never breaks xenstored's core.

Whatever arrives, no exception escapes, every request gets exactly one
reply (echoing req_id and tx_id, within XENSTORE_PAYLOAD_MAX) unless its
connection was closed, framing violations close exactly the offending
connection, and the store stays consistent.
"""

from __future__ import annotations

import dataclasses
import struct
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domains.dom0.xenstored import Message, XenStore, encode
from domains.dom0.xenstored.store import child_name
from hypervisor.public.io import xs_wire as xs

pytestmark = pytest.mark.timeout(60)

PATHS = ["/", "/a", "/a/b", "/a/b/c", "/local/domain/1", "/local/domain/1/x",
         "/local/domain/2/y/z", "/local/domain/0/s", "x", "x/y", "@introduceDomain",
         "@releaseDomain", "@other", "", "/bad path", "/a/", "//a", "/tool/xenstored",
         "/" + "p" * 2100, "/local/domain/3/dm"]
WORDS = ["t", "tok", "0", "1", "2", "3", "-1", "4294967295", "32752", "abc", "n0", "r1",
         "w2", "b3", "n1", "x9", "T", "F", "print", "quota", "quota-soft", "help", "check",
         "log", "on", "set", "nodes", "watches", "1000000"]
TYPES = list(range(24)) + [30, xs.XS_INVALID]

piece = st.one_of(st.sampled_from(PATHS), st.sampled_from(WORDS),
                  st.binary(max_size=12).map(lambda b: b.decode("latin-1")))


@st.composite
def payloads(draw) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=64))
    parts = [p.encode("latin-1") for p in draw(st.lists(piece, max_size=5))]
    data = b"\0".join(parts)
    if draw(st.booleans()):
        data += b"\0"
    if draw(st.integers(0, 19)) == 0:
        data += b"v" * draw(st.integers(0, 4096))
    return data[:xs.XENSTORE_PAYLOAD_MAX]


GOOD_PATHS = ["/a", "/a/b", "/a/b/c", "/a/d", "/local/domain/1/x", "/local/domain/1/x/y",
              "/local/domain/2/y", "x", "x/y", "y", "/local/domain/0/s", "@releaseDomain",
              "@introduceDomain", "/local/domain/3/dm"]
path = st.sampled_from(GOOD_PATHS).map(str.encode)
domid = st.sampled_from([b"0", b"1", b"2", b"3", b"4", b"-1", b"32752"])
perm = st.sampled_from([b"n0", b"r1", b"w2", b"b3", b"n1", b"b2", b"r3", b"q"])


def z(*parts: bytes) -> bytes:
    return b"".join(p + b"\0" for p in parts)


# Requests shaped as their type wants, so that they mostly succeed.
shaped = st.one_of(
    st.tuples(st.sampled_from([xs.XS_READ, xs.XS_DIRECTORY, xs.XS_MKDIR, xs.XS_RM,
                               xs.XS_GET_PERMS]), path.map(z)),
    st.tuples(st.just(xs.XS_WRITE),
              st.builds(lambda p, v: p + b"\0" + v, path, st.binary(max_size=30))),
    st.tuples(st.just(xs.XS_SET_PERMS),
              st.builds(lambda p, ps: z(p, *ps), path, st.lists(perm, min_size=1, max_size=7))),
    st.tuples(st.sampled_from([xs.XS_WATCH, xs.XS_UNWATCH]),
              st.builds(z, path, st.sampled_from([b"t", b"u"]))),
    st.tuples(st.just(xs.XS_TRANSACTION_START), st.just(b"\0")),
    st.tuples(st.just(xs.XS_TRANSACTION_END), st.sampled_from([b"T\0", b"F\0"])),
    st.tuples(st.just(xs.XS_DIRECTORY_PART),
              st.builds(z, path, st.sampled_from([b"0", b"1", b"2", b"99"]))),
    st.tuples(st.just(xs.XS_INTRODUCE), st.builds(z, domid, domid, domid)),
    st.tuples(st.sampled_from([xs.XS_RELEASE, xs.XS_RESUME, xs.XS_IS_DOMAIN_INTRODUCED,
                               xs.XS_GET_DOMAIN_PATH]), domid.map(z)),
    st.tuples(st.just(xs.XS_SET_TARGET), st.builds(z, domid, domid)),
    st.tuples(st.just(xs.XS_RESET_WATCHES), st.just(b"")),
    st.tuples(st.just(xs.XS_CONTROL), st.sampled_from(
        [z(b"quota"), z(b"quota", b"1"), z(b"help"), z(b"print", b"hi"),
         z(b"quota", b"set", b"watches", b"3"), z(b"quota-soft"), z(b"check")])),
)

#: A tx_id the test replaces by the connection's newest transaction's.
NEWEST_TX = 0xFFFFFFFE

shaped_messages = st.builds(lambda tp, req, tx: Message(tp[0], req, tx, tp[1]), shaped,
                            st.integers(0, 2**32 - 1),
                            st.sampled_from([0] * 5 + [NEWEST_TX] * 3 + [1, 2]))
messages = st.one_of(
    shaped_messages, shaped_messages, shaped_messages,
    st.builds(Message,
              type=st.sampled_from(TYPES),
              req_id=st.integers(0, 2**32 - 1),
              tx_id=st.one_of(st.just(0), st.integers(1, 4), st.integers(0, 2**32 - 1)),
              payload=payloads()))


@st.composite
def byte_chunks(draw) -> bytes:
    """Well-formed frames, cut anywhere, sometimes with garbage."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=80))
    if kind == 1:
        return struct.pack("<IIII", 2, 1, 0, draw(st.integers(4097, 2**32 - 1)))
    data = b"".join(encode(m) for m in draw(st.lists(messages, max_size=3)))
    start = draw(st.integers(0, len(data)))
    return data[start:] if draw(st.booleans()) else data[:start]


actions = st.sampled_from(["msg"] * 15 + ["bytes"] * 4 + ["released"]).flatmap(
    lambda kind: {
        "msg": st.tuples(st.just("msg"), st.integers(0, 4), messages),
        "bytes": st.tuples(st.just("bytes"), st.integers(0, 4), byte_chunks()),
        "released": st.tuples(st.just("released"), st.sampled_from([1, 2, 3]), st.none()),
    }[kind])


class Shadow:
    """An independent count of the complete frames a byte stream holds."""

    def __init__(self) -> None:
        self.buf = b""
        self.broken = False

    def feed(self, data: bytes) -> int:
        self.buf += data
        count = 0
        while len(self.buf) >= 16 and not self.broken:
            length = struct.unpack_from("<I", self.buf, 12)[0]
            if length > xs.XENSTORE_PAYLOAD_MAX:
                self.broken = True
            elif len(self.buf) >= 16 + length:
                self.buf = self.buf[16 + length:]
                count += 1
            else:
                break
        return count


def check_store(xsd: XenStore) -> None:
    nodes = xsd.store.nodes
    for name, node in nodes.items():
        assert node.name == name
        assert len(set(node.children)) == len(node.children)
        for child in node.children:
            assert child_name(name, child) in nodes, (name, child)
        if name != "/":
            parent = nodes[name.rsplit("/", 1)[0] or "/"]
            assert name.rsplit("/", 1)[1] in parent.children
    owned = Counter(n.owner for n in nodes.values())
    assert {d: c for d, c in xsd.store.owned.items() if c} == dict(owned)


def replies(out: list[Message]) -> list[Message]:
    return [m for m in out if m.type != xs.XS_WATCH_EVENT]


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(actions, min_size=20, max_size=100))
def test_random_traffic(script) -> None:
    logs: list[str] = []
    xsd = XenStore(on_introduce=lambda *a: None, log=logs.append)
    conns = [xsd.connect(d) for d in (0, 0, 1, 2, 3)]
    setup = [Message(xs.XS_INTRODUCE, 0, 0, f"{d}\0{d}\0{d}\0".encode()) for d in (1, 2, 3)]
    for d in (1, 2, 3):
        setup += [Message(xs.XS_MKDIR, 0, 0, f"/local/domain/{d}\0".encode()),
                  Message(xs.XS_SET_PERMS, 0, 0, f"/local/domain/{d}\0n{d}\0r0\0".encode())]
    for msg in setup:
        xsd.handle(conns[0], msg)
    assert all(m.type != xs.XS_ERROR for m in conns[0].outbox)
    shadows = [Shadow() for _ in conns]

    for kind, index, arg in script:
        if kind == "released":
            xsd.domain_released(index)
            continue
        conn = conns[index]
        was_closed = conn.closed
        before = list(conn.outbox)
        conn.outbox.clear()
        if kind == "msg":
            if arg.tx_id == NEWEST_TX:
                arg = dataclasses.replace(arg, tx_id=max(conn.transactions, default=0))
            xsd.handle(conn, arg)
            expected = 0 if was_closed else 1
            requests = [arg]
        else:
            complete = shadows[index].feed(arg)
            xsd.handle_bytes(conn, arg)
            expected = 0 if was_closed else complete
            requests = []
            if not was_closed:
                assert conn.closed == shadows[index].broken
        got = replies(list(conn.outbox))
        assert len(got) == expected, (kind, arg, got)
        for reply, request in zip(got, requests):
            assert (reply.req_id, reply.tx_id) == (request.req_id, request.tx_id)
            assert reply.type in (request.type, xs.XS_ERROR)
        for reply in got:
            assert len(reply.payload) <= xs.XENSTORE_PAYLOAD_MAX
            if reply.type == xs.XS_ERROR:
                assert reply.payload.endswith(b"\0")
                assert reply.payload[:-1].decode() in xs.xsd_errors
        if was_closed:
            assert not conn.outbox
        conn.outbox.extendleft(reversed(before))
        for c in conns:
            for m in c.outbox:
                assert len(m.payload) <= xs.XENSTORE_PAYLOAD_MAX

    assert not [line for line in logs if "internal error" in line], logs
    check_store(xsd)
    for c in conns:
        if c.closed:
            assert len(c.watches) == 0 and not c.transactions
