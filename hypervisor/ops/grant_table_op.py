"""HYPERVISOR_grant_table_op: GNTTABOP_* batches, one status per op."""

from __future__ import annotations

from hypervisor.args import U16, U32, U64, List, Maybe, Struct
from hypervisor.dispatch import Call, hypercall
from hypervisor.public.errno import EINVAL, XenError
from hypervisor.public.grant_table import (
    PYXEN_GNTTAB_MAX_BATCH,
    GNTST_general_error,
    GNTST_okay,
    GNTTABOP_copy,
    GNTTABOP_map_grant_ref,
    GNTTABOP_query_size,
    GNTTABOP_setup_table,
    GNTTABOP_unmap_grant_ref,
)
from hypervisor.public.xen import DOMID_SELF, HYPERVISOR_grant_table_op

MAX_BATCH = PYXEN_GNTTAB_MAX_BATCH


def batch(op: Struct) -> List:
    """A batch: an array of at most MAX_BATCH ops of one shape."""
    return List(op, MAX_BATCH)


# struct gnttab_map_grant_ref's inputs (host_addr is accepted and unused:
# the result names a window and an offset instead).
MAP_OP = Struct({"ref": U32, "dom": U16, "flags": U32}, {"host_addr": U64})
UNMAP_OP = Struct({"handle": U32}, {"host_addr": U64, "dev_bus_addr": U64})
# struct gnttab_copy: each side is a ref or a gmfn (by the flags), a domid
# and an offset; len and flags are uint16_t.
COPY_SIDE = Struct({"domid": U16}, {"ref": U32, "gmfn": U64, "offset": U16})
COPY_OP = Struct({"source": COPY_SIDE, "dest": COPY_SIDE, "len": U16}, {"flags": U16})


@hypercall(HYPERVISOR_grant_table_op, GNTTABOP_setup_table,
           args=Struct({"nr_frames": U32}, {"dom": U16}))
def setup_table(call: Call, args: dict):
    """Grow the table in use; the frames are the grant-table segment's."""
    table = call.caller.gnttab
    if args.get("dom", DOMID_SELF) not in (DOMID_SELF, call.caller.domid):
        raise XenError(EINVAL, "setup_table for another domain")
    nr_frames = args["nr_frames"]
    if not 1 <= nr_frames <= table.max_frames:
        return {"status": GNTST_general_error, "frame_list": []}
    table.nr_frames = max(table.nr_frames, nr_frames)
    return {"status": GNTST_okay, "frame_list": list(range(nr_frames))}


@hypercall(HYPERVISOR_grant_table_op, GNTTABOP_query_size,
           args=Maybe(Struct(optional={"dom": U16})))
def query_size(call: Call, args: dict):
    table = call.caller.gnttab
    return {"nr_frames": table.nr_frames, "max_nr_frames": table.max_frames,
            "status": GNTST_okay}


@hypercall(HYPERVISOR_grant_table_op, GNTTABOP_map_grant_ref, args=batch(MAP_OP))
def map_grant_ref(call: Call, ops: list):
    machine, me = call.machine, call.caller
    results = []
    for op in ops:
        result = machine.grants.map_grant_ref(me.domid, op)
        if result["status"] == GNTST_okay and result["window"] not in me.known_windows:
            result = machine.pass_mapped_window(me, result)
        results.append(result)
    return results


@hypercall(HYPERVISOR_grant_table_op, GNTTABOP_unmap_grant_ref, args=batch(UNMAP_OP))
def unmap_grant_ref(call: Call, ops: list):
    me = call.caller
    table = me.gnttab
    touched = set()
    results = []
    for op in ops:
        mapping = table.maptrack.get(op["handle"])
        if mapping is not None:
            touched.add(mapping.region.window_id)
        results.append(call.machine.grants.unmap_grant_ref(me.domid, op))
    # The kernel lets go of a peer's window with its last mapping; pass the
    # fd again if it maps from that window later.
    me.known_windows -= {w for w in touched if not table.window_maps.get(w)}
    return results


@hypercall(HYPERVISOR_grant_table_op, GNTTABOP_copy, args=batch(COPY_OP))
def copy(call: Call, ops: list):
    return [call.machine.grants.copy(call.caller.domid, op) for op in ops]

