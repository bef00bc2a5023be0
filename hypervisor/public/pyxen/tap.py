"""A TAP interface: a host network device whose frames a process reads and writes.

Both sides make TAPs: a domain kernel for a guest's `eth0` (in the guest's
own network namespace, see domains/kernel/netns.py) or a driver domain's
uplink, and the hypervisor's privileged spawner for the uplinks of a
sandboxed driver domain (hypervisor/jail/uplinks.py), which has no
capability over the host's network. The hypervisor imports nothing of the
domains, so the TAP lives here, beside the other helpers both sides share.

Standard library only: the interface is configured with ioctls (MAC, MTU,
flags) and rtnetlink (addresses), so neither iproute2 nor any other tool is
needed. Everything acts on the netns of the *calling thread* (sockets and
the TAP device are created in it).
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import socket
import struct
from typing import Self

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
# TUNSETOFFLOAD's flags: what the kernel may hand us (and so the offloads
# the interface shows): blank checksums, TCP segmentation offload.
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
#: The virtio_net_hdr a TAP with IFF_VNET_HDR puts before each frame.
VNET_HDR_LEN = 10

# <linux/sockios.h>, <net/if.h>, <net/if_arp.h>
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFMTU = 0x8922
SIOCSIFHWADDR = 0x8924
SIOCGIFHWADDR = 0x8927
IFF_UP = 0x1
ARPHRD_ETHER = 1
IFNAMSIZ = 16
IFREQ_SIZE = 40  # struct ifreq on 64-bit Linux: 16-byte name + 24-byte union

# <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_addr.h>
NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
RTM_SETLINK = 19
RTM_NEWADDR = 20
IFLA_GSO_MAX_SIZE = 41
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_BROADCAST = 4
RT_SCOPE_UNIVERSE = 0

TUN_PATH = "/dev/net/tun"
MAX_FRAME = 65536 + 64  # larger than any frame the TAP hands out (64K GSO + header)
#: The largest frame (GSO included) an offloading TAP hands out: netif's
#: packet size is 16 bits (XEN_NETIF_MAX_TX_SIZE), and the kernel keeps a
#: GSO frame below the device's gso_max_size.
GSO_MAX_SIZE = 0xFFFF
ROOT_REASON = "pyxen's guest networking needs root: network namespaces and TAP devices"


class NetnsError(OSError):
    """A namespace or TAP operation failed; the message says what and why."""


# -- interface configuration (in the calling thread's netns) --

def _ifreq(name: str, payload: bytes = b"") -> bytearray:
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ or b"/" in raw or b" " in raw:
        raise ValueError(f"bad interface name {name!r}")
    req = bytearray(IFREQ_SIZE)
    req[:len(raw)] = raw
    req[IFNAMSIZ:IFNAMSIZ + len(payload)] = payload
    return req


def _ioctl(name: str, request: int, payload: bytes = b"", what: str = "") -> bytearray:
    req = _ifreq(name, payload)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            fcntl.ioctl(sock.fileno(), request, req)
        except OSError as exc:
            hint = f" ({ROOT_REASON})" if exc.errno == errno.EPERM else ""
            raise NetnsError(exc.errno, f"{what or hex(request)} {name}: "
                                        f"{exc.strerror}{hint}") from None
    return req


def set_link_up(name: str) -> None:
    """Set interface `name` up (IFF_UP), what `ip link set NAME up` does."""
    flags = struct.unpack_from("H", _ioctl(name, SIOCGIFFLAGS, what="get flags of"),
                              IFNAMSIZ)[0]
    _ioctl(name, SIOCSIFFLAGS, struct.pack("H", flags | IFF_UP), what="set up")


def parse_mac(mac: str) -> bytes:
    """'02:00:00:00:00:01' -> 6 bytes; a multicast MAC is refused."""
    parts = mac.replace("-", ":").split(":")
    try:
        raw = bytes(int(p, 16) for p in parts)
    except ValueError:
        raw = b""
    if len(raw) != 6 or any(len(p) not in (1, 2) for p in parts):
        raise ValueError(f"bad MAC address {mac!r} (want six hex bytes like 02:00:00:00:00:01)")
    if raw[0] & 1:
        raise ValueError(f"MAC address {mac} is multicast (its first byte is odd)")
    return raw


def format_mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def parse_address(text: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """'10.0.0.1/24' as is; a bare IPv4 address gets /24, a bare IPv6 /64."""
    if "/" not in text:
        text += "/24" if ":" not in text else "/64"
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        raise ValueError(f"bad address {text!r} (want CIDR like 10.0.0.1/24)") from None


def _rtattr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("HH", length, kind) + data + b"\0" * (-length % 4)


def _add_address(ifindex: int, iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface
                 ) -> None:
    """RTM_NEWADDR over rtnetlink, what `ip addr add` does; the kernel adds
    the subnet route itself."""
    family = socket.AF_INET if iface.version == 4 else socket.AF_INET6
    addr = iface.ip.packed
    attrs = _rtattr(IFA_LOCAL, addr) + _rtattr(IFA_ADDRESS, addr)
    if iface.version == 4 and iface.network.prefixlen < 31:
        attrs += _rtattr(IFA_BROADCAST, iface.network.broadcast_address.packed)
    body = struct.pack("BBBBI", family, iface.network.prefixlen, 0, RT_SCOPE_UNIVERSE,
                       ifindex) + attrs
    _netlink(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body, f"add address {iface}")


def _netlink(kind: int, flags: int, body: bytes, what: str) -> None:
    """One rtnetlink request, waiting for its acknowledgement."""
    seq = 1
    msg = struct.pack("IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags,
                      seq, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        sock.send(msg)
        while True:
            reply = sock.recv(65536)
            offset = 0
            while offset + 16 <= len(reply):
                length, rkind, _flags, rseq, _pid = struct.unpack_from("IHHII", reply, offset)
                if rkind == NLMSG_ERROR and rseq == seq:
                    err = -struct.unpack_from("i", reply, offset + 16)[0]
                    if err:
                        hint = f" ({ROOT_REASON})" if err == errno.EPERM else ""
                        raise NetnsError(err, f"{what}: {os.strerror(err)}{hint}")
                    return
                offset += max(length + (-length % 4), 16)


def _set_gso_max_size(ifindex: int, size: int) -> None:
    """RTM_SETLINK IFLA_GSO_MAX_SIZE, what `ip link set DEV gso_max_size`
    does: the kernel then keeps every GSO frame it hands out below it."""
    body = struct.pack("BxHiII", socket.AF_UNSPEC, 0, ifindex, 0, 0) \
        + _rtattr(IFLA_GSO_MAX_SIZE, struct.pack("I", size))
    _netlink(RTM_SETLINK, 0, body, f"set gso_max_size of interface {ifindex}")


class Tap:
    """A TAP interface in the calling thread's network namespace.

    Reads and writes are whole raw Ethernet frames (no packet-info header);
    with `vnet_hdr` each one is preceded by a 10-byte virtio_net_hdr
    (checksum and segmentation offload, see domains/kernel/vnet.py), and
    :meth:`set_offload` says which offloads the kernel may use on frames it
    hands us.  The interface exists as long as the file descriptor:
    `close()` (or the process's exit) removes it.
    """

    def __init__(self, fd: int, name: str, mac: str, mtu: int,
                 addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
                 vnet_hdr: bool = False) -> None:
        self._fd = fd
        self.name = name
        self.mac = mac
        self.mtu = mtu
        self.addresses = addresses
        self.vnet_hdr = vnet_hdr
        self.offload = 0

    @classmethod
    def create(cls, name: str = "eth0", *, mac: str | None = None, mtu: int = 1500,
               addresses: list[str] | tuple[str, ...] = (), vnet_hdr: bool = False,
               fd: int | None = None) -> Tap:
        """Create TAP `name` with this MAC (the kernel picks a random one when
        None), MTU and addresses (CIDR, e.g. "10.0.0.1/24"; a bare IPv4
        address gets /24), and set its link up.  With `vnet_hdr` frames
        carry a virtio_net_hdr (IFF_VNET_HDR), no offload enabled yet, and
        GSO frames are kept within GSO_MAX_SIZE.  `fd`: a /dev/net/tun fd
        opened ahead (a sandboxed guest's, handed over by the hypervisor,
        which it cannot open itself; the TAP takes it, failed or not), else
        one is opened here."""
        try:
            raw_mac = parse_mac(mac) if mac is not None else None
            ifaces = [parse_address(a) for a in addresses]
            if not 68 <= mtu <= 65535:
                raise ValueError(f"bad MTU {mtu} (68..65535)")
            _ifreq(name)  # validates the name before anything is created
        except ValueError:
            if fd is not None:
                os.close(fd)
            raise
        if fd is None:
            try:
                fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                raise NetnsError(exc.errno, f"{TUN_PATH}: {exc.strerror} ({ROOT_REASON})"
                                 ) from None
        try:
            flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
            req = _ifreq(name, struct.pack("H", flags))
            try:
                fcntl.ioctl(fd, TUNSETIFF, req)
            except OSError as exc:
                why = {errno.EBUSY: "an interface by that name exists already",
                       errno.EINVAL: "an interface by that name exists already (and is "
                                     "not a TAP device)",
                       errno.EPERM: ROOT_REASON}.get(exc.errno, exc.strerror)
                raise NetnsError(exc.errno, f"create TAP {name}: {why}") from None
            name = bytes(req[:IFNAMSIZ]).split(b"\0", 1)[0].decode()
            if raw_mac is not None:
                _ioctl(name, SIOCSIFHWADDR, struct.pack("H", ARPHRD_ETHER) + raw_mac,
                       what="set MAC of")
            got = _ioctl(name, SIOCGIFHWADDR, what="get MAC of")
            actual_mac = format_mac(bytes(got[IFNAMSIZ + 2:IFNAMSIZ + 8]))
            _ioctl(name, SIOCSIFMTU, struct.pack("i", mtu), what="set MTU of")
            ifindex = socket.if_nametoindex(name)
            if vnet_hdr:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
                _set_gso_max_size(ifindex, GSO_MAX_SIZE)
            set_link_up(name)
            for iface in ifaces:
                _add_address(ifindex, iface)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, name, actual_mac, mtu, ifaces, vnet_hdr)

    def set_offload(self, flags: int) -> None:
        """TUNSETOFFLOAD: the TUN_F_* offloads the kernel may leave to us
        (TUN_F_CSUM: blank checksums; TUN_F_TSO4 / TSO6: TCP frames of up to
        GSO_MAX_SIZE, which need TUN_F_CSUM).  Only with vnet_hdr."""
        if not self.vnet_hdr and flags:
            raise ValueError(f"TAP {self.name}: offloads need a virtio_net_hdr")
        try:
            fcntl.ioctl(self.fileno(), TUNSETOFFLOAD, flags)
        except OSError as exc:
            raise NetnsError(exc.errno, f"TAP {self.name}: set offload {flags:#x}: "
                                        f"{exc.strerror}") from None
        self.offload = flags

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError("TAP is closed")
        return self._fd

    def set_blocking(self, blocking: bool) -> None:
        """Non-blocking: read() raises BlockingIOError when no frame waits."""
        os.set_blocking(self.fileno(), blocking)

    def read(self) -> bytes:
        """The next frame the kernel sends out of the interface (blocks)."""
        return os.read(self.fileno(), MAX_FRAME)

    def write(self, frame: bytes) -> None:
        """Hand one frame to the kernel, as if received on the wire."""
        written = os.write(self.fileno(), frame)
        if written != len(frame):
            raise NetnsError(errno.EIO, f"TAP {self.name}: short write "
                                        f"({written} of {len(frame)} bytes)")

    def readv(self, buffers: list[memoryview]) -> int:
        """The next frame, scattered over `buffers` (the virtio_net_hdr, if
        any, first): its length.  Straight into the caller's pages, without
        a copy of ours."""
        return os.readv(self.fileno(), buffers)

    def writev(self, buffers: list[bytes | memoryview]) -> None:
        """Hand one frame, gathered from `buffers`, to the kernel."""
        want = sum(map(len, buffers))
        written = os.writev(self.fileno(), buffers)
        if written != want:
            raise NetnsError(errno.EIO, f"TAP {self.name}: short write "
                                        f"({written} of {want} bytes)")

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd {self._fd}"
        return f"<Tap {self.name} {self.mac} mtu {self.mtu} {state}>"
