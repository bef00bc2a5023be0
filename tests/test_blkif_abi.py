"""hypervisor.public.io.blkif against Xen's io/blkif.h as the host compiles it.

tests/cabi.py (run by test_public_abi.py) checks every fact of the module
with the headers read as AArch64; this compiles a program for the host
(x86_64 here) too, since the ring is shared between processes of the host:
blkif's layouts must be the same on both 64-bit ABIs.
"""

import ctypes
import shutil
from pathlib import Path

import pytest

from hypervisor.public.io import blkif
from tests import cabi
from tests.cabi import run_c_facts

pytestmark = pytest.mark.timeout(60)

BLKIF_H = Path("/usr/include/xen/io/blkif.h")

STRUCTS = [blkif.blkif_request_segment, blkif.blkif_request,
           blkif.blkif_request_discard, blkif.blkif_request_indirect,
           blkif.blkif_response]

CONSTANTS = [
    "BLKIF_OP_READ", "BLKIF_OP_WRITE", "BLKIF_OP_WRITE_BARRIER",
    "BLKIF_OP_FLUSH_DISKCACHE", "BLKIF_OP_RESERVED_1", "BLKIF_OP_DISCARD",
    "BLKIF_OP_INDIRECT", "BLKIF_MAX_SEGMENTS_PER_REQUEST",
    "BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST", "BLKIF_DISCARD_SECURE",
    "BLKIF_RSP_EOPNOTSUPP", "BLKIF_RSP_ERROR", "BLKIF_RSP_OKAY",
    "VDISK_CDROM", "VDISK_REMOVABLE", "VDISK_READONLY",
]

EXPRESSIONS = {
    "sizeof(union blkif_sring_entry)": blkif.BLKIF_SRING_ENTRY_SIZE,
    "offsetof(struct blkif_sring, ring)": blkif.BLKIF_SRING_RING_OFFSET,
    "4096 / sizeof(struct blkif_request_segment)": blkif.SEGS_PER_INDIRECT_FRAME,
    "__CONST_RING_SIZE(blkif, 4096)": blkif.XEN_BLKIF_REQS_PER_PAGE,
    "__CONST_RING_SIZE(blkif, 4 * 4096)": blkif.blk_ring_size(4),
    "__CONST_RING_SIZE(blkif, 16 * 4096)": blkif.blk_ring_size(16),
}


def _python_facts() -> dict[str, int]:
    facts = {}
    for struct in STRUCTS:
        name = struct.__name__
        facts[f"sizeof {name}"] = ctypes.sizeof(struct)
        for field, *_ in struct._fields_:
            facts[f"offsetof {name}.{field}"] = getattr(struct, field).offset
            facts[f"sizeof {name}.{field}"] = getattr(struct, field).size
    for name in CONSTANTS:
        facts[name] = getattr(blkif, name)
    facts.update(EXPRESSIONS)
    return facts


def _c_program() -> str:
    lines = ["#include <stddef.h>", "#include <stdint.h>", "#include <stdio.h>",
             "#include <xen/io/blkif.h>",
             "#define P(k, v) printf(\"%s=%lld\\n\", k, (long long)(v));",
             "int main(void) {"]
    for struct in STRUCTS:
        name = struct.__name__
        lines.append(f'P("sizeof {name}", sizeof(struct {name}))')
        for field, *_ in struct._fields_:
            lines.append(f'P("offsetof {name}.{field}", offsetof(struct {name}, {field}))')
            lines.append(f'P("sizeof {name}.{field}", sizeof(((struct {name} *)0)->{field}))')
    for name in CONSTANTS:
        lines.append(f'P("{name}", {name})')
    for expression in EXPRESSIONS:
        lines.append(f'P("{expression}", {expression})')
    lines += ["return 0;", "}"]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def c_facts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    if not BLKIF_H.exists():
        pytest.skip(f"needs Debian's libxen-dev ({BLKIF_H})")
    if shutil.which("cc") is None:
        pytest.skip("needs a C compiler (cc) to compile against libxen-dev")
    return run_c_facts(tmp_path_factory.mktemp("blkif"), "blkif", _c_program())


def test_layouts_and_constants_match_the_host_compiler(c_facts) -> None:
    python = _python_facts()
    assert set(python) == set(c_facts)
    wrong = {k: (python[k], c_facts[k]) for k in python if python[k] != c_facts[k]}
    assert not wrong, wrong


def test_known_sizes(c_facts) -> None:
    assert c_facts["sizeof blkif_request"] == 112
    assert c_facts["sizeof blkif_response"] == 16
    assert c_facts["sizeof blkif_request_segment"] == 8
    assert c_facts["sizeof blkif_request_discard"] == 32
    assert c_facts["sizeof blkif_request_indirect"] == 64
    assert c_facts["offsetof blkif_request_indirect.handle"] == 24
    assert c_facts["offsetof blkif_response.status"] == 10
    assert blkif.SEGS_PER_INDIRECT_FRAME == 512
    assert blkif.BLKIF_SRING_ENTRY_SIZE == 112
    assert blkif.XEN_BLKIF_REQS_PER_PAGE == 32


def test_indirect_pages() -> None:
    assert [blkif.indirect_pages(n) for n in (0, 1, 512, 513, 4096)] == [0, 1, 1, 2, 8]


@pytest.fixture(scope="module")
def header_facts(tmp_path_factory: pytest.TempPathFactory) -> cabi.Facts:
    reason = cabi.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    return cabi.header_facts(cabi.abi_modules(), tmp_path_factory.mktemp("cabi"))


def test_cabi_checks_blkif(header_facts: cabi.Facts) -> None:
    keys = {k for k in header_facts if "io/blkif" in k or
            (k[0] in ("struct", "field") and k[1].startswith("blkif"))}
    assert ("const", "io/blkif", "BLKIF_OP_INDIRECT") in keys
    assert ("const", "io/blkif", "SEGS_PER_INDIRECT_FRAME") in keys
    assert ("struct", "blkif_request") in keys
    assert ("field", "blkif_request_indirect", "indirect_grefs[0]") in keys
    assert not [p for p in cabi.mismatches(
        cabi.python_facts(cabi.abi_modules()), header_facts) if "blkif" in p]


def test_cabi_catches_a_wrong_blkif_value(header_facts: cabi.Facts,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blkif, "BLKIF_RSP_EOPNOTSUPP", -95)
    monkeypatch.setattr(blkif, "SEGS_PER_INDIRECT_FRAME", 256)
    problems = cabi.mismatches(cabi.python_facts(cabi.abi_modules()), header_facts)
    assert problems == [
        "const io/blkif BLKIF_RSP_EOPNOTSUPP: python (-95,), C (-2,)",
        "const io/blkif SEGS_PER_INDIRECT_FRAME: python (256,), C (512,)",
    ]


def test_cabi_catches_a_wrong_blkif_layout(header_facts: cabi.Facts,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    class blkif_response(ctypes.Structure):  # status is int16_t, not int32_t
        _fields_ = [("id", ctypes.c_uint64), ("operation", ctypes.c_uint8),
                    ("status", ctypes.c_int32)]

    blkif_response.__module__ = blkif.__name__
    monkeypatch.setattr(blkif, "blkif_response", blkif_response)
    problems = cabi.mismatches(cabi.python_facts(cabi.abi_modules()), header_facts)
    assert "field blkif_response status: python (12, 4, 1), C (10, 2, 1)" in problems
