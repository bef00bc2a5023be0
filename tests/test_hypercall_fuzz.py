"""Every hypercall, with anything a hostile guest can put in a message, gets an
(rc, result) answer and the hypervisor carries on (no processes: a Machine
with a fake transport, driven through the loop's own `serve`)."""

import math
import os

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypervisor import ops  # noqa: F401
from hypervisor.args import (
    Bool,
    Int,
    List,
    Maybe,
    Nil,
    Num,
    Opaque,
    Str,
    Struct,
)
from hypervisor.dispatch import DEFERRED, TABLE, Entry
from hypervisor.loop import MAX_HYPERCALL_BYTES, serve
from hypervisor.public.domctl import XEN_DOMCTL_createdomain
from hypervisor.public.errno import EFAULT, EINVAL, errorcode
from hypervisor.public.event_channel import EVTCHNOP_alloc_unbound, EVTCHNOP_status
from hypervisor.public.grant_table import GNTTABOP_map_grant_ref
from hypervisor.public.xen import (
    DOMID_SELF,
    HYPERVISOR_domctl,
    HYPERVISOR_event_channel_op,
    HYPERVISOR_grant_table_op,
    HYPERVISOR_pyxen_op,
    HYPERVISOR_xen_version,
    PYXEN_op_ready,
)
from tests.hvfakes import FakeMachine, drain

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def machine(sleeper, tmp_path):
    m = FakeMachine(sleeper, tmp_path)
    m.add("Domain-0", domid=0, privileged=True)
    m.add("guest", vcpus=2)
    yield m
    m.close()


def call(m: FakeMachine, domid: int, nr, cmd, args=None, vcpu=0):
    outcome = serve(m, domid, (domid, b"id"), msgpack.packb([nr, cmd, args, vcpu]))
    for end in m.peer_ends:
        drain(end)
    return outcome


# -- the hypercalls that killed the hypervisor ---------------------------------


def test_evtchnop_status_with_no_arguments_is_efault(machine):
    rc, _ = call(machine, 1, HYPERVISOR_event_channel_op, EVTCHNOP_status, None)
    assert rc == -EFAULT


def test_a_map_op_that_is_an_int_is_efault(machine):
    rc, _ = call(machine, 1, HYPERVISOR_grant_table_op, GNTTABOP_map_grant_ref, [5])
    assert rc == -EFAULT


@pytest.mark.parametrize("vcpu", [math.inf, -math.inf, math.nan, 1.0, True, 2, -1, None,
                                  "0", 2**64 - 1])
def test_a_vcpu_the_caller_does_not_have_is_einval(machine, vcpu):
    rc, _ = call(machine, 1, HYPERVISOR_xen_version, 0, None, vcpu)
    assert rc == -EINVAL


def test_createdomain_without_a_kernel_is_efault(machine):
    # The hypervisor knows no domain code, so no default kernel: the
    # toolstack names one, always.
    rc, _ = call(machine, 0, HYPERVISOR_domctl, XEN_DOMCTL_createdomain,
                 {"name": "kernelless", "max_memkb": 16 * 1024})
    assert rc == -EFAULT and all(d.name != "kernelless" for d in machine.domains.values())


def test_ready_with_a_thread_id_past_any_pid_is_einval(machine, sleeper):
    dom = machine.add("late", vcpus=2, ready=False)
    tids = sleeper.tids()
    rc, _ = call(machine, dom.domid, HYPERVISOR_pyxen_op, PYXEN_op_ready,
                 {"vcpu_tids": [tids[0], 2**40]})
    assert rc == -EINVAL and not dom.ready
    rc, _ = call(machine, dom.domid, HYPERVISOR_pyxen_op, PYXEN_op_ready,
                 {"vcpu_tids": tids, "announce": {"store": {"port": 1}}})
    assert rc == 0 and dom.ready


def test_ready_with_another_process_s_threads_is_einval(machine, sleeper):
    dom = machine.add("thief", vcpus=1, ready=False)
    rc, result = call(machine, dom.domid, HYPERVISOR_pyxen_op, PYXEN_op_ready,
                      {"vcpu_tids": [os.getpid()]})  # the test's, not the domain's
    assert rc == -EINVAL and "not its own" in result and not dom.ready


def test_an_announce_that_is_not_a_small_map_is_einval(machine):
    dom = machine.add("talker", ready=False)
    for announce in ([1, 2], {"x": "y" * 10_000}, {str(i): i for i in range(100)}):
        rc, _ = call(machine, dom.domid, HYPERVISOR_pyxen_op, PYXEN_op_ready,
                     {"vcpu_tids": machine.sleeper.tids()[:1], "announce": announce})
        assert rc == -EINVAL and not dom.ready


@pytest.mark.parametrize("payload", [
    b"", b"\xc1", b"\x94", b"\x93\x01\x02\x03",
    b"\xdd\xff\xff\xff\xff",  # an array of 4 billion items, announced
    b"\xdb\xff\xff\xff\xff",  # a 4 GiB string, announced
    msgpack.packb([32, 5, [0] * 600, 0]),  # an array past the largest batch
    msgpack.packb([32, 5, {str(i): i for i in range(100)}, 0]),
    msgpack.packb([32, 5, {1: 2}, 0]),  # a map key that is not a string
    msgpack.packb([32, 5, msgpack.ExtType(1, b"x"), 0]),
    msgpack.packb([32, 5, None, 0]) + b"trailing",
    b"\x91" * 5000 + b"\xc0",  # nested deeper than the unpacker's stack
    b"\x94\x00\x00\xc0" + b"\x00" * MAX_HYPERCALL_BYTES,
])
def test_malformed_messages_are_einval(machine, payload):
    rc, _ = serve(machine, 1, (1, b"id"), payload)
    assert rc == -EINVAL


def test_a_handler_that_fails_unexpectedly_is_an_errno_and_a_log_line(machine, monkeypatch):
    def broken(call, args):
        raise RuntimeError("a bug in the hypervisor")

    monkeypatch.setitem(TABLE, (HYPERVISOR_xen_version, 0), Entry(broken, 0, Nil()))
    rc, result = call(machine, 1, HYPERVISOR_xen_version, 0, None)
    assert rc == -EINVAL and "RuntimeError" in result
    assert any("a bug in the hypervisor" in line for line in machine.console)


# -- the fuzz -------------------------------------------------------------------

SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.binary(max_size=12))
FIELD_NAMES = sorted({k for e in TABLE.values() if isinstance(e.args, Struct)
                      for k in e.args.fields} | {"evil"})
ANY = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                   | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6),
                                     inner, max_size=4), max_leaves=16)
DOMIDS = st.sampled_from([0, 1, 2, 3, DOMID_SELF, 0xFFFF])


def typed(schema):
    """Values of the right types (edges of the ranges included): what gets
    past the schema, to exercise the handlers' own checks."""
    if isinstance(schema, Int):
        edges = [v for v in (schema.lo, schema.hi, 0, 1, 2, 3, 4096, DOMID_SELF)
                 if schema.lo <= v <= schema.hi]
        ints = st.sampled_from(edges) | st.integers(schema.lo, schema.hi)
        return DOMIDS | ints if schema.hi == 0xFFFF else ints
    if isinstance(schema, Num):
        return st.floats(schema.lo, schema.hi) | st.just(schema.lo)
    if isinstance(schema, Bool):
        return st.booleans()
    if isinstance(schema, Str):
        return st.text(max_size=min(schema.max_len, 16))
    if isinstance(schema, Nil):
        return st.none()
    if isinstance(schema, Maybe):
        return st.none() | typed(schema.inner)
    if isinstance(schema, List):
        return st.lists(typed(schema.item), min_size=schema.min_len,
                        max_size=min(schema.max_len, 6))
    if isinstance(schema, Struct):
        return st.fixed_dictionaries({k: typed(v) for k, v in schema.required.items()},
                                     optional={k: typed(v) for k, v in schema.optional.items()})
    if isinstance(schema, Opaque):
        return st.dictionaries(st.text(max_size=6), SCALARS, max_size=3)
    raise AssertionError(f"no strategy for {schema!r}")


KEYS = sorted(TABLE)


@st.composite
def hypercalls(draw):
    if draw(st.integers(0, 9)) == 0:
        nr, cmd = draw(st.integers(0, 70)), draw(st.integers(0, 40))
    else:
        nr, cmd = draw(st.sampled_from(KEYS))
    entry = TABLE.get((nr, cmd))
    args = draw(ANY if entry is None or draw(st.integers(0, 3)) == 0
                else typed(entry.args))
    vcpu = draw(SCALARS if draw(st.integers(0, 9)) == 0 else st.sampled_from([0, 0, 0, 1]))
    caller = draw(st.sampled_from([0, 1, 2]))
    return caller, nr, cmd, args, vcpu


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(calls=st.lists(hypercalls(), min_size=1, max_size=25))
def test_every_hypercall_answers_anything(sleeper, tmp_path, calls):
    m = FakeMachine(sleeper, tmp_path, memory=512)
    try:
        m.add("Domain-0", domid=0, privileged=True)
        m.add("guest1", vcpus=2)
        m.add("guest2")
        for caller, nr, cmd, args, vcpu in calls:
            if m.halted or caller not in m.domains:
                continue
            outcome = call(m, caller, nr, cmd, args, vcpu)
            if outcome is DEFERRED:
                assert (nr, cmd) == (HYPERVISOR_domctl, XEN_DOMCTL_createdomain)
                continue
            rc, result = outcome
            assert type(rc) is int and rc <= 0
            assert rc == 0 or -rc in errorcode
            msgpack.packb([rc, result])  # whatever it is, it goes on the wire
        # Nothing a refused or failed call touched is left charged.
        held = sum(seg.nr_pages for d in m.domains.values() for seg in d.segments()
                   if seg.fd >= 0)
        assert m.memory.used_pages == held
    finally:
        m.close()
    assert m.memory.used_pages == 0


def test_alloc_unbound_storm_from_a_full_table_is_enospc(machine):
    for _ in range(4095):
        assert call(machine, 1, HYPERVISOR_event_channel_op, EVTCHNOP_alloc_unbound,
                    {"remote_dom": 0})[0] == 0
    rc, _ = call(machine, 1, HYPERVISOR_event_channel_op, EVTCHNOP_alloc_unbound,
                 {"remote_dom": 0})
    assert rc == -28  # ENOSPC
