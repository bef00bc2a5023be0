"""xenstored's framing (wire.py) and the io/ headers' ABI (cabi.py)."""

import struct

import pytest

from domains.dom0.xenstored.wire import (
    HEADER_SIZE,
    Decoder,
    Message,
    WireError,
    atoi,
    atou,
    count_strings,
    encode,
    error_reply,
    get_strings,
    join_strings,
    onearg,
    reply_to,
    strtol,
)
from hypervisor.public.io import xenbus, xs_wire
from tests import cabi

pytestmark = pytest.mark.timeout(60)


def test_encode_is_xsd_sockmsg_then_payload() -> None:
    msg = Message(xs_wire.XS_READ, 7, 3, b"/a\0")
    data = encode(msg)
    assert data == struct.pack("<IIII", 2, 7, 3, 3) + b"/a\0"
    assert HEADER_SIZE == 16
    assert Decoder().feed(data) == [msg]


def test_decoder_handles_any_fragmentation() -> None:
    msgs = [Message(xs_wire.XS_WRITE, i, i % 3, b"/x\0" + bytes([i]) * i)
            for i in range(20)] + [Message(xs_wire.XS_DIRECTORY, 99, 0, b"")]
    stream = b"".join(encode(m) for m in msgs)
    for step in (1, 2, 3, 7, 16, 17, 100, len(stream)):
        decoder, out = Decoder(), []
        for i in range(0, len(stream), step):
            out += decoder.feed(stream[i:i + step])
        assert out == msgs
        assert decoder.pending == 0


def test_payload_of_exactly_the_maximum_is_fine() -> None:
    msg = Message(xs_wire.XS_WRITE, 1, 0, b"a" * xs_wire.XENSTORE_PAYLOAD_MAX)
    assert Decoder().feed(encode(msg)) == [msg]


def test_oversized_header_breaks_the_stream() -> None:
    good = Message(xs_wire.XS_READ, 1, 0, b"/\0")
    bad = struct.pack("<IIII", 2, 2, 0, xs_wire.XENSTORE_PAYLOAD_MAX + 1)
    decoder = Decoder()
    with pytest.raises(WireError) as info:
        decoder.feed(encode(good) + bad)   # payload never arrives: still an error
    assert info.value.messages == [good]
    assert decoder.broken
    with pytest.raises(WireError):
        decoder.feed(encode(good))


def test_replies_echo_the_request() -> None:
    req = Message(xs_wire.XS_READ, 5, 9, b"/a\0")
    assert reply_to(req, b"v") == Message(xs_wire.XS_READ, 5, 9, b"v")
    assert error_reply(req, "ENOENT") == Message(xs_wire.XS_ERROR, 5, 9, b"ENOENT\0")
    assert req.type_name == "XS_READ"
    assert Message(77, 0, 0, b"").type_name == "UNKNOWN(77)"


def test_payload_strings_parse_like_xenstored() -> None:
    assert join_strings("a", b"b") == b"a\0b\0"
    assert get_strings(b"a\0b\0") == [b"a", b"b"]
    assert get_strings(b"a\0b") == [b"a"]          # unterminated tail ignored
    assert get_strings(b"") == []
    assert count_strings(b"a\0\0b") == 2
    assert onearg(b"/a\0") == b"/a"
    assert onearg(b"/a") is None                   # not NUL-terminated
    assert onearg(b"/a\0b\0") is None              # two arguments
    assert onearg(b"") is None


def test_numbers_parse_like_c() -> None:
    assert atoi("42") == 42 and atoi(" -3x") == -3 and atoi("x") == 0
    assert atou("-1") == 0xFFFFFFFF
    assert atoi(b"4294967297") == 1
    assert strtol("0x1f", 0) == (31, 4)
    assert strtol("010", 0) == (8, 3)
    assert strtol("0x", 0) == (0, 1)
    assert strtol("", 0) == (0, 0)
    assert strtol("-", 10) == (0, 0)


# -- the io/ headers, through cabi --------------------------------------------------


@pytest.fixture(scope="module")
def header_facts(tmp_path_factory: pytest.TempPathFactory) -> cabi.Facts:
    reason = cabi.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    return cabi.header_facts(cabi.abi_modules(), tmp_path_factory.mktemp("cabi_io"))


def test_io_modules_are_checked(header_facts: cabi.Facts) -> None:
    names = [cabi._short(m) for m in cabi.abi_modules()]
    assert "io/xs_wire" in names and "io/xenbus" in names
    python = cabi.python_facts(cabi.abi_modules())
    for key in [("const", "io/xs_wire", "XS_RESET_WATCHES"),
                ("const", "io/xs_wire", "XS_INVALID"),
                ("const", "io/xs_wire", "XS_WRITE_CREATE_EXCL"),
                ("const", "io/xs_wire", "xsd_errors[15]"),
                ("const", "io/xenbus", "XenbusState.Reconfigured"),
                ("struct", "xsd_sockmsg"),
                ("field", "xenstore_domain_interface", "rsp_prod"),
                ("typedef", "XENSTORE_RING_IDX")]:
        assert python[key] == header_facts[key], key
    problems = [p for p in cabi.mismatches(python, header_facts) if "io/" in p
                or "xsd_sockmsg" in p or "xenstore_domain_interface" in p]
    assert not problems


@pytest.mark.parametrize("module, name, value, expected", [
    (xs_wire, "XS_RESET_WATCHES", 20,
     "const io/xs_wire XS_RESET_WATCHES: python (20,), C (21,)"),
    (xs_wire, "XS_WRITE_NONE", "NON",
     "const io/xs_wire XS_WRITE_NONE: python ('NON',), C ('NONE',)"),
    (xenbus, "XenbusStateClosed", 7,
     "const io/xenbus XenbusStateClosed: python (7,), C (6,)"),
])
def test_wrong_io_constant_is_caught(header_facts: cabi.Facts, monkeypatch: pytest.MonkeyPatch,
                                     module, name, value, expected) -> None:
    monkeypatch.setattr(module, name, value)
    assert cabi.mismatches(cabi.python_facts(cabi.abi_modules()), header_facts) == [expected]


def test_wrong_xsd_errors_order_is_caught(header_facts: cabi.Facts,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    errors = list(xs_wire.xsd_errors)
    errors[1], errors[2] = errors[2], errors[1]
    monkeypatch.setattr(xs_wire, "xsd_errors", tuple(errors))
    assert cabi.mismatches(cabi.python_facts(cabi.abi_modules()), header_facts) == [
        "const io/xs_wire xsd_errors[1]: python ('EEXIST',), C ('EACCES',)",
        "const io/xs_wire xsd_errors[2]: python ('EACCES',), C ('EEXIST',)"]


def test_wrong_enum_member_and_layout_are_caught(header_facts: cabi.Facts,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes
    import enum

    class XenbusState(enum.IntEnum):
        Unknown = 0
        Initialising = 2

    XenbusState.__module__ = xenbus.__name__
    monkeypatch.setattr(xenbus, "XenbusState", XenbusState)

    class xsd_sockmsg(ctypes.LittleEndianStructure):
        _fields_ = [("type", ctypes.c_uint32), ("req_id", ctypes.c_uint32),
                    ("len", ctypes.c_uint32), ("tx_id", ctypes.c_uint32)]

    xsd_sockmsg.__module__ = xs_wire.__name__
    monkeypatch.setattr(xs_wire, "xsd_sockmsg", xsd_sockmsg)
    problems = cabi.mismatches(cabi.python_facts(cabi.abi_modules()), header_facts)
    assert "const io/xenbus XenbusState.Initialising: python (2,), C (1,)" in problems
    assert "field xsd_sockmsg len: python (8, 4, 0), C (12, 4, 0)" in problems
    assert "field xsd_sockmsg tx_id: python (12, 4, 0), C (8, 4, 0)" in problems


def test_header_enumerators() -> None:
    text = """
    /* enum fake { NOT_ME }; */
    enum e { A, B = 2, // C
    #define D A
      E = B + 1 };
    """
    assert cabi.header_enumerators(text) == {"A", "B", "E"}
