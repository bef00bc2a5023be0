"""Process titles: `ps` names every process of a machine, and which machine.

`pyxen[<machine>]: dom1 disk-dd`: the machine first, so that one host can
run several machines and `pgrep -f 'pyxen\\[mine\\]: dom[0-9]+ disk-dd$'`
finds one machine's driver domain (under any domid, after restarts too);
the domain's name last. The hypervisor sets the machine's name in its
environment, which every process it starts inherits.
"""

from __future__ import annotations

import os

MACHINE_ENV = "PYXEN_MACHINE"


def process_title(what: str) -> str:
    machine = os.environ.get(MACHINE_ENV)
    return f"pyxen[{machine}]: {what}" if machine else f"pyxen: {what}"
