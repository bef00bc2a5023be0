"""Grant tables inside a domain: granting our pages, mapping others'.

Granting writes a grant_entry_v1 in our own table (frame and domid first,
then the flags that make it live). Ending access clears the flags and then
reads the hypervisor's status word, v2-style: if the grantee still has the
page mapped the page must not be reused yet (EBUSY).

Pages we grant for mapping must lie in a grant window opened for that peer:
only that window's pages are ever shared with its process.
"""

from __future__ import annotations

import mmap
import os
import threading
from dataclasses import dataclass

from domains.kernel.hypercall import Hypercalls
from domains.kernel.memchan import MemChannel
from hypervisor.public import grant_table
from hypervisor.public.errno import EBUSY, EIO, ENOSPC, XenError
from hypervisor.public.grant_table import (
    PYXEN_GNTTAB_MAX_BATCH,
    GNTMAP_host_map,
    GNTMAP_readonly,
    GNTST_okay,
    GNTTABOP_copy,
    GNTTABOP_error_msgs,
    GNTTABOP_map_grant_ref,
    GNTTABOP_setup_table,
    GNTTABOP_unmap_grant_ref,
    GTF_permit_access,
    GTF_reading,
    GTF_readonly,
    GTF_writing,
)
from hypervisor.public.xen import (
    PAGE_SIZE,
    HYPERVISOR_grant_table_op,
    HYPERVISOR_pyxen_op,
    PYXEN_op_close_window,
    PYXEN_op_grant_window,
)

ENTRY = grant_table.GRANT_ENTRY_V1
DOMID_FRAME = grant_table.GRANT_ENTRY_V1_TARGET
FLAGS = grant_table.GRANT_ENTRY_V1_FLAGS
STATUS = grant_table.PYXEN_GRANT_STATUS
NR_RESERVED_ENTRIES = 8  # GNTTAB_NR_RESERVED_ENTRIES: console, xenstore, ...


class GrantStatusError(Exception):
    """A grant op refused by the hypervisor with a GNTST code."""

    def __init__(self, status: int, what: str) -> None:
        msg = GNTTABOP_error_msgs[-status] if -len(GNTTABOP_error_msgs) < status < 0 else ""
        super().__init__(f"{what}: {msg or status}")
        self.status = status


@dataclass
class Window:
    window_id: int
    owner: int
    gfn: int
    nr_frames: int
    map: mmap.mmap


@dataclass
class Mapping:
    handle: int
    domid: int
    ref: int
    page: memoryview
    window: int = 0
    offset: int = 0


MADV_POPULATE_WRITE = 23  # Linux 5.14


def populate(view: mmap.mmap) -> None:
    """Fault every page of a window we own in now, writing: the memory
    cgroup charges a shared page to whoever touches it first, and that must
    be the domain the window belongs to, not the backend that fills it."""
    try:
        view.madvise(MADV_POPULATE_WRITE)
        return
    except (OSError, AttributeError, ValueError):
        pass  # an older kernel: touch each page
    for offset in range(0, len(view), PAGE_SIZE):
        view[offset] = view[offset]


class Windows:
    """Grant windows' fds, which arrive on the memory channel (memchan.py),
    each before the hypercall answer that names it: our own windows when
    we open them, a peer's when we first map a grant in it."""

    def __init__(self, memchan: MemChannel) -> None:
        self.memchan = memchan
        self.by_id: dict[int, Window] = {}
        self.users: dict[int, int] = {}  # foreign window -> live mappings in it
        # Windows read off the channel and not asked for yet: id -> (meta, fd).
        self._arrived: dict[int, tuple[dict, int]] = {}
        self._lock = threading.Lock()
        memchan.on("window", self._arrive)

    def _arrive(self, meta: dict, fds: list) -> None:
        """The channel's sink: stash it (under the channel's lock, so never
        take ours here: get() holds ours while it pumps)."""
        for fd in fds[1:]:
            os.close(fd)
        if not fds:
            return
        stale = self._arrived.pop(int(meta["window"]), None)
        self._arrived[int(meta["window"])] = (meta, fds[0])
        if stale is not None:
            os.close(stale[1])

    def hold(self, window_id: int) -> None:
        with self._lock:
            self.users[window_id] = self.users.get(window_id, 0) + 1

    def drop(self, window_id: int) -> None:
        """The last mapping of a peer's window is gone: let go of its memory."""
        with self._lock:
            left = self.users.get(window_id, 0) - 1
            if left > 0:
                self.users[window_id] = left
                return
            self.users.pop(window_id, None)
        self.forget(window_id)

    def forget(self, window_id: int) -> None:
        """A window we no longer use (a peer's, or our own given back)."""
        with self._lock:
            window = self.by_id.pop(window_id, None)
        if window is not None:
            try:
                window.map.close()
            except BufferError:
                pass  # a view is still held somewhere; the mapping goes with it

    def get(self, window_id: int) -> Window:
        window = self.by_id.get(window_id)
        if window is not None:
            return window
        if window_id not in self._arrived:
            self.memchan.pump()  # it is there: the hypervisor sent it first
        with self._lock:
            window = self.by_id.get(window_id)
            if window is not None:
                return window
            arrived = self._arrived.pop(window_id, None)
            if arrived is None:
                raise XenError(EIO, f"grant window {window_id}: its fd is not on "
                                    "the memory channel")
            meta, fd = arrived
            try:
                view = mmap.mmap(fd, meta["nr_frames"] * PAGE_SIZE)
            finally:
                os.close(fd)
            window = Window(window_id, meta["owner"], meta["gfn"], meta["nr_frames"], view)
            self.by_id[window_id] = window
            return window


class GrantTable:
    def __init__(self, hypercall: Hypercalls, entries: mmap.mmap, status: mmap.mmap,
                 max_frames: int, windows: Windows) -> None:
        self.hypercall = hypercall
        self.entries = entries
        self.status = status
        self.windows = windows
        self.max_refs = max_frames * PAGE_SIZE // ENTRY.size
        self.nr_refs = PAGE_SIZE // ENTRY.size
        self._free = list(range(self.nr_refs - 1, NR_RESERVED_ENTRIES - 1, -1))
        self._lock = threading.Lock()
        # Windows given back while their peer still mapped them (see _keep).
        self._kept: dict[int, tuple[Window, list[int]]] = {}
        self._kept_lock = threading.Lock()

    # -- granting -----------------------------------------------------------

    def _grow(self) -> None:
        frames = min(self.max_refs, self.nr_refs * 2) * ENTRY.size // PAGE_SIZE
        if frames * PAGE_SIZE // ENTRY.size <= self.nr_refs:
            raise XenError(ENOSPC, "grant table full")
        result = self.hypercall(HYPERVISOR_grant_table_op, GNTTABOP_setup_table,
                                {"nr_frames": frames})
        if result["status"] != GNTST_okay:
            raise GrantStatusError(result["status"], "setup_table")
        new = frames * PAGE_SIZE // ENTRY.size
        self._free.extend(range(new - 1, self.nr_refs - 1, -1))
        self.nr_refs = new

    def grant_access(self, domid: int, frame: int, readonly: bool = False,
                     ref: int | None = None) -> int:
        """Grant `frame` to `domid`; `ref` picks one of the reserved refs
        (below NR_RESERVED_ENTRIES, e.g. GNTTAB_RESERVED_XENSTORE)."""
        if ref is None:
            with self._lock:
                if not self._free:
                    self._grow()
                ref = self._free.pop()
        elif not 0 <= ref < NR_RESERVED_ENTRIES:
            raise ValueError(f"grant ref {ref} is not a reserved one")
        offset = ref * ENTRY.size
        DOMID_FRAME.pack_into(self.entries, offset + 2, domid, frame)
        # The entry goes live only once domid and frame are in place.
        FLAGS.pack_into(self.entries, offset,
                        GTF_permit_access | (GTF_readonly if readonly else 0))
        return ref

    def end_access(self, ref: int) -> None:
        """Revoke a grant; EBUSY (ref kept) while the grantee still maps it."""
        FLAGS.pack_into(self.entries, ref * ENTRY.size, 0)
        # Revoke first, then look at the pin: the hypervisor pins first, then
        # re-checks the entry, so one of the two sides always sees the other.
        status, = STATUS.unpack_from(self.status, ref * STATUS.size)
        if status & (GTF_reading | GTF_writing):
            raise XenError(EBUSY, f"grant ref {ref} is still mapped")
        if ref >= NR_RESERVED_ENTRIES:
            with self._lock:
                self._free.append(ref)

    def open_window(self, peer: int, nr_frames: int) -> Window:
        self.give_back_kept()  # room a peer has let go of since
        result = self.hypercall(HYPERVISOR_pyxen_op, PYXEN_op_grant_window,
                                {"peer": peer, "nr_frames": nr_frames})
        window = self.windows.get(result["window"])
        populate(window.map)
        return window

    def close_window(self, window: Window, refs: list[int]) -> bool:
        """Give a window back once its peer is gone (a backend that died and
        came back under a new domid gets a new window: a window has exactly
        one peer). `refs` are our grants in it, ended first. False, and the
        window kept, while any of them is still mapped. Views of it we still
        hold stay valid: the memory goes with the last of them."""
        busy = False
        for ref in refs:
            try:
                self.end_access(ref)
            except XenError:
                busy = True  # still mapped by its peer
        if busy:
            self._keep(window, refs)
            return False
        try:
            self.hypercall(HYPERVISOR_pyxen_op, PYXEN_op_close_window,
                           {"window": window.window_id})
        except XenError as exc:
            if exc.errno == EBUSY:
                self._keep(window, refs)
                return False
            raise
        self.windows.forget(window.window_id)
        return True

    def _keep(self, window: Window, refs: list[int]) -> None:
        """A window its peer still maps: given back as soon as it lets go
        (tried before the next window opens). A device detached and
        attached again in a loop used up the domain's window cap."""
        with self._kept_lock:
            self._kept[window.window_id] = (window, list(refs))

    def give_back_kept(self) -> int:
        """Close the kept windows their peers have let go of; how many."""
        with self._kept_lock:
            kept, self._kept = self._kept, {}
        return sum(self.close_window(window, refs) for window, refs in kept.values())

    # -- mapping others' grants -------------------------------------------------

    def map_grant_ref(self, domid: int, ref: int, readonly: bool = False) -> Mapping:
        return self.map_grant_refs(domid, [ref], readonly)[0]

    def map_grant_refs(self, domid: int, refs: list[int], readonly: bool = False
                       ) -> list[Mapping]:
        """Map several grants in one hypercall; all or nothing."""
        flags = GNTMAP_host_map | (GNTMAP_readonly if readonly else 0)
        results = self._batched(GNTTABOP_map_grant_ref,
                                [{"ref": ref, "dom": domid, "flags": flags} for ref in refs])
        mappings, failed = [], None
        for ref, result in zip(refs, results):
            if result["status"] != GNTST_okay:
                failed = failed or (result["status"], ref)
                continue
            window = self.windows.get(result["window"])
            offset = result["offset"]
            page = memoryview(window.map)[offset:offset + PAGE_SIZE]
            self.windows.hold(result["window"])
            mappings.append(Mapping(result["handle"], domid, ref,
                                    page.toreadonly() if readonly else page,
                                    result["window"], offset))
        if failed is not None:
            if mappings:
                self.unmap_all(mappings)
            raise GrantStatusError(failed[0], f"map d{domid} ref {failed[1]}")
        return mappings

    def _batched(self, op: int, ops: list[dict]) -> list[dict]:
        """One grant_table_op per PYXEN_GNTTAB_MAX_BATCH ops."""
        results: list[dict] = []
        for i in range(0, len(ops), PYXEN_GNTTAB_MAX_BATCH):
            results += self.hypercall(HYPERVISOR_grant_table_op, op,
                                      ops[i:i + PYXEN_GNTTAB_MAX_BATCH])
        return results

    def unmap(self, mapping: Mapping) -> None:
        self.unmap_all([mapping])

    def unmap_all(self, mappings: list[Mapping]) -> None:
        for mapping in mappings:
            mapping.page.release()
        results = self._batched(GNTTABOP_unmap_grant_ref,
                                [{"handle": m.handle} for m in mappings])
        for mapping in mappings:
            self.windows.drop(mapping.window)
        bad = [m.handle for m, r in zip(mappings, results) if r["status"] != GNTST_okay]
        if bad:
            raise GrantStatusError(results[0]["status"], f"unmap handles {bad}")

    def contiguous(self, mappings: list[Mapping]) -> memoryview:
        """One view over grants that are consecutive frames of one window
        (a multi-page ring); anything else is refused."""
        first = mappings[0]
        for i, m in enumerate(mappings):
            if m.window != first.window or m.offset != first.offset + i * PAGE_SIZE:
                raise GrantStatusError(-1, "ring pages are not contiguous")
        window = self.windows.get(first.window)
        return memoryview(window.map)[first.offset:first.offset + len(mappings) * PAGE_SIZE]

    def copy(self, ops: list[dict]) -> list[int]:
        """GNTTABOP_copy; returns each op's GNTST status."""
        results = self.hypercall(HYPERVISOR_grant_table_op, GNTTABOP_copy, ops)
        return [r["status"] for r in results]
