"""Grant operations of any size go to the hypervisor in batches it accepts."""

import mmap

from domains.kernel.gnttab import GrantTable, Window
from hypervisor.ops.grant_table_op import MAX_BATCH
from hypervisor.public.grant_table import (
    PYXEN_GNTTAB_MAX_BATCH,
    GNTST_okay,
    GNTTABOP_map_grant_ref,
    GNTTABOP_unmap_grant_ref,
)
from hypervisor.public.xen import PAGE_SIZE


class FakeWindows:
    def __init__(self, pages: int) -> None:
        self.window = Window(7, 3, 0x4000, pages, mmap.mmap(-1, pages * PAGE_SIZE))
        self.held = 0

    def get(self, window_id: int) -> Window:
        return self.window

    def hold(self, window_id: int) -> None:
        self.held += 1

    def drop(self, window_id: int) -> None:
        self.held -= 1


def test_more_grants_than_one_batch_are_mapped_and_unmapped_in_batches():
    batches = []

    def hypercall(_nr, op, ops):
        assert len(ops) <= MAX_BATCH  # what the hypervisor refuses beyond
        batches.append((op, len(ops)))
        if op == GNTTABOP_map_grant_ref:
            return [{"status": GNTST_okay, "handle": o["ref"], "window": 7,
                     "offset": (o["ref"] % 8) * PAGE_SIZE} for o in ops]
        return [{"status": GNTST_okay} for _ in ops]

    windows = FakeWindows(8)
    table = GrantTable(hypercall, mmap.mmap(-1, PAGE_SIZE), mmap.mmap(-1, PAGE_SIZE), 1,
                       windows)
    mappings = table.map_grant_refs(3, list(range(1100)))
    assert [m.ref for m in mappings] == list(range(1100)) and windows.held == 1100
    table.unmap_all(mappings)
    assert windows.held == 0
    assert PYXEN_GNTTAB_MAX_BATCH == MAX_BATCH
    assert batches == [(GNTTABOP_map_grant_ref, 512), (GNTTABOP_map_grant_ref, 512),
                       (GNTTABOP_map_grant_ref, 76), (GNTTABOP_unmap_grant_ref, 512),
                       (GNTTABOP_unmap_grant_ref, 512), (GNTTABOP_unmap_grant_ref, 76)]
