"""Parsers for xl's device and CPU-list syntaxes: disk specs, vif specs, cpus.

pyxen reuses xl's own configuration syntax so that a Xen user can copy lines
from an existing ``xl.cfg`` into a topology file.  The grammars follow:

* ``xl-disk-configuration(5)``: a comma-separated mix of ``key=value``
  parameters, bare flags (``cdrom``, ``discard`` ...) and positional
  parameters filling ``target, format, vdev, access`` in that order.
  ``target=`` swallows the rest of the spec, commas included, which is the only
  way to name a path with a comma in it.
* ``xl-network-configuration(5)``: comma-separated ``key=value`` pairs, all
  optional (the empty string is a valid vif).
* ``xl.cfg(5)`` ``cpus=``: ``"all"``, ``"0-3,5,^1"``, or a list of CPU numbers.
* pyxen's ``uplink=`` of a net driver domain, in the vif spec's style:
  ``bridge=xenbr0, tap=pyxtap0, ip=10.0.0.254/24`` (``mtu``, ``mac``
  optional): the bridge's port to a TAP device on the host.
* ``xen-vbd-interface(7)`` (``docs/misc/vbd-interface.txt``): how a ``vdev``
  name becomes the integer the frontend finds in XenStore.

Everything here is pure: strings in, frozen dataclasses out, ``SpecError`` on
bad input.  ``to_dict``/``from_dict`` give the plain (msgpack-able) form the
toolstack sends between processes; ``from_dict`` re-validates, because data
arriving from another process is untrusted.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = [
    "DOM0_NAME",
    "DiskSpec",
    "SpecError",
    "UplinkSpec",
    "VifSpec",
    "parse_cpulist",
    "parse_disk",
    "parse_size",
    "parse_uplink",
    "parse_vif",
    "virtual_device_number",
]

DOM0_NAME = "Domain-0"
SECTOR_SIZE = 512


class SpecError(ValueError):
    """A disk, vif or CPU-list spec that does not parse; the message names the bad token."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --------------------------------------------------------------------------
# Sizes and virtual device numbers
# --------------------------------------------------------------------------

_SIZE_RE = re.compile(r"^(\d+)\s*([KMGT]?)(?:i?B)?$", re.IGNORECASE)
_SIZE_SHIFT = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}


def parse_size(text: str) -> int:
    """Parse ``64M``-style sizes (binary K/M/G/T suffixes) into bytes.

    A raw image is addressed in 512-byte sectors by blkif, so the size must be
    a positive multiple of the sector size.
    """
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise SpecError(f"bad size {text!r}: expected a number with an optional K/M/G/T suffix")
    size = int(m.group(1)) << _SIZE_SHIFT[m.group(2).upper()]
    if size <= 0 or size % SECTOR_SIZE:
        raise SpecError(f"bad size {text!r}: must be a positive multiple of {SECTOR_SIZE} bytes")
    return size


_XVD_RE = re.compile(r"^xvd([a-z]+)(\d*)$")
_DP_RE = re.compile(r"^d(\d+)(?:p(\d+))?$")
_SD_HD_RE = re.compile(r"^(sd|hd)([a-z])(\d*)$")


def _letters_to_disk(letters: str) -> int:
    """Bijective base-26: a=0 ... z=25, aa=26 (so xvdtq is disk 536, as the doc says)."""
    n = 0
    for ch in letters:
        n = n * 26 + (ord(ch) - ord("a") + 1)
    return n - 1


def _parse_number(vdev: str) -> int | None:
    """A raw xenstore number in C notation: hex ``0x..``, octal ``0..``, or decimal."""
    if re.fullmatch(r"0[xX][0-9a-fA-F]+", vdev):
        return int(vdev, 16)
    if re.fullmatch(r"0[0-7]+", vdev):
        return int(vdev, 8)
    if re.fullmatch(r"\d+", vdev):
        return int(vdev, 10)
    return None


def _xvd_number(disk: int, part: int, vdev: str) -> int:
    if disk < 16 and part < 16:
        return 202 << 8 | disk << 4 | part
    if disk < (1 << 20) and part < 256:
        return 1 << 28 | disk << 8 | part
    raise SpecError(f"vdev {vdev!r} is out of range (at most 2^20 disks and 256 partitions)")


def virtual_device_number(vdev: str) -> int:
    """The xenstore ``virtual-device`` integer for a vdev, per xen-vbd-interface(7).

    xvda -> 51712 (202<<8), xvdq -> 268439552 (1<<28 | 16<<8), sda -> 2048,
    hda -> 768, hdc -> 5632, and a bare number is taken as the value itself.
    """
    if (n := _parse_number(vdev)) is not None:
        if n >= 1 << 30:
            raise SpecError(f"vdev {vdev!r} is out of range")
        return n
    if m := _XVD_RE.match(vdev):
        return _xvd_number(_letters_to_disk(m.group(1)), int(m.group(2) or 0), vdev)
    if m := _DP_RE.match(vdev):
        return _xvd_number(int(m.group(1)), int(m.group(2) or 0), vdev)
    if m := _SD_HD_RE.match(vdev):
        kind, disk, part = m.group(1), ord(m.group(2)) - ord("a"), int(m.group(3) or 0)
        if kind == "sd":
            # The 8<<8 encoding has 4 bits each for disk and partition.
            if disk > 15 or part > 15:
                raise SpecError(f"vdev {vdev!r} cannot be encoded (SCSI disks sda-sdp, partitions 0-15)")
            return 8 << 8 | disk << 4 | part
        if disk > 3 or part > 63:
            raise SpecError(f"vdev {vdev!r} cannot be encoded (IDE disks hda-hdd, partitions 0-63)")
        if disk < 2:
            return 3 << 8 | disk << 6 | part
        return 22 << 8 | (disk - 2) << 6 | part
    raise SpecError(f"bad vdev {vdev!r}: expected xvd<letters>, sd<letter>, hd<letter>, d<N>p<M> or a number")


# --------------------------------------------------------------------------
# Disk specs
# --------------------------------------------------------------------------

_FORMATS = ("raw", "qcow", "qcow2", "vhd", "qed")
_ACCESS = {"r": "ro", "ro": "ro", "w": "rw", "rw": "rw"}
_BACKENDTYPES = ("phy", "qdisk", "tap")
_POSITIONAL = ("target", "format", "vdev", "access")
_DISK_KEYS = frozenset(_POSITIONAL + ("devtype", "backend", "backendtype", "script", "size"))
_DISK_FLAGS = {
    "cdrom": ("devtype", "cdrom"),
    "direct-io-safe": ("direct_io_safe", True),
    "discard": ("discard", True),
    "no-discard": ("discard", False),
}
_COLO = frozenset({"colo", "colo-host", "colo-port", "colo-export", "active-disk", "hidden-disk"})
_SWALLOWED_RE = re.compile(
    r",\s*((?:" + "|".join(sorted(_DISK_KEYS)) + r")=[^,]*|"
    + "|".join(re.escape(f) for f in _DISK_FLAGS) + r")\s*(?:,|$)"
)
_DOMAIN_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def _check_domain_name(name: str, what: str) -> None:
    if not _DOMAIN_NAME_RE.match(name):
        raise SpecError(f"bad {what} domain name {name!r}")


@dataclass(frozen=True)
class DiskSpec:
    """One ``disk=`` entry, normalised (``access`` is "ro" or "rw", ``size`` in bytes).

    ``target`` is kept exactly as written: resolving relative paths is the
    toolstack's job, because only it knows the run directory.
    """

    vdev: str
    target: str | None = None
    format: str = "raw"
    access: str = "rw"
    devtype: str = "disk"
    backend: str = DOM0_NAME
    backendtype: str | None = None
    script: str | None = None
    direct_io_safe: bool = False
    discard: bool = True
    size: int | None = None

    def __post_init__(self) -> None:
        # Validation lives here so that from_dict() and direct construction get
        # the same checks as parse_disk().
        _check_types(self)
        virtual_device_number(self.vdev)
        if self.format not in _FORMATS:
            raise SpecError(f"unknown format {self.format!r} (expected one of {', '.join(_FORMATS)})")
        if self.format != "raw":
            raise SpecError(f"format {self.format!r} is not supported by pyxen (raw only)")
        if self.access not in ("ro", "rw"):
            raise SpecError(f"bad access {self.access!r} (expected r, ro, w or rw)")
        if self.devtype not in ("disk", "cdrom"):
            raise SpecError(f"bad devtype {self.devtype!r} (expected cdrom)")
        if self.devtype == "cdrom" and self.access == "rw":
            raise SpecError("a cdrom cannot be writable (access must be ro)")
        if self.target is None and self.devtype != "cdrom":
            raise SpecError("missing target (only an empty cdrom may omit it)")
        _check_domain_name(self.backend, "backend")
        if self.backendtype is not None and self.backendtype not in _BACKENDTYPES:
            raise SpecError(f"bad backendtype {self.backendtype!r} (expected one of {', '.join(_BACKENDTYPES)})")
        if self.size is not None and (
            type(self.size) is not int or self.size <= 0 or self.size % SECTOR_SIZE
        ):
            raise SpecError(f"bad size {self.size!r}: must be a positive multiple of {SECTOR_SIZE} bytes")

    @property
    def readonly(self) -> bool:
        return self.access == "ro"

    @property
    def virtual_device(self) -> int:
        """The integer written to the frontend's ``virtual-device`` node."""
        return virtual_device_number(self.vdev)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DiskSpec:
        return cls(**_checked_fields(cls, data))


_TYPES: dict[str, Any] = {
    "vdev": str, "target": (str, type(None)), "format": str, "access": str,
    "devtype": str, "backend": str, "backendtype": (str, type(None)),
    "script": (str, type(None)), "direct_io_safe": bool, "discard": bool,
    "size": (int, type(None)), "mac": (str, type(None)), "bridge": str,
    "ip": tuple, "vifname": (str, type(None)), "mtu": (int, type(None)),
    "extra": Mapping, "tap": str,
}


def _check_types(obj: Any) -> None:
    """Field type checks: a spec may arrive as a dict from another process."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if not isinstance(value, _TYPES[f.name]) or (
            isinstance(value, bool) and _TYPES[f.name] is not bool
        ):
            raise SpecError(f"{type(obj).__name__}.{f.name}: bad type {type(value).__name__}")
    for value in getattr(obj, "ip", ()):
        if not isinstance(value, str):
            raise SpecError(f"{type(obj).__name__}.ip: bad type {type(value).__name__}")
    for key, value in getattr(obj, "extra", {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise SpecError("VifSpec.extra: keys and values must be strings")


def _checked_fields(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """Reject unknown keys before construction so a bad dict fails with SpecError, not TypeError."""
    if not isinstance(data, Mapping):
        raise SpecError(f"expected a dict for {cls.__name__}, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise SpecError(f"unknown {cls.__name__} field {unknown[0]!r}")
    return dict(data)


def _split_disk_tokens(spec: str) -> Iterable[str]:
    """Split on commas, except that a ``target=`` token takes the rest of the spec."""
    pos = 0
    while True:
        start = pos
        while start < len(spec) and spec[start].isspace():
            start += 1
        if spec.startswith("target=", start):
            yield spec[start:]
            return
        comma = spec.find(",", start)
        if comma < 0:
            yield spec[start:].rstrip()
            return
        yield spec[start:comma].rstrip()
        pos = comma + 1


def parse_disk(spec: str) -> DiskSpec:
    """Parse one xl disk spec, e.g. ``backend=disk-dd, vdev=xvda, target=guest1.img``.

    Each parameter may be given once, by name or by position; an empty value
    means "use the default", as xl-disk-configuration(5) specifies.
    """
    if not isinstance(spec, str):
        raise SpecError(f"disk spec must be a string, got {type(spec).__name__}")
    values: dict[str, Any] = {}
    given: set[str] = set()

    def assign(key: str, value: Any, token: str) -> None:
        if key in given:
            raise SpecError(f"{token!r}: {key} given more than once")
        given.add(key)
        if value != "":
            values[key] = value

    for token in _split_disk_tokens(spec):
        key, eq, value = token.partition("=")
        if eq:
            key = key.strip()
            if key in _COLO:
                raise SpecError(f"{token!r}: COLO is not supported by pyxen")
            if key not in _DISK_KEYS:
                raise SpecError(f"{token!r}: unknown disk parameter {key!r}")
            if key != "target":
                value = value.strip()
            elif m := _SWALLOWED_RE.search(value):
                # xl's rule makes target= take the rest of the spec, so a
                # parameter written after it would silently become part of the
                # path.  A real path like that is far less likely than a typo.
                raise SpecError(
                    f"{token!r}: target= takes the rest of the spec, so {m.group(1)!r} "
                    "would become part of the path; put target= last"
                )
            assign(key, value, token)
        elif token in _DISK_FLAGS:
            assign(*_DISK_FLAGS[token], token)
        elif token in _COLO:
            raise SpecError(f"{token!r}: COLO is not supported by pyxen")
        else:
            slot = next((p for p in _POSITIONAL if p not in given), None)
            if slot is None:
                if token == "":
                    continue  # a trailing comma is harmless
                raise SpecError(f"{token!r}: too many positional parameters")
            assign(slot, token, token)

    if "vdev" not in values:
        raise SpecError(f"{spec!r}: missing vdev")
    if "access" in values:
        access = values["access"]
        if access not in _ACCESS:
            raise SpecError(f"bad access {access!r} (expected r, ro, w or rw)")
        values["access"] = _ACCESS[access]
    elif values.get("devtype") == "cdrom":
        values["access"] = "ro"
    if "size" in values:
        values["size"] = parse_size(values["size"])
    return DiskSpec(**values)


# --------------------------------------------------------------------------
# Vif specs
# --------------------------------------------------------------------------

_MAC_RE = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$")
_IFNAME_MAX = 15  # IFNAMSIZ - 1 on Linux
# Keys xl accepts that pyxen carries along unused (see xl-network-configuration(5)).
_VIF_EXTRA_KEYS = frozenset(
    {"type", "model", "rate", "gatewaydev", "script", "devid", "forwarddev", "accel", "trusted"}
)
_VIF_KEYS = frozenset({"mac", "bridge", "ip", "backend", "vifname", "mtu"})


@dataclass(frozen=True)
class VifSpec:
    """One ``vif=`` entry.  ``mac`` None means "the toolstack picks one in 00:16:3e".

    Keys pyxen does not act on (``model``, ``rate``, ...) are kept in ``extra``
    so nothing the user wrote is silently lost when the config is echoed back.
    """

    mac: str | None = None
    bridge: str = "xenbr0"
    ip: tuple[str, ...] = ()
    backend: str = DOM0_NAME
    vifname: str | None = None
    mtu: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if isinstance(self.ip, list):
            object.__setattr__(self, "ip", tuple(self.ip))
        _check_types(self)
        if self.mac is not None:
            mac = self.mac.lower()
            if not _MAC_RE.match(mac):
                raise SpecError(f"bad mac {self.mac!r} (expected six colon-separated hex bytes)")
            if int(mac[:2], 16) & 1:
                raise SpecError(f"bad mac {self.mac!r}: multicast bit set")
            object.__setattr__(self, "mac", mac)
        for addr in self.ip:
            try:
                ipaddress.ip_interface(addr)
            except ValueError:
                raise SpecError(f"bad ip {addr!r}") from None
        for what in ("bridge", "vifname"):
            name = getattr(self, what)
            if name is not None and not re.fullmatch(rf"[A-Za-z0-9_.-]{{1,{_IFNAME_MAX}}}", name):
                raise SpecError(f"bad {what} {name!r} (1-{_IFNAME_MAX} characters of [A-Za-z0-9_.-])")
        _check_domain_name(self.backend, "backend")
        if self.mtu is not None and (type(self.mtu) is not int or not 68 <= self.mtu <= 65535):
            raise SpecError(f"bad mtu {self.mtu!r} (expected 68-65535)")
        bad = sorted(set(self.extra) - _VIF_EXTRA_KEYS)
        if bad:
            raise SpecError(f"unknown vif parameter {bad[0]!r}")
        object.__setattr__(self, "extra", dict(self.extra))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ip"] = list(self.ip)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VifSpec:
        return cls(**_checked_fields(cls, data))


def parse_vif(spec: str) -> VifSpec:
    """Parse one xl vif spec, e.g. ``backend=net-dd, bridge=xenbr0, mac=00:16:3e:00:00:01``."""
    if not isinstance(spec, str):
        raise SpecError(f"vif spec must be a string, got {type(spec).__name__}")
    values: dict[str, Any] = {}
    extra: dict[str, str] = {}
    for raw in spec.split(","):
        token = raw.strip()
        if not token:
            continue
        key, eq, value = token.partition("=")
        key, value = key.strip(), value.strip()
        if not eq:
            raise SpecError(f"{token!r}: expected key=value")
        if key == "netdev":  # deprecated alias, per the man page
            key = "gatewaydev"
        if key in values or key in extra:
            raise SpecError(f"{token!r}: {key} given more than once")
        if key in _VIF_EXTRA_KEYS:
            extra[key] = value
        elif key not in _VIF_KEYS:
            raise SpecError(f"{token!r}: unknown vif parameter {key!r}")
        elif key == "ip":
            values["ip"] = tuple(value.split())
        elif key == "mtu":
            if not value.isdigit():
                raise SpecError(f"{token!r}: mtu must be a number")
            values["mtu"] = int(value)
        elif value:
            values[key] = value
    return VifSpec(extra=extra, **values)


# --------------------------------------------------------------------------
# Uplinks (pyxen's: a net driver domain's bridge to a TAP device on the host)
# --------------------------------------------------------------------------

_UPLINK_KEYS = frozenset({"bridge", "tap", "ip", "mtu", "mac"})


@dataclass(frozen=True)
class UplinkSpec:
    """One ``uplink=`` entry of a net driver domain: bridge ``bridge`` gets a
    port to TAP ``tap``, created on the host with addresses ``ip`` (CIDR),
    MTU ``mtu`` (None: 1500) and MAC ``mac`` (None: the kernel picks one)."""

    tap: str
    bridge: str = "xenbr0"
    ip: tuple[str, ...] = ()
    mtu: int | None = None
    mac: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.ip, list):
            object.__setattr__(self, "ip", tuple(self.ip))
        _check_types(self)
        for what in ("bridge", "tap"):
            name = getattr(self, what)
            if not re.fullmatch(rf"[A-Za-z0-9_.-]{{1,{_IFNAME_MAX}}}", name):
                raise SpecError(f"bad {what} {name!r} (1-{_IFNAME_MAX} characters of [A-Za-z0-9_.-])")
        for addr in self.ip:
            try:
                ipaddress.ip_interface(addr)
            except ValueError:
                raise SpecError(f"bad ip {addr!r} (expected CIDR like 10.0.0.254/24)") from None
        if self.mtu is not None and (type(self.mtu) is not int or not 68 <= self.mtu <= 65535):
            raise SpecError(f"bad mtu {self.mtu!r} (expected 68-65535)")
        if self.mac is not None:
            mac = self.mac.lower()
            if not _MAC_RE.match(mac) or int(mac[:2], 16) & 1:
                raise SpecError(f"bad mac {self.mac!r} (expected six colon-separated hex "
                                "bytes, not multicast)")
            object.__setattr__(self, "mac", mac)

    def to_arg(self) -> str:
        """The driver domain's command-line form, no spaces:
        ``bridge,tap,ip+ip,mtu,mac`` (empty fields for defaults);
        backends.netback.uplink parses it."""
        return ",".join([self.bridge, self.tap, "+".join(self.ip),
                         "" if self.mtu is None else str(self.mtu), self.mac or ""])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ip"] = list(self.ip)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UplinkSpec:
        return cls(**_checked_fields(cls, data))


def parse_uplink(spec: str) -> UplinkSpec:
    """Parse one uplink spec, e.g. ``bridge=xenbr0, tap=pyxtap0, ip=10.0.0.254/24``."""
    if not isinstance(spec, str):
        raise SpecError(f"uplink spec must be a string, got {type(spec).__name__}")
    values: dict[str, Any] = {}
    for raw in spec.split(","):
        token = raw.strip()
        if not token:
            continue
        key, eq, value = token.partition("=")
        key, value = key.strip(), value.strip()
        if not eq:
            raise SpecError(f"{token!r}: expected key=value")
        if key not in _UPLINK_KEYS:
            raise SpecError(f"{token!r}: unknown uplink parameter {key!r} "
                            f"(expected {', '.join(sorted(_UPLINK_KEYS))})")
        if key in values:
            raise SpecError(f"{token!r}: {key} given more than once")
        if key == "ip":
            values["ip"] = tuple(value.split())
        elif key == "mtu":
            if not value.isdigit():
                raise SpecError(f"{token!r}: mtu must be a number")
            values["mtu"] = int(value)
        elif value:
            values[key] = value
    if "tap" not in values:
        raise SpecError("missing tap= (the host's TAP device, e.g. tap=pyxtap0)")
    return UplinkSpec(**values)


# --------------------------------------------------------------------------
# CPU lists
# --------------------------------------------------------------------------

_RANGE_RE = re.compile(r"^(\^?)(\d+)(?:-(\d+))?$")


def parse_cpulist(spec: str | Iterable[int], nr_cpus: int | None = None) -> tuple[int, ...] | None:
    """Parse xl's ``cpus=`` syntax into a sorted tuple of CPU numbers.

    ``"all"`` returns None ("no pinning").  Tokens apply left to right, ``^``
    removes CPUs; a list made only of exclusions (``"^1"``) starts from all
    CPUs, which is what a user writing it means.  With ``nr_cpus`` every CPU
    must exist.  NUMA ``node:``/``nodes:`` forms are rejected: pyxen's
    platform has a single node.
    """
    if isinstance(spec, str):
        return _parse_cpu_string(spec, nr_cpus)
    cpus: set[int] = set()
    for cpu in spec:
        if type(cpu) is not int or cpu < 0:
            raise SpecError(f"bad CPU {cpu!r} in list (expected a non-negative integer)")
        cpus.add(cpu)
    return _checked_cpus(cpus, nr_cpus, str(list(spec)))


def _parse_cpu_string(spec: str, nr_cpus: int | None) -> tuple[int, ...] | None:
    tokens = [t.strip() for t in spec.split(",")]
    if tokens == ["all"]:
        return None
    only_exclusions = all(t.startswith("^") for t in tokens)
    if (only_exclusions or "all" in tokens) and nr_cpus is None:
        raise SpecError(f"{spec!r}: 'all' and exclusions need the number of pCPUs")
    cpus: set[int] = set(range(nr_cpus or 0)) if only_exclusions else set()
    for token in tokens:
        if token == "all":
            cpus |= set(range(nr_cpus or 0))
            continue
        if token.lstrip("^").startswith(("node:", "nodes:")):
            raise SpecError(f"{token!r}: NUMA node lists are not supported by pyxen")
        m = _RANGE_RE.match(token)
        if not m:
            raise SpecError(f"bad CPU range {token!r} (expected N, N-M, ^N or all)")
        lo, hi = int(m.group(2)), int(m.group(3) or m.group(2))
        if hi < lo:
            raise SpecError(f"bad CPU range {token!r}: end before start")
        if nr_cpus is not None and hi >= nr_cpus:
            raise SpecError(f"CPU {hi} in {token!r} does not exist (the platform has {nr_cpus} pCPUs)")
        if m.group(1):
            cpus -= set(range(lo, hi + 1))
        else:
            cpus |= set(range(lo, hi + 1))
    return _checked_cpus(cpus, nr_cpus, spec)


def _checked_cpus(cpus: set[int], nr_cpus: int | None, spec: str) -> tuple[int, ...]:
    if not cpus:
        raise SpecError(f"{spec!r} selects no CPU")
    if nr_cpus is not None and max(cpus) >= nr_cpus:
        raise SpecError(f"CPU {max(cpus)} does not exist (the platform has {nr_cpus} pCPUs)")
    return tuple(sorted(cpus))
