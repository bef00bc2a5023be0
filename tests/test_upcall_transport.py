"""An upcall to a domain whose upcall socket is not connected yet (zmq
connects in the background) is held and delivered once it connects; one to
a domain that just died is dropped. Neither takes the hypervisor down."""

import os
import struct
from types import SimpleNamespace

import pytest
import zmq

from hypervisor.loop import ZmqTransport


@pytest.fixture
def transport(tmp_path):
    t = ZmqTransport(tmp_path)
    yield t
    t.close()


def fake_domain(domid: int):
    # The channels are bound to a pid: ours, since this test connects itself.
    return SimpleNamespace(domid=domid, max_vcpus=1, privileged=False, process=SimpleNamespace(
        pid=os.getpid(), pidfd=os.pidfd_open(os.getpid())))


@pytest.mark.timeout(30)
def test_an_upcall_before_the_domain_connects_is_delivered_when_it_does(transport):
    dom = fake_domain(7)
    transport.attach(dom)
    pull = None
    try:
        transport.upcall(7, 42)  # nobody listens yet: held, no exception
        assert transport.held == {7: [42]}
        pull = transport.ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.LINGER, 0)
        pull.connect(transport.endpoints(7)["upcall"])
        transport.upcall(7, 43)  # queued behind the first
        ready = dict(transport.poller.poll(10_000))  # the hypervisor loop's poll
        push = transport.pushes[7]
        assert ready.get(push) == zmq.POLLOUT, "the upcall socket never became writable"
        transport.flush_held(push)
        assert pull.poll(10_000)
        assert struct.unpack("<I", pull.recv()) == (42,)
        assert struct.unpack("<I", pull.recv()) == (43,)
        assert transport.held == {}
        transport.upcall(7, 44)  # connected now: straight through
        assert struct.unpack("<I", pull.recv()) == (44,)
    finally:
        if pull is not None:
            pull.close()
        transport.detach(dom)
        os.close(dom.process.pidfd)
    assert transport.by_push == {} and transport.held == {}


@pytest.mark.timeout(30)
def test_upcalls_held_for_a_domain_that_died_go_with_it(transport):
    dom = fake_domain(8)
    transport.attach(dom)
    transport.upcall(8, 1)
    transport.detach(dom)
    os.close(dom.process.pidfd)
    assert transport.held == {} and transport.by_push == {}
