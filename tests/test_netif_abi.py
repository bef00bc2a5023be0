"""hypervisor.public.io.netif against Xen's io/netif.h as the host compiles it.

tests/cabi.py (run by test_public_abi.py) checks every fact of the module
with the headers read as AArch64; this compiles a program for the host
too, since the rings are shared between processes of the host: netif's
layouts must be the same on both 64-bit ABIs.
"""

import ctypes
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypervisor.public.io import netif
from tests import cabi
from tests.cabi import run_c_facts

pytestmark = pytest.mark.timeout(60)

NETIF_H = Path("/usr/include/xen/io/netif.h")

STRUCTS = [netif.netif_tx_request, netif.netif_tx_response,
           netif.netif_rx_request, netif.netif_rx_response,
           netif.netif_extra_info, netif.xen_netif_ctrl_request,
           netif.xen_netif_ctrl_response, netif.xen_netif_gref]
UNIONS = [netif.netif_tx_sring_entry, netif.netif_rx_sring_entry]

CONSTANTS = [
    "XEN_NETIF_NR_SLOTS_MIN", "XEN_NETIF_MAX_TX_SIZE",
    "NETTXF_csum_blank", "NETTXF_data_validated", "NETTXF_more_data",
    "NETTXF_extra_info",
    "NETRXF_data_validated", "NETRXF_csum_blank", "NETRXF_more_data",
    "NETRXF_extra_info", "NETRXF_gso_prefix",
    "XEN_NETIF_EXTRA_TYPE_NONE", "XEN_NETIF_EXTRA_TYPE_GSO",
    "XEN_NETIF_EXTRA_TYPE_MCAST_ADD", "XEN_NETIF_EXTRA_TYPE_MCAST_DEL",
    "XEN_NETIF_EXTRA_TYPE_HASH", "XEN_NETIF_EXTRA_TYPE_MAX",
    "XEN_NETIF_EXTRA_FLAG_MORE",
    "XEN_NETIF_GSO_TYPE_NONE", "XEN_NETIF_GSO_TYPE_TCPV4",
    "XEN_NETIF_GSO_TYPE_TCPV6",
    "NETIF_RSP_DROPPED", "NETIF_RSP_ERROR", "NETIF_RSP_OKAY", "NETIF_RSP_NULL",
    "XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM", "XEN_NETIF_CTRL_STATUS_SUCCESS",
    "XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP", "XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ",
]

EXPRESSIONS = {
    "sizeof(union netif_tx_sring_entry)": netif.NETIF_TX_SRING_ENTRY_SIZE,
    "sizeof(union netif_rx_sring_entry)": netif.NETIF_RX_SRING_ENTRY_SIZE,
    "sizeof(struct netif_extra_info)": netif.NETIF_EXTRA_INFO_SIZE,
    "offsetof(struct netif_tx_sring, ring)": netif.PYXEN_SRING_RING_OFFSET,
    "offsetof(struct netif_rx_sring, ring)": netif.PYXEN_SRING_RING_OFFSET,
    "__CONST_RING_SIZE(netif_tx, 4096)": netif.XEN_NETIF_TX_RING_SIZE,
    "__CONST_RING_SIZE(netif_rx, 4096)": netif.XEN_NETIF_RX_RING_SIZE,
    "__CONST_RING_SIZE(netif_tx, 4 * 4096)": netif.net_ring_size(
        netif.NETIF_TX_SRING_ENTRY_SIZE, 4),
    "XEN_NETIF_RSP_DROPPED == NETIF_RSP_DROPPED": 1,
}


def _fields(ctype: type[ctypes.Structure | ctypes.Union], prefix: str = "", base: int = 0
            ) -> Iterator[tuple[str, int, int]]:
    """(C member designator, offset, size) of every nested field."""
    for name, ftype, *_ in ctype._fields_:
        designator, offset = prefix + name, base + getattr(ctype, name).offset
        yield designator, offset, ctypes.sizeof(ftype)
        if issubclass(ftype, (ctypes.Structure, ctypes.Union)):
            yield from _fields(ftype, designator + ".", offset)


def _c_type(ctype: type) -> str:
    return ("union " if issubclass(ctype, ctypes.Union) else "struct ") + ctype.__name__


def _python_facts() -> dict[str, int]:
    facts = {}
    for ctype in STRUCTS + UNIONS:
        name = ctype.__name__
        facts[f"sizeof {name}"] = ctypes.sizeof(ctype)
        facts[f"alignof {name}"] = ctypes.alignment(ctype)
        for designator, offset, size in _fields(ctype):
            facts[f"offsetof {name}.{designator}"] = offset
            facts[f"sizeof {name}.{designator}"] = size
    for name in CONSTANTS:
        facts[name] = getattr(netif, name)
    facts.update(EXPRESSIONS)
    return facts


def _c_program() -> str:
    lines = ["#include <stddef.h>", "#include <stdint.h>", "#include <stdio.h>",
             "#include <xen/io/netif.h>",
             "#define XEN_NETIF_RSP_DROPPED NETIF_RSP_DROPPED /* Linux's name */",
             "#define P(k, v) printf(\"%s=%lld\\n\", k, (long long)(v));",
             "int main(void) {"]
    for ctype in STRUCTS + UNIONS:
        name, c_type = ctype.__name__, _c_type(ctype)
        lines.append(f'P("sizeof {name}", sizeof({c_type}))')
        lines.append(f'P("alignof {name}", _Alignof({c_type}))')
        for designator, _, _ in _fields(ctype):
            lines.append(f'P("offsetof {name}.{designator}", '
                         f'offsetof({c_type}, {designator}))')
            lines.append(f'P("sizeof {name}.{designator}", '
                         f'sizeof((({c_type} *)0)->{designator}))')
    for name in CONSTANTS:
        lines.append(f'P("{name}", {name})')
    for expression in EXPRESSIONS:
        lines.append(f'P("{expression}", {expression})')
    lines += ["return 0;", "}"]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def c_facts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    if not NETIF_H.exists():
        pytest.skip(f"needs Debian's libxen-dev ({NETIF_H})")
    if shutil.which("cc") is None:
        pytest.skip("needs a C compiler (cc) to compile against libxen-dev")
    return run_c_facts(tmp_path_factory.mktemp("netif"), "netif", _c_program())


def test_layouts_and_constants_match_the_host_compiler(c_facts) -> None:
    python = _python_facts()
    assert set(python) == set(c_facts)
    wrong = {k: (python[k], c_facts[k]) for k in python if python[k] != c_facts[k]}
    assert not wrong, wrong


def test_known_sizes(c_facts) -> None:
    assert c_facts["sizeof netif_tx_request"] == 12
    assert c_facts["offsetof netif_tx_request.size"] == 10
    assert c_facts["sizeof netif_tx_response"] == 4
    assert c_facts["sizeof netif_rx_request"] == 8
    assert c_facts["offsetof netif_rx_request.gref"] == 4
    assert c_facts["sizeof netif_rx_response"] == 8
    assert c_facts["sizeof netif_extra_info"] == 8
    assert c_facts["offsetof netif_extra_info.u.gso.features"] == 6
    assert c_facts["offsetof netif_extra_info.u.hash.value"] == 4
    assert netif.NETIF_TX_SRING_ENTRY_SIZE == 12
    assert netif.NETIF_RX_SRING_ENTRY_SIZE == 8
    assert netif.XEN_NETIF_TX_RING_SIZE == netif.XEN_NETIF_RX_RING_SIZE == 256


def test_names_linux_uses_alias_xens() -> None:
    assert (netif.XEN_NETIF_RSP_DROPPED, netif.XEN_NETIF_RSP_ERROR,
            netif.XEN_NETIF_RSP_OKAY, netif.XEN_NETIF_RSP_NULL) == (-2, -1, 0, 1)
    assert netif.XEN_NETIF_NR_SLOTS_MIN == 18
    assert netif.XEN_NETIF_MAX_TX_SIZE == 0xFFFF


def test_extra_info_fits_both_rings() -> None:
    info = netif.netif_extra_info(type=netif.XEN_NETIF_EXTRA_TYPE_GSO,
                                  flags=netif.XEN_NETIF_EXTRA_FLAG_MORE)
    info.u.gso.size, info.u.gso.type = 1448, netif.XEN_NETIF_GSO_TYPE_TCPV6
    assert bytes(info) == bytes([1, 1, 0xA8, 0x05, 2, 0, 0, 0])
    assert ctypes.sizeof(info) <= netif.NETIF_RX_SRING_ENTRY_SIZE
    assert ctypes.sizeof(info) <= netif.NETIF_TX_SRING_ENTRY_SIZE


@pytest.fixture(scope="module")
def header_facts(tmp_path_factory: pytest.TempPathFactory) -> cabi.Facts:
    reason = cabi.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    return cabi.header_facts(cabi.abi_modules(), tmp_path_factory.mktemp("cabi"))


def test_cabi_checks_netif(header_facts: cabi.Facts) -> None:
    assert ("const", "io/netif", "NETTXF_more_data") in header_facts
    assert ("const", "io/netif", "XEN_NETIF_RSP_ERROR") in header_facts
    assert ("const", "io/netif", "NETIF_TX_SRING_ENTRY_SIZE") in header_facts
    assert ("struct", "netif_extra_info") in header_facts
    assert ("field", "netif_extra_info", "u.gso.size") in header_facts
    assert ("struct", "netif_tx_sring_entry") in header_facts
    assert not [p for p in cabi.mismatches(
        cabi.python_facts(cabi.abi_modules()), header_facts) if "netif" in p]


def test_cabi_catches_a_wrong_netif_value(header_facts: cabi.Facts,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netif, "NETRXF_more_data", 1 << 3)
    monkeypatch.setattr(netif, "XEN_NETIF_RSP_NULL", 2)
    problems = cabi.mismatches(cabi.python_facts(cabi.abi_modules()), header_facts)
    assert problems == [
        "const io/netif NETRXF_more_data: python (8,), C (4,)",
        "const io/netif XEN_NETIF_RSP_NULL: python (2,), C (1,)",
    ]
