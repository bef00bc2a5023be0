"""Hypercall argument schemas (hypervisor/args.py): exact types, bounds, and
Xen's EFAULT/EINVAL split."""

import math

import pytest

from hypervisor import ops  # noqa: F401  (fills the table)
from hypervisor.args import (
    NOTHING,
    U16,
    U32,
    ArgError,
    Bool,
    Int,
    List,
    Maybe,
    Num,
    Opaque,
    Str,
    Struct,
    check_envelope,
)
from hypervisor.dispatch import TABLE, Entry
from hypervisor.public.errno import EFAULT, EINVAL

pytestmark = pytest.mark.timeout(30)


def errno_of(schema, value) -> int:
    try:
        schema.check(value)
    except ArgError as exc:
        return exc.errno
    return 0


@pytest.mark.parametrize("value", [True, False, 1.0, math.inf, math.nan, "1", b"1",
                                   None, [1], {"a": 1}])
def test_an_int_is_exactly_an_int(value):
    assert errno_of(U32, value) == EINVAL


@pytest.mark.parametrize("schema,ok,bad", [
    (U16, [0, 0xFFFF], [-1, 0x10000]),
    (U32, [0, 2**32 - 1], [-1, 2**32, 2**40]),
    (Int(1, 128), [1, 128], [0, 129]),
])
def test_int_ranges(schema, ok, bad):
    assert [errno_of(schema, v) for v in ok] == [0] * len(ok)
    assert [errno_of(schema, v) for v in bad] == [EINVAL] * len(bad)


def test_numbers_are_finite_and_not_bools():
    seconds = Num(0.001, 100)
    assert errno_of(seconds, 1) == errno_of(seconds, 0.5) == 0
    for bad in (True, math.inf, -math.inf, math.nan, 0, 101, "3"):
        assert errno_of(seconds, bad) == EINVAL, bad


def test_strings_bools_nil_maybe():
    assert errno_of(Str(3), "abc") == 0
    assert errno_of(Str(3), "abcd") == EINVAL
    assert errno_of(Str(3), b"abc") == EINVAL
    assert errno_of(Bool(), 1) == EINVAL and errno_of(Bool(), False) == 0
    assert errno_of(Maybe(U16), None) == 0 and errno_of(Maybe(U16), -1) == EINVAL
    assert errno_of(NOTHING, None) == errno_of(NOTHING, {}) == 0
    assert errno_of(NOTHING, {"x": 1}) == EINVAL and errno_of(NOTHING, 3) == EFAULT


def test_lists_are_bounded_and_checked_item_by_item():
    tids = List(U16, 3, min_len=1)
    assert errno_of(tids, [1, 2, 3]) == 0
    assert errno_of(tids, []) == EINVAL
    assert errno_of(tids, [1, 2, 3, 4]) == EINVAL
    assert errno_of(tids, (1, 2)) == EFAULT  # not an array at all
    with pytest.raises(ArgError) as exc:
        tids.check([1, 2**40])
    assert exc.value.path == "[1]"


def test_structs_efault_when_unreadable_einval_when_wrong():
    port = Struct({"port": U32}, {"dom": U16})
    assert errno_of(port, {"port": 3}) == 0
    assert errno_of(port, {"port": 3, "dom": 1}) == 0
    assert errno_of(port, None) == EFAULT  # EVTCHNOP_status(None)
    assert errno_of(port, 5) == EFAULT  # a map op that is an int
    assert errno_of(port, {}) == EFAULT  # a field missing
    assert errno_of(port, {"port": "3"}) == EINVAL
    assert errno_of(port, {"port": 3, "evil": 1}) == EINVAL
    assert errno_of(port, {"port": 3, b"dom": 1}) == EINVAL  # bytes are not field names
    nested = Struct({"source": port})
    with pytest.raises(ArgError) as exc:
        nested.check({"source": {"port": -1}})
    assert exc.value.path == "source.port"


def test_opaque_values_are_bounded():
    announce = Opaque(dict, max_depth=3, max_items=10, max_str=8)
    assert errno_of(announce, {"store": {"port": 1, "ring-ref": 2}}) == 0
    assert errno_of(announce, [1, 2]) == EINVAL  # an announce that is a list
    assert errno_of(announce, {"a": "x" * 9}) == EINVAL
    assert errno_of(announce, {str(i): i for i in range(6)}) == EINVAL  # 13 items
    deep: dict = {}
    inner = deep
    for _ in range(5):
        inner["a"] = {}
        inner = inner["a"]
    assert errno_of(announce, deep) == EINVAL
    assert errno_of(announce, {"f": math.inf}) == EINVAL
    # Nesting costs no Python stack: a deep value is refused, not a crash.
    very: list = []
    for _ in range(100_000):
        very = [very]
    assert errno_of(Opaque(list, 3, 10**6, 8), very) == EINVAL


@pytest.mark.parametrize("message", [
    None, [], [1, 2, 3], [1, 2, 3, 4, 5], (32, 5, None, 0),
    [32, 5, None, math.inf],  # a vcpu of float infinity
    [32, 5, None, 1.0], [32, 5, None, True], [32, 5, None, -1], [32, 5, None, 2],
    [32, 5, None, None], [-1, 5, None, 0], [32, 2**32, None, 0], ["32", 5, None, 0],
])
def test_envelope_refusals(message):
    with pytest.raises(ArgError) as exc:
        check_envelope(message, max_vcpus=2)
    assert exc.value.errno == EINVAL


def test_envelope_passes_the_four_items():
    assert check_envelope([32, 5, {"port": 1}, 1], max_vcpus=2) == (32, 5, {"port": 1}, 1)


def test_every_hypercall_declares_its_arguments():
    assert len(TABLE) >= 30
    for key, entry in TABLE.items():
        assert isinstance(entry, Entry), key
        assert hasattr(entry.args, "check"), key
