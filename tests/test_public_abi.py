"""hypervisor.public matches Xen's public headers (Debian's libxen-dev).

The header checks compile C against /usr/include/xen (see cabi.py); the
rest are pure-Python checks of the helpers the modules add.
"""

import pickle

import pytest

from hypervisor.public import errno, grant_table, sched, xen
from hypervisor.public.errno import XenError
from tests import cabi

pytestmark = pytest.mark.timeout(60)

ABI_MODULES = cabi.abi_modules()


@pytest.fixture(scope="module")
def header_facts(tmp_path_factory: pytest.TempPathFactory) -> cabi.Facts:
    reason = cabi.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    return cabi.header_facts(ABI_MODULES, tmp_path_factory.mktemp("cabi"))


@pytest.mark.parametrize(
    "kind", ["const", "errno", "typedef", "struct", "field", "gnttab_msg"])
def test_matches_xen_headers(header_facts: cabi.Facts, kind: str) -> None:
    python = cabi.python_facts(ABI_MODULES)
    assert any(key[0] == kind for key in python), f"no {kind} facts walked"
    problems = cabi.mismatches(python, header_facts, kind)
    assert not problems, "\n".join(problems)


def test_wrong_constant_is_caught(header_facts: cabi.Facts,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grant_table, "GTF_readonly", 1 << 3)
    problems = cabi.mismatches(cabi.python_facts(ABI_MODULES), header_facts)
    assert problems == [
        "const grant_table GTF_readonly: python (8,), C (4,)"]


def test_xen_error_round_trips() -> None:
    err = XenError.from_rc(-1, "not dom0")
    assert (err.errno, err.name, err.rc) == (errno.EPERM, "EPERM", -1)
    assert str(err) == "EPERM: not dom0"
    assert str(XenError(errno.ENOENT)) == "ENOENT"
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.errno, copy.name, copy.message) == (1, "EPERM", "not dom0")
    with pytest.raises(ValueError):
        XenError.from_rc(0)


def test_errorcode_uses_primary_names() -> None:
    assert errno.errorcode[errno.EAGAIN] == "EAGAIN"
    assert errno.errorcode[errno.EDEADLK] == "EDEADLK"
    assert all(getattr(errno, name) == value
               for value, name in errno.errorcode.items())


def test_every_gntst_code_has_a_message() -> None:
    codes = [value for name, value in vars(grant_table).items()
             if name.startswith("GNTST_")]
    assert sorted(-code for code in codes) == list(
        range(len(grant_table.GNTTABOP_error_msgs)))


def test_every_shutdown_reason_has_a_name() -> None:
    reasons = {value for name, value in vars(sched).items()
               if name.startswith("SHUTDOWN_") and type(value) is int
               and name != "SHUTDOWN_MAX"}
    assert set(sched.SHUTDOWN_NAMES) == reasons
    assert max(reasons) == sched.SHUTDOWN_MAX
    assert sched.SHUTDOWN_NAMES[sched.SHUTDOWN_soft_reset] == "soft_reset"


def test_pyxen_hypercall_is_outside_xens_table() -> None:
    xen_numbers = {value for name, value in vars(xen).items()
                   if name.startswith("HYPERVISOR_") and "pyxen" not in name}
    assert max(xen_numbers) < 64 <= xen.HYPERVISOR_pyxen_op
