"""xenstored and the domains it knows, as Xen 4.17's xenstored_domain.c:
permissions may only name domains that exist, entries of a domain that is
gone never grant anything to a later domain with its id (XSA-322), and
@releaseDomain fires when an introduced domain shuts down or crashes (once,
until RESUME) as well as when it goes."""

from __future__ import annotations

import pytest

from domains.dom0.xenstored import XenStore
from hypervisor.public.io import xs_wire as xs
from tests.xsclient import Client, guest_dir

pytestmark = pytest.mark.timeout(60)


class Hypervisor:
    """Which domains exist, and in which state, for xenstored to ask."""

    def __init__(self, *domids: int) -> None:
        self.domains: dict[int, tuple[bool, bool]] = {d: (False, False) for d in (0, *domids)}

    def exists(self, domid: int) -> bool:
        state = self.domains.get(domid)
        return state is not None and not state[1]


def setup(*domids: int) -> tuple[XenStore, Hypervisor, Client]:
    hv = Hypervisor(*domids)
    xsd = XenStore(domain_exists=hv.exists)
    return xsd, hv, Client(xsd, 0)


def introduce(dom0: Client, domid: int) -> None:
    dom0.call(xs.XS_INTRODUCE, str(domid), "1", "5")


def test_set_perms_refuses_an_owner_that_does_not_exist():
    _xsd, _hv, dom0 = setup(1)
    dom0.write("/data/x", "v")
    assert dom0.error(xs.XS_SET_PERMS, "/data/x", "n7") == "ENOENT"
    assert dom0.error(xs.XS_SET_PERMS, "@releaseDomain", "n7") == "ENOENT"
    assert dom0.get_perms("/data/x") == ["n0"]
    dom0.set_perms("/data/x", "n1")
    assert dom0.get_perms("/data/x") == ["n1"]


def test_an_absent_domains_entry_never_grants_it_anything():
    xsd, hv, dom0 = setup(1)
    dom0.write("/data/secret", "v")
    dom0.set_perms("/data/secret", "n0", "r1", "r9")   # 9 does not exist (yet)
    hv.domains[9] = (False, False)                     # now a domain 9 is created
    nine = Client(xsd, 9)
    assert nine.error(xs.XS_READ, "/data/secret") == "EACCES"
    assert Client(xsd, 1).read("/data/secret") == b"v"


def test_a_gone_domains_entries_do_not_pass_to_the_next_with_its_id():
    """XSA-322: domain 5 is destroyed, a new domain gets id 5."""
    xsd, hv, dom0 = setup(5)
    dom0.write("/backend/vbd", "")
    dom0.set_perms("/backend/vbd", "n0", "r5")
    tx_client = Client(xsd, 0)
    tx = tx_client.start()
    tx_client.write("/backend/vbd/later", "w", tx=tx)  # a copy of the perms, with r5
    assert Client(xsd, 5).read("/backend/vbd") == b""
    del hv.domains[5]
    xsd.check_domains(hv.domains)                       # VIRQ_DOM_EXC: 5 is gone
    assert tx_client.commit(tx) is None
    hv.domains[5] = (False, False)                      # a new domain 5
    new5 = Client(xsd, 5)
    assert new5.error(xs.XS_READ, "/backend/vbd") == "EACCES"
    assert new5.error(xs.XS_READ, "/backend/vbd/later") == "EACCES"
    dom0.set_perms("/backend/vbd", "n0", "r5")          # given to it afresh: fine
    assert new5.read("/backend/vbd") == b""


def test_release_domain_fires_on_shutdown_once_until_resume():
    xsd, hv, dom0 = setup(3)
    guest_dir(dom0, 3)
    introduce(dom0, 3)
    dom0.watch("@releaseDomain", "r")
    dom0.take_events()
    assert xsd.check_domains(hv.domains) == []
    assert dom0.take_events() == []
    hv.domains[3] = (True, False)                       # it crashed (preserved)
    assert xsd.check_domains(hv.domains) == []
    assert dom0.take_events() == [("@releaseDomain", "r")]
    xsd.check_domains(hv.domains)                       # another domain's exception
    assert dom0.take_events() == []
    dom0.call(xs.XS_RESUME, "3")                        # it runs again...
    hv.domains[3] = (False, False)
    xsd.check_domains(hv.domains)
    hv.domains[3] = (True, False)                       # ...and shuts down again
    xsd.check_domains(hv.domains)
    assert dom0.take_events() == [("@releaseDomain", "r")]
    hv.domains[3] = (True, True)                        # destroyed: dying
    assert xsd.check_domains(hv.domains) == [3]         # the I/O layer releases it
    xsd.domain_released(3)
    assert dom0.take_events() == [("@releaseDomain", "r")]
    assert not xsd.is_introduced(3)
