"""One fake of what a driver, a backend or xenstored uses of its kernel
(xenstore, gnttab, events, log), shared by the tests that drive those
without a machine.  Each part records what was asked of it, so a test
reads its effects (ports sent, fds watched, pages granted, lines logged)
off the kernel it handed in."""

from __future__ import annotations

import io
import itertools
import mmap
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from domains.kernel.gnttab import Mapping, Window

PAGE = 4096


class RecordingLog:
    """A structlog-shaped logger keeping every line as (event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def bind(self, **_kw: Any) -> RecordingLog:
        return self

    def info(self, event: str, *args: Any, **kw: Any) -> None:
        self.lines.append((event, kw))

    debug = warning = error = exception = info

    def events(self) -> list[str]:
        return [event for event, _ in self.lines]


def quiet_logger() -> Any:
    """A real structlog logger writing nowhere: for code whose log calls
    should go through structlog's own processing, unrecorded."""
    return structlog.wrap_logger(structlog.PrintLogger(io.StringIO()))


class FakeEvents:
    """Event channels: ports allocated from 5 up, sends recorded in order,
    fd watches kept as fd -> handler."""

    def __init__(self) -> None:
        self.ports = itertools.count(5)
        self.sent: list[int] = []
        self.handlers: dict[int, Callable[[int], None] | None] = {}
        self.watching: dict[int, Callable[[int], None] | None] = {}
        self.closed: list[int] = []

    def alloc_unbound(self, remote_dom: int) -> int:
        return next(self.ports)

    def bind(self, port: int, handler: Callable[[int], None]) -> None:
        self.handlers[port] = handler

    def bind_interdomain(self, remote_dom: int, remote_port: int,
                         handler: Callable[[int], None] | None = None) -> int:
        port = next(self.ports)
        self.handlers[port] = handler
        return port

    def send(self, port: int) -> None:
        self.sent.append(port)

    def close(self, port: int) -> None:
        self.handlers.pop(port, None)
        self.closed.append(port)

    def watch_fd(self, fd: int, handler: Callable[[int], None] | None) -> None:
        self.watching[fd] = handler

    def unwatch_fd(self, fd: int, timeout: float = 5.0) -> None:
        self.watching.pop(fd, None)


class FakeGnttab:
    """Both sides of grants.  Granting: windows are anonymous maps whose
    first frame is `gfn`, each grant recorded as ref -> frame.  Mapping:
    the peer's pages are `pages`, a grant ref being a page's index."""

    def __init__(self, pages: Sequence[memoryview] = (), gfn: int = 0x1000) -> None:
        self.pages = pages
        self.gfn = gfn
        self.refs = itertools.count(8)
        self.granted: dict[int, int] = {}  # ref -> frame
        self.windows: list[Window] = []

    def open_window(self, peer: int, nr_frames: int) -> Window:
        window = Window(len(self.windows), 0, self.gfn, nr_frames, mmap.mmap(-1, nr_frames * PAGE))
        self.windows.append(window)
        return window

    def close_window(self, window: Window, refs: list[int]) -> bool:
        return True

    def grant_access(self, domid: int, frame: int, readonly: bool = False,
                     ref: int | None = None) -> int:
        ref = next(self.refs) if ref is None else ref
        self.granted[ref] = frame
        return ref

    def map_grant_refs(self, domid: int, refs: list[int], readonly: bool = False
                       ) -> list[Mapping]:
        return [Mapping(1, domid, r, self.pages[r].toreadonly() if readonly else self.pages[r],
                        domid, r * PAGE) for r in refs]

    def unmap_all(self, mappings: list[Mapping]) -> None:
        pass


class FakeKernel:
    """The kernel a device or daemon is given.  Parts not passed are the
    fakes above (xenstore and hypercall: none, for code that must not use
    them)."""

    def __init__(self, *, log: Any = None, events: FakeEvents | None = None,
                 gnttab: FakeGnttab | None = None, xenstore: Any = None,
                 hypercall: Any = None) -> None:
        self.log = RecordingLog() if log is None else log
        self.events = FakeEvents() if events is None else events
        self.gnttab = FakeGnttab() if gnttab is None else gnttab
        self.xenstore = xenstore
        self.hypercall = hypercall
