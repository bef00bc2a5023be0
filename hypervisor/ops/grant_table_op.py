"""HYPERVISOR_grant_table_op: GNTTABOP_* batches, one status per op."""

from __future__ import annotations

from hypervisor.dispatch import Call, hypercall
from hypervisor.public.errno import EINVAL, XenError
from hypervisor.public.grant_table import (
    GNTST_general_error,
    GNTST_okay,
    GNTTABOP_copy,
    GNTTABOP_map_grant_ref,
    GNTTABOP_query_size,
    GNTTABOP_setup_table,
    GNTTABOP_unmap_grant_ref,
)
from hypervisor.public.grant_table import PYXEN_GNTTAB_MAX_BATCH
from hypervisor.public.xen import DOMID_SELF, HYPERVISOR_grant_table_op

MAX_BATCH = PYXEN_GNTTAB_MAX_BATCH


def _batch(ops) -> list[dict]:
    if not isinstance(ops, list) or len(ops) > MAX_BATCH:
        raise XenError(EINVAL, f"a grant batch is a list of at most {MAX_BATCH} ops")
    return ops


@hypercall(HYPERVISOR_grant_table_op, GNTTABOP_setup_table)
def setup_table(call: Call, args: dict):
    """Grow the table in use; the frames are the grant-table segment's."""
    table = call.caller.gnttab
    if int(args.get("dom", DOMID_SELF)) not in (DOMID_SELF, call.caller.domid):
        raise XenError(EINVAL, "setup_table for another domain")
    nr_frames = int(args["nr_frames"])
    if not 1 <= nr_frames <= table.max_frames:
        return {"status": GNTST_general_error, "frame_list": []}
    table.nr_frames = max(table.nr_frames, nr_frames)
    return {"status": GNTST_okay, "frame_list": list(range(nr_frames))}


@hypercall(HYPERVISOR_grant_table_op, GNTTABOP_query_size)
def query_size(call: Call, args: dict):
    table = call.caller.gnttab
    return {"nr_frames": table.nr_frames, "max_nr_frames": table.max_frames,
            "status": GNTST_okay}


@hypercall(HYPERVISOR_grant_table_op, GNTTABOP_map_grant_ref)
def map_grant_ref(call: Call, ops):
    machine, me = call.machine, call.caller
    results = []
    for op in _batch(ops):
        result = machine.grants.map_grant_ref(me.domid, op)
        if result["status"] == GNTST_okay and result["window"] not in me.known_windows:
            result = machine.pass_mapped_window(me, result)
        results.append(result)
    return results


@hypercall(HYPERVISOR_grant_table_op, GNTTABOP_unmap_grant_ref)
def unmap_grant_ref(call: Call, ops):
    me = call.caller
    maptrack = me.gnttab.maptrack
    touched = set()
    results = []
    for op in _batch(ops):
        mapping = maptrack.get(op.get("handle")) if isinstance(op, dict) else None
        if mapping is not None:
            touched.add(mapping.region.window_id)
        results.append(call.machine.grants.unmap_grant_ref(me.domid, op))
    # The kernel lets go of a peer's window with its last mapping; pass the
    # fd again if it maps from that window later.
    still = {m.region.window_id for m in maptrack.values()}
    me.known_windows -= touched - still
    return results


@hypercall(HYPERVISOR_grant_table_op, GNTTABOP_copy)
def copy(call: Call, ops):
    return [call.machine.grants.copy(call.caller.domid, op) for op in _batch(ops)]
