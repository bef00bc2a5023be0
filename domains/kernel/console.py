"""The PV console (Linux's hvc_xen): the domain's end of the console ring.

The page is granted to the console backend's domain (Dom0, where
xenconsoled runs) with the reserved ref GNTTAB_RESERVED_CONSOLE, inside a
grant window for that domain only; an event channel carries the kicks.
Output that xenconsoled does not drain within a second is dropped, as a
serial line drops what nobody reads: a guest never hangs on its console.
"""

from __future__ import annotations

import threading

from domains.kernel.console_ring import XenconsRing
from hypervisor.public.grant_table import GNTTAB_RESERVED_CONSOLE
from hypervisor.public.xen import PAGE_SIZE

CONSOLE_DOMID = 0  # xenconsoled runs in Dom0
STALL_TIMEOUT = 1.0


class Console:
    def __init__(self, kernel) -> None:
        self.events = kernel.events
        window = kernel.gnttab.open_window(CONSOLE_DOMID, 1)
        self.ring = XenconsRing(memoryview(window.map)[:PAGE_SIZE])
        ref = kernel.gnttab.grant_access(CONSOLE_DOMID, window.gfn, ref=GNTTAB_RESERVED_CONSOLE)
        self.port = self.events.alloc_unbound(CONSOLE_DOMID)
        self.announce = {"ring-ref": ref, "port": self.port, "mfn": window.gfn}
        self.cond = threading.Condition()
        self.input = bytearray()
        self.write_lock = threading.Lock()
        self.events.bind(self.port, self._event)

    def _event(self, _port: int) -> None:
        data = self.ring.read_in()
        if data:
            self.events.send(self.port)  # room in `in` for more keystrokes
        with self.cond:
            self.input += data
            self.cond.notify_all()  # input arrived, or room in `out`

    def write(self, data: bytes) -> None:
        with self.write_lock:
            while data:
                with self.cond:
                    n = self.ring.write_out(data)
                    if not n and not self.cond.wait(STALL_TIMEOUT):
                        return  # nobody drains the console: drop the rest
                if n:
                    self.events.send(self.port)
                    data = data[n:]

    def readline(self) -> bytes:
        """Block until a whole line (or a carriage return) has been typed."""
        with self.cond:
            while True:
                for end in (b"\n", b"\r"):
                    i = self.input.find(end)
                    if i >= 0:
                        line = bytes(self.input[:i + 1])
                        del self.input[:i + 1]
                        return line
                self.cond.wait()


class ConsoleTee:
    """A text stream that writes to the domain log and to the console."""

    def __init__(self, log_stream, console: Console) -> None:
        self.log_stream = log_stream
        self.console = console

    def write(self, text: str) -> int:
        self.log_stream.write(text)
        self.console.write(text.replace("\n", "\r\n").encode(errors="replace"))
        return len(text)

    def flush(self) -> None:
        self.log_stream.flush()
