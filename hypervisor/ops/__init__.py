"""Hypercall handlers, one module per hypercall family.

Importing this package fills `hypervisor.dispatch.TABLE`. Each handler is
thin, like Xen's do_*_op: unpack the argument map, call the machine, pack
the result.
"""

from hypervisor.ops import (  # noqa: F401  (registration by import)
    domctl,
    event_channel_op,
    grant_table_op,
    misc,
    sched_op,
    sysctl,
)
