"""A small fake xenstored with just enough of its semantics for the xenbus
client's tests, served over a socket pair or a shared ring page."""

import queue
import socket
import threading

from domains.kernel.xenbus.ring import XenstoreRing, init_ring
from domains.kernel.xenbus.transport import RingTransport, UnixTransport
from hypervisor.public.io import xs_wire as xs
from hypervisor.public.io.xs_wire import XSD_SOCKMSG as HEADER
from hypervisor.public.io.xs_wire import Decoder


def frame(mtype, rid, tx, payload=b""):
    return HEADER.pack(mtype, rid, tx, len(payload)) + payload


class FakeXenstored:
    """Just enough of xenstored's semantics for the client's tests."""

    def __init__(self):
        self.nodes = {"/": b""}
        self.perms = {}
        self.watches = []
        self.next_tx = 1
        self.txs = {}
        self.commit_failures = 0
        self.big = set()            # DIRECTORY answers E2BIG for these
        self.part_names = 2         # names per DIRECTORY_PART reply
        self.gen = 7
        self.bump_gen_after = None  # change the generation after this many parts
        self.parts_served = 0
        self.hang = set()           # READs of these are never answered
        self.hold = 0               # collect this many replies, send them reversed
        self.held = []
        self.requests = queue.Queue()
        self.log = []
        self.introduced = set()

    # -- helpers --

    def ok(self, mtype, rid, tx, body=b"OK\0"):
        return [frame(mtype, rid, tx, body)]

    def err(self, rid, tx, name):
        return [frame(xs.XS_ERROR, rid, tx, name.encode() + b"\0")]

    def children(self, path):
        prefix = path.rstrip("/") + "/"
        return sorted({p[len(prefix):].split("/")[0] for p in self.nodes
                       if p.startswith(prefix) and p != prefix})

    def fire(self, path):
        out = []
        for wpath, token in self.watches:
            if path == wpath or path.startswith(wpath.rstrip("/") + "/"):
                out.append(frame(xs.XS_WATCH_EVENT, 0, 0, f"{path}\0{token}\0".encode()))
        return out

    def put(self, path, value):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            self.nodes.setdefault("/" + "/".join(parts[:i]), b"")
        self.nodes[path] = value
        return self.fire(path)

    # -- dispatch --

    def handle(self, mtype, rid, tx, payload):
        self.log.append((mtype, tx, payload))
        self.requests.put((mtype, payload))
        replies = self._handle(mtype, rid, tx, payload)
        if self.hold:
            self.held.extend(r for r in replies)
            if len(self.held) >= self.hold:
                out, self.held, self.hold = list(reversed(self.held)), [], 0
                return out
            return []
        return replies

    def _handle(self, mtype, rid, tx, payload):
        args = payload.split(b"\0")
        path = args[0].decode()
        if mtype == xs.XS_READ:
            if path in self.hang:
                return []
            if path == "/weird":
                return self.err(rid, tx, "EWHATEVER")
            value = self.txs.get(tx, {}).get(path, self.nodes.get(path))
            if value is None:
                return self.err(rid, tx, "ENOENT")
            return self.ok(mtype, rid, tx, value)
        if mtype == xs.XS_WRITE:
            value = payload[len(args[0]) + 1:]
            if tx:
                self.txs[tx][path] = value
                return self.ok(mtype, rid, tx)
            return self.ok(mtype, rid, tx) + self.put(path, value)
        if mtype == xs.XS_MKDIR:
            return self.ok(mtype, rid, tx) + (self.put(path, b"") if path not in self.nodes else [])
        if mtype == xs.XS_RM:
            if path not in self.nodes:
                return self.err(rid, tx, "ENOENT")
            for p in [p for p in self.nodes if p == path or p.startswith(path + "/")]:
                del self.nodes[p]
            return self.ok(mtype, rid, tx) + self.fire(path)
        if mtype == xs.XS_DIRECTORY:
            if path not in self.nodes:
                return self.err(rid, tx, "ENOENT")
            if path in self.big:
                return self.err(rid, tx, "E2BIG")
            return self.ok(mtype, rid, tx, b"".join(c.encode() + b"\0" for c in self.children(path)))
        if mtype == xs.XS_DIRECTORY_PART:
            offset = int(args[1])
            self.parts_served += 1
            if self.bump_gen_after is not None and self.parts_served > self.bump_gen_after:
                self.gen += 1
                self.bump_gen_after = None
            listing = b"".join(c.encode() + b"\0" for c in self.children(path))
            rest = listing[offset:]
            names = rest.split(b"\0")[:-1][:self.part_names]
            body = b"".join(n + b"\0" for n in names)
            if len(body) == len(rest):
                body += b"\0"  # the empty name: end of the list
            return self.ok(mtype, rid, tx, str(self.gen).encode() + b"\0" + body)
        if mtype == xs.XS_GET_PERMS:
            perms = self.perms.get(path, ["n0"])
            return self.ok(mtype, rid, tx, b"".join(p.encode() + b"\0" for p in perms))
        if mtype == xs.XS_SET_PERMS:
            self.perms[path] = [a.decode() for a in args[1:-1]]
            return self.ok(mtype, rid, tx)
        if mtype == xs.XS_WATCH:
            token = args[1].decode()
            self.watches.append((path, token))
            return self.ok(mtype, rid, tx) + [
                frame(xs.XS_WATCH_EVENT, 0, 0, f"{path}\0{token}\0".encode())]
        if mtype == xs.XS_UNWATCH:
            self.watches.remove((path, args[1].decode()))
            return self.ok(mtype, rid, tx)
        if mtype == xs.XS_RESET_WATCHES:
            self.watches.clear()
            return self.ok(mtype, rid, tx)
        if mtype == xs.XS_TRANSACTION_START:
            t, self.next_tx = self.next_tx, self.next_tx + 1
            self.txs[t] = {}
            return self.ok(mtype, rid, tx, f"{t}\0".encode())
        if mtype == xs.XS_TRANSACTION_END:
            writes = self.txs.pop(tx)
            if path == "T":
                if self.commit_failures:
                    self.commit_failures -= 1
                    return self.err(rid, 0, "EAGAIN")
                out = self.ok(mtype, rid, 0)
                for p, v in writes.items():
                    out += self.put(p, v)
                return out
            return self.ok(mtype, rid, 0)
        if mtype == xs.XS_GET_DOMAIN_PATH:
            return self.ok(mtype, rid, tx, f"/local/domain/{path}\0".encode())
        if mtype == xs.XS_INTRODUCE:
            self.introduced.add(int(path))
            return self.ok(mtype, rid, tx)
        if mtype == xs.XS_RELEASE:
            self.introduced.discard(int(path))
            return self.ok(mtype, rid, tx)
        if mtype == xs.XS_IS_DOMAIN_INTRODUCED:
            return self.ok(mtype, rid, tx, b"T\0" if int(path) in self.introduced else b"F\0")
        if mtype in (xs.XS_RESUME, xs.XS_SET_TARGET):
            return self.ok(mtype, rid, tx)
        if mtype == xs.XS_CONTROL:
            return self.ok(mtype, rid, tx, b"|".join(args[:-1]) + b"\0")
        return self.err(rid, tx, "ENOSYS")


class SocketServer:
    def __init__(self, store):
        self.store = store
        self.sock, theirs = socket.socketpair()
        self.transport = UnixTransport.from_socket(theirs)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        decoder = Decoder()
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            for msg in decoder.feed(data):
                out = b"".join(self.store.handle(msg.type, msg.req_id, msg.tx_id, msg.payload))
                if out:
                    self.sock.sendall(out)

    def disconnect(self):
        self.sock.shutdown(socket.SHUT_RDWR)

    def stop(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join()
        self.sock.close()


class RingServer:
    """xenstored's half of a shared page; event channels are Condition kicks."""

    def __init__(self, store):
        self.store = store
        self.buf = bytearray(4096)
        init_ring(self.buf)
        self.ring = XenstoreRing(self.buf)
        self.cond = threading.Condition()
        self.stopping = False
        self.notifications = 0
        self.transport = RingTransport(XenstoreRing(self.buf), notify=self.notify)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def notify(self):  # the domain's evtchn send -> xenstored's handler
        with self.cond:
            self.notifications += 1
            self.cond.notify_all()

    def run(self):
        decoder = Decoder()
        out = bytearray()
        while True:
            with self.cond:
                while not self.stopping and self.ring.request_available() == 0 and \
                        not (out and self.ring.response_space()):
                    self.cond.wait()
                if self.stopping:
                    return
            data = self.ring.read_request(4096)
            if data:
                self.transport.kick()
            for msg in decoder.feed(data):
                out += b"".join(self.store.handle(msg.type, msg.req_id, msg.tx_id, msg.payload))
            if out:
                n = self.ring.write_response(bytes(out))
                del out[:n]
                if n:
                    self.transport.kick()  # xenstored's evtchn send -> domain's handler

    def stop(self):
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.thread.join()
