"""Doorbells (domains/kernel/doorbell.py): a connected port rung straight
from one kernel's EventChannels to another's upcall loop, and every way a
ring can fail to arrive, which sends the caller to the hypercall."""

import os
import socket
import threading

import pytest
import zmq

from domains.kernel.doorbell import PORT, Doorbell, DoorbellError, Doorbells
from domains.kernel.events import MASK_OFFSET, NR_PORTS, PENDING_OFFSET, EventChannels

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def bells(tmp_path):
    made = []

    def make(domid: int) -> Doorbell:
        bell = Doorbell(f"{tmp_path}/{domid}.bell")
        made.append(bell)
        return bell

    sender = Doorbells(f"{tmp_path}/{{domid}}.bell")
    yield make, sender
    sender.close()
    for bell in made:
        bell.close()


def test_rings_arrive_once_each_in_the_order_first_rung(bells) -> None:
    make, sender = bells
    bell = make(3)
    for port in (7, 5, 7, 9, 5):
        assert sender.ring(3, port)
    assert bell.take(64) == [7, 5, 9]
    assert bell.take(64) == []


def test_take_reads_at_most_its_limit(bells) -> None:
    make, sender = bells
    bell = make(3)
    for port in range(1, 11):
        sender.ring(3, port)
    assert bell.take(4) == [1, 2, 3, 4]
    assert bell.take(64) == list(range(5, 11))


def test_a_datagram_that_is_not_a_port_is_ignored(bells, tmp_path) -> None:
    make, _ = bells
    bell = make(3)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        for junk in (b"", b"\x01", PORT.pack(6) + b"x"):
            s.sendto(junk, f"{tmp_path}/3.bell")
        s.sendto(PORT.pack(8), f"{tmp_path}/3.bell")
    assert bell.take(64) == [8]


def test_no_doorbell_there_fails(bells) -> None:
    _, sender = bells
    assert not sender.ring(4, 1)


def test_a_gone_peer_fails_and_its_successor_is_reached(bells) -> None:
    make, sender = bells
    old = make(3)
    assert sender.ring(3, 1)
    old.close()
    assert not sender.ring(3, 2)  # died: the hypercall path takes over
    new = make(3)  # restarted, bound at the same path
    assert sender.ring(3, 3)
    assert new.take(64) == [3]


def test_a_stale_socket_file_does_not_stop_a_bind(tmp_path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(f"{tmp_path}/3.bell")
    stale.close()  # the file stays, as after a crash
    bell = Doorbell(f"{tmp_path}/3.bell")
    bell.close()
    assert not os.path.exists(f"{tmp_path}/3.bell")


def test_a_full_queue_fails_instead_of_blocking(bells) -> None:
    make, sender = bells
    bell = make(3)
    sent = 0
    while sender.ring(3, 1 + sent % 100):
        sent += 1
        assert sent < 1_000_000, "the doorbell's queue never filled"
    assert sent > 0
    assert bell.take(1_000_000) == list(range(1, 1 + min(sent, 100)))
    assert sender.ring(3, 1)  # drained: rings again


def test_a_path_too_long_is_named(tmp_path) -> None:
    path = f"{tmp_path}/{'x' * 120}.bell"
    with pytest.raises(DoorbellError, match="cannot bind the doorbell at"):
        Doorbell(path)


def test_closed_sender_rings_nothing(bells) -> None:
    make, sender = bells
    make(3)
    sender.close()
    assert not sender.ring(3, 1)


class Log:
    def error(self, *args, **kw) -> None:
        raise AssertionError((args, kw))


@pytest.fixture
def two_kernels(tmp_path):
    ctx = zmq.Context()
    kernels = []
    for domid in (1, 2):
        ends = {"upcall": f"inproc://up-{id(ctx)}-{domid}",
                "doorbell": f"{tmp_path}/{domid}.bell",
                "doorbell_template": f"{tmp_path}/{{domid}}.bell"}
        kernels.append(EventChannels(None, ctx, ends, bytearray(MASK_OFFSET + NR_PORTS), Log()))
    yield kernels
    for ev in kernels:
        ev.stop()
    ctx.term()


def connect(a: EventChannels, a_port: int, b_domid: int, b_port: int) -> None:
    """What bind_interdomain leaves behind, without a hypervisor."""
    a.ports.add(a_port)
    a.peers[a_port] = (b_domid, b_port)


def test_send_on_a_connected_port_runs_the_peers_handler(two_kernels) -> None:
    one, two = two_kernels
    connect(one, 5, 2, 7)
    got = threading.Event()
    two.bind(7, lambda port: got.set())
    one.send(5)
    assert got.wait(5)


def test_a_ring_on_a_masked_port_stays_pending_until_unmasked(two_kernels) -> None:
    one, two = two_kernels
    connect(one, 5, 2, 7)
    ran = []
    two.bind(7, ran.append)
    two.mask(7)
    one.send(5)
    # Rung after it, on an unmasked port: handled after the masked ring was.
    seen = threading.Event()
    connect(one, 6, 2, 8)
    two.bind(8, lambda port: seen.set())
    one.send(6)
    assert seen.wait(5)
    assert ran == [] and two.shared_info[PENDING_OFFSET + 7] == 1
    assert two.shared_info[MASK_OFFSET + 7] == 1


def test_a_ring_for_a_port_not_bound_is_ignored(two_kernels) -> None:
    one, two = two_kernels
    connect(one, 5, 2, 99)  # not bound on two
    connect(one, 6, 2, 8)
    seen = threading.Event()
    two.bind(8, lambda port: seen.set())
    one.send(5)
    one.send(6)
    assert seen.wait(5)  # the loop went past the stray ring unharmed
