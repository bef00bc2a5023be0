"""Topology files: what machine pyxen emulates and which domains it boots.

A topology is TOML.  ``[platform]`` describes the machine, ``[dom0]`` sizes
Domain-0, and each ``[domain.NAME]`` table is one more domain, taking the keys
of xl.cfg(5) (``memory``, ``vcpus``, ``cpus``, ``weight``, ``on_crash``, ``disk``,
``vif`` ...) plus pyxen's ``workload`` and ``restart_limit``.  ``pyxen create CFG``
reads the same keys at the top level of a file, plus ``name``.

Nothing may start from a file that is wrong, and the user must be able to fix
it without guessing, so every problem raises one ``TopologyError`` whose text
is ``<file>:<line>: <key>: <message>``.  tomllib does not report where keys
are, so a small locator scans the source for table headers and ``key =``
lines; when it cannot place a key it falls back to the enclosing table's line.

Validation is table-driven: each key has a TOML type, a default and a check
function (see ``_DOMAIN_KEYS``), so adding a key is one line, not a new branch.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import stat
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

from domains.dom0 import topocheck
from domains.dom0.xlspec import (
    DOM0_NAME,
    DiskSpec,
    SpecError,
    UplinkSpec,
    VifSpec,
    parse_cpulist,
    parse_disk,
    parse_uplink,
    parse_vif,
)
from hypervisor.public.pyxen.platform import Platform

__all__ = [
    "DEFAULT_WEIGHT",
    "DOM0_NAME",
    "DomainConfig",
    "Platform",
    "Topology",
    "TopologyError",
    "load_domain_config",
    "load_topology",
]


# credit2's default weight (CSCHED2_DEFAULT_WEIGHT): what a domain gets
# without a `weight` key, and what the toolstack need not set.
DEFAULT_WEIGHT = 256


class TopologyError(Exception):
    """A topology or domain config file is wrong; ``str()`` is one ``file:line: key: message`` line.

    ``line`` is 0 when the file could not be read at all; ``key`` is "" for
    TOML syntax errors (the key part is then left out of the text).
    """

    def __init__(self, path: str | os.PathLike[str], line: int, key: str, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.key = key
        self.message = " ".join(str(message).split())  # one line, always
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.key:
            return f"{self.path}:{self.line}: {self.key}: {self.message}"
        return f"{self.path}:{self.line}: {self.message}"


# --------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class DomainConfig:
    """One domain's validated configuration (xl.cfg's keys, normalised).

    ``cpus`` None means no pinning; ``restart_limit`` is (N, T): at most N
    restarts in T seconds; ``restart_backoff`` is (first, cap): the wait
    before a second restart within T, doubling up to cap ((0, 0): none).  ``source``/``line`` say where it was defined so
    later errors (at create time) can still point at the file.
    """

    name: str
    memory: int
    maxmem: int
    vcpus: int
    maxvcpus: int
    cpus: tuple[int, ...] | None
    on_poweroff: str
    on_reboot: str
    on_crash: str
    on_watchdog: str
    driver_domain: bool
    workload: str
    extra: str
    disks: tuple[DiskSpec, ...]
    vifs: tuple[VifSpec, ...]
    restart_limit: tuple[int, float]
    restart_backoff: tuple[float, float]
    source: str
    line: int
    uplinks: tuple[UplinkSpec, ...] = ()  # a net driver domain's bridges to host TAPs
    weight: int = DEFAULT_WEIGHT  # credit2 scheduling weight (xl.cfg `weight`)
    boot_timeout: float = 30.0  # seconds its kernel has to report ready
    max_grant_window_memory: int = 64  # MiB of grant windows it may hold
    cap: int = 0  # credit2 cap, percent of one pCPU, 0 for none (xl.cfg `cap`)
    # Host paths visible inside the domain's sandbox (pyxen's own `bind`
    # key): (path, writable).
    binds: tuple[tuple[str, bool], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain, msgpack-able form (lists, dicts, scalars) for the toolstack's messages."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["cpus"] = None if self.cpus is None else list(self.cpus)
        d["disks"] = [disk.to_dict() for disk in self.disks]
        d["vifs"] = [vif.to_dict() for vif in self.vifs]
        d["uplinks"] = [uplink.to_dict() for uplink in self.uplinks]
        d["restart_limit"] = list(self.restart_limit)
        d["restart_backoff"] = list(self.restart_backoff)
        d["binds"] = [[path, writable] for path, writable in self.binds]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DomainConfig:
        """Inverse of ``to_dict``; checks the shape, since the dict came from another process."""
        names = [f.name for f in fields(cls)]
        if not isinstance(data, Mapping) or set(data) != set(names):
            got = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"DomainConfig.from_dict: expected keys {sorted(names)}, got {got}")
        d = dict(data)
        try:
            d["cpus"] = None if d["cpus"] is None else tuple(int(c) for c in d["cpus"])
            d["disks"] = tuple(DiskSpec.from_dict(x) for x in d["disks"])
            d["vifs"] = tuple(VifSpec.from_dict(x) for x in d["vifs"])
            d["uplinks"] = tuple(UplinkSpec.from_dict(x) for x in d["uplinks"])
            n, t = d["restart_limit"]
            d["restart_limit"] = (int(n), float(t))
            first, cap = d["restart_backoff"]
            d["restart_backoff"] = (float(first), float(cap))
            d["binds"] = tuple((str(path), bool(rw)) for path, rw in d["binds"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"DomainConfig.from_dict: {e}") from None
        for key in ("memory", "maxmem", "vcpus", "maxvcpus", "line", "weight", "cap",
                    "max_grant_window_memory"):
            if type(d[key]) is not int:
                raise ValueError(f"DomainConfig.from_dict: {key} must be an int")
        if type(d["boot_timeout"]) not in (int, float):
            raise ValueError("DomainConfig.from_dict: boot_timeout must be a number")
        d["boot_timeout"] = float(d["boot_timeout"])
        for key in ("name", "on_poweroff", "on_reboot", "on_crash", "on_watchdog", "workload", "extra", "source"):
            if not isinstance(d[key], str):
                raise ValueError(f"DomainConfig.from_dict: {key} must be a str")
        if not isinstance(d["driver_domain"], bool):
            raise ValueError("DomainConfig.from_dict: driver_domain must be a bool")
        return cls(**d)


@dataclass(frozen=True)
class Topology:
    """A whole system: the platform, Domain-0, and the other domains in boot order."""

    path: Path
    platform: Platform
    dom0: DomainConfig
    domains: tuple[DomainConfig, ...]

    @property
    def all_domains(self) -> tuple[DomainConfig, ...]:
        return (self.dom0, *self.domains)

    def domain(self, name: str) -> DomainConfig:
        for d in self.all_domains:
            if d.name == name:
                return d
        raise KeyError(name)


# --------------------------------------------------------------------------
# Locating keys in the source
# --------------------------------------------------------------------------

_KEYPART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED = rf"{_KEYPART}(?:\s*\.\s*{_KEYPART})*"
_HEADER_RE = re.compile(rf"^\s*\[\[?\s*({_DOTTED})\s*\]\]?")
_KEYVAL_RE = re.compile(rf"^\s*({_DOTTED})\s*=")
_PART_RE = re.compile(_KEYPART)
_BARE_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def _split_key(dotted: str) -> tuple[str, ...]:
    parts = []
    for m in _PART_RE.finditer(dotted):
        tok = m.group(0)
        if tok[0] == '"':
            parts.append(tomllib.loads(f"k = {tok}")["k"])  # TOML's own escape rules
        elif tok[0] == "'":
            parts.append(tok[1:-1])
        else:
            parts.append(tok)
    return tuple(parts)


def dotted_key(parts: Iterable[str]) -> str:
    """Render key parts as TOML would accept them: ``domain."my.vm".memory``."""
    return ".".join(p if _BARE_RE.match(p) else json.dumps(p) for p in parts)


def _scan_value(line: str, i: int, depth: int, ml: str | None) -> tuple[int, str | None]:
    """Skip a value, tracking open brackets and multi-line strings across lines."""
    n = len(line)
    while i < n:
        if ml:
            j = line.find(ml, i)
            if j < 0:
                return depth, ml
            i, ml = j + 3, None
            continue
        c = line[i]
        if c == "#":
            break
        if line.startswith('"""', i) or line.startswith("'''", i):
            ml, i = line[i : i + 3], i + 3
        elif c == '"':
            i += 1
            while i < n and line[i] != '"':
                i += 2 if line[i] == "\\" else 1
            i += 1
        elif c == "'":
            j = line.find("'", i + 1)
            i = n if j < 0 else j + 1
        else:
            depth += c in "[{"
            depth -= c in "]}"
            i += 1
    return max(depth, 0), ml


class _Locator:
    """Maps dotted keys to the line that defines them (best effort, never fails)."""

    def __init__(self, source: str) -> None:
        self.lines = source.splitlines()
        self.positions: dict[tuple[str, ...], int] = {}
        self.headers: set[int] = set()
        table: tuple[str, ...] = ()
        depth, ml = 0, None
        for lineno, line in enumerate(self.lines, 1):
            if depth or ml:
                depth, ml = _scan_value(line, 0, depth, ml)
                continue
            if m := _HEADER_RE.match(line):
                table = _split_key(m.group(1))
                self.positions.setdefault(table, lineno)
                self.headers.add(lineno)
            elif m := _KEYVAL_RE.match(line):
                parts = table + _split_key(m.group(1))
                for k in range(len(table) + 1, len(parts) + 1):
                    self.positions.setdefault(parts[:k], lineno)
                depth, ml = _scan_value(line, m.end(), 0, None)

    def line_of(self, parts: tuple[str, ...]) -> int:
        for k in range(len(parts), 0, -1):
            if parts[:k] in self.positions:
                return self.positions[parts[:k]]
        return 1

    def line_of_element(self, parts: tuple[str, ...], text: str) -> int:
        """The line of one array element (e.g. a disk spec), else the key's line."""
        start = self.line_of(parts)
        for lineno in range(start, len(self.lines) + 1):
            if lineno != start and lineno in self.headers:
                break
            if text and text in self.lines[lineno - 1]:
                return lineno
        return start


class _Source:
    """The file being loaded: its path and key locator, and a way to make errors."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.locator = _Locator(text)

    def error(self, parts: tuple[str, ...], message: str, element: str | None = None) -> TopologyError:
        if element is not None:
            line = self.locator.line_of_element(parts, element)
        else:
            line = self.locator.line_of(parts)
        return TopologyError(self.path, line, dotted_key(parts), message)


MAX_FILE = 1 << 20  # a topology is text a person wrote


def _read(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any], _Source]:
    path = Path(path)
    try:
        # Dom0 reads what `pyxen create` names: never block on a FIFO or
        # read a device without end.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise TopologyError(path, 0, "", "not a regular file")
            raw = f.read(MAX_FILE + 1)
    except OSError as e:
        raise TopologyError(path, 0, "", f"cannot read file: {e.strerror or e}") from None
    if len(raw) > MAX_FILE:
        raise TopologyError(path, 0, "", f"file is larger than {MAX_FILE} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise TopologyError(path, line, "", "file is not valid UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        line = len(text.splitlines()) or 1
        if m := re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg):
            line = int(m.group(1))
            msg = f"{msg[: m.start()]} (column {m.group(2)})"
        elif m := re.search(r"\s*\(at end of document\)$", msg):
            msg = f"{msg[: m.start()]} (at end of file)"
        raise TopologyError(path, line, "", f"TOML syntax error: {msg}") from None
    return path, data, _Source(path, text)


# --------------------------------------------------------------------------
# The key table
# --------------------------------------------------------------------------


class _Invalid(Exception):
    """A key's value is wrong; ``element`` is the array item to point at, if any."""

    def __init__(self, message: str, element: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.element = element


@dataclass(frozen=True)
class _Ctx:
    nr_cpus: int | None


@dataclass(frozen=True)
class _Derived:
    """A default computed from other (already final) values, e.g. maxmem = memory."""

    compute: Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class _Key:
    types: tuple[type, ...]
    default: Any
    check: Callable[[Any, _Ctx], Any]
    field: str = ""


_TOML_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"),
    (list, "array"), (dict, "table"), (datetime, "datetime"), (date, "date"), (time, "time"),
)


def _toml_type(value: Any) -> str:
    return next((name for t, name in _TOML_TYPES if isinstance(value, t)), type(value).__name__)


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    # TOML booleans are Python ints: never let `memory = true` through as 1.
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def _describe(types: tuple[type, ...]) -> str:
    return " or ".join(name for t, name in _TOML_TYPES if t in types)


def _int_range(lo: int, hi: int | None = None, unit: str = "") -> Callable[[Any, _Ctx], int]:
    def check(v: int, ctx: _Ctx) -> int:
        if v < lo or (hi is not None and v > hi):
            bound = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
            raise _Invalid(f"must be {bound}{unit}, got {v}")
        return v
    return check


def _plain(v: Any, ctx: _Ctx) -> Any:
    return v


_ACTIONS = ("destroy", "restart", "preserve", "rename-restart")
_UNSUPPORTED_ACTIONS = ("coredump-destroy", "coredump-restart", "soft-reset")


def _action(v: str, ctx: _Ctx) -> str:
    if v in _UNSUPPORTED_ACTIONS:
        raise _Invalid(f"action {v!r} is not supported by pyxen (use one of {', '.join(_ACTIONS)})")
    if v not in _ACTIONS:
        raise _Invalid(f"expected one of {', '.join(_ACTIONS)}, got {v!r}")
    return v


def _cpus(v: str | list[Any], ctx: _Ctx) -> tuple[int, ...] | None:
    try:
        return parse_cpulist(v, ctx.nr_cpus)
    except SpecError as e:
        raise _Invalid(e.message) from None


def _spec_list(parse: Callable[[str], Any], what: str) -> Callable[[list[Any], _Ctx], tuple[Any, ...]]:
    def check(v: list[Any], ctx: _Ctx) -> tuple[Any, ...]:
        out = []
        for i, item in enumerate(v):
            if not isinstance(item, str):
                raise _Invalid(f"{what}[{i}]: expected string, got {_toml_type(item)}")
            try:
                out.append(parse(item))
            except SpecError as e:
                raise _Invalid(f"{what}[{i}]: {e.message}", element=item) from None
        return tuple(out)
    return check


_WORKLOAD_RE = re.compile(r"^(?:idle|demo|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*)$")


def _workload(v: str, ctx: _Ctx) -> str:
    if not _WORKLOAD_RE.match(v):
        raise _Invalid(f"expected 'idle', 'demo' or 'package.module:function', got {v!r}")
    return v


def _restart_limit(v: list[Any], ctx: _Ctx) -> tuple[int, float]:
    if (
        len(v) != 2
        or type(v[0]) is not int
        or isinstance(v[1], bool)
        or not isinstance(v[1], (int, float))
    ):
        raise _Invalid(f"expected [restarts, seconds] such as [5, 60], got {v!r}")
    if v[0] < 0 or v[1] <= 0:
        raise _Invalid(f"restarts must be >= 0 and seconds > 0, got {v!r}")
    return (v[0], float(v[1]))


def _seconds(lo: float, hi: float) -> Callable[[Any, _Ctx], float]:
    def check(v: float, ctx: _Ctx) -> float:
        if not lo < v <= hi:
            raise _Invalid(f"must be more than {lo:g} and at most {hi:g} seconds, got {v}")
        return float(v)
    return check


def _restart_backoff(v: list[Any], ctx: _Ctx) -> tuple[float, float]:
    if len(v) != 2 or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in v):
        raise _Invalid(f"expected [first, cap] in seconds such as [0.25, 8], got {v!r}")
    if v[0] < 0 or v[1] < v[0]:
        raise _Invalid(f"need 0 <= first <= cap, got {v!r}")
    return (float(v[0]), float(v[1]))


def _binds(v: list[Any], ctx: _Ctx) -> tuple[tuple[str, bool], ...]:
    """`bind = ["/abs/path", "/other:rw"]`: read-only unless `:rw`."""
    out = []
    for item in v:
        if not isinstance(item, str):
            raise _Invalid(f"expected a path string, got {item!r}")
        path, writable = item, False
        for suffix, rw in ((":rw", True), (":ro", False)):
            if item.endswith(suffix):
                path, writable = item[: -len(suffix)], rw
        if not path.startswith("/") or "\0" in path:
            raise _Invalid(f"expected an absolute path, got {item!r}", element=item)
        out.append((os.path.normpath(path), writable))
    return tuple(out)


MAX_VCPUS = 128  # Xen on ARM's per-domain limit (GICv3)

_DOMAIN_KEYS: dict[str, _Key] = {
    "memory": _Key((int,), 128, _int_range(16, unit=" MiB")),
    "maxmem": _Key((int,), _Derived(lambda v: v["memory"]), _int_range(16, unit=" MiB")),
    "vcpus": _Key((int,), 1, _int_range(1, MAX_VCPUS)),
    "maxvcpus": _Key((int,), _Derived(lambda v: v["vcpus"]), _int_range(1, MAX_VCPUS)),
    "cpus": _Key((str, list), None, _cpus),
    "on_poweroff": _Key((str,), "destroy", _action),
    "on_reboot": _Key((str,), "restart", _action),
    # A driver domain that dies should come back: that is the point of one.
    "on_crash": _Key((str,), _Derived(lambda v: "restart" if v["driver_domain"] else "destroy"), _action),
    "on_watchdog": _Key((str,), "destroy", _action),
    "driver_domain": _Key((bool,), False, _plain),
    "disk": _Key((list,), (), _spec_list(parse_disk, "disk"), field="disks"),
    "vif": _Key((list,), (), _spec_list(parse_vif, "vif"), field="vifs"),
    "uplink": _Key((list,), (), _spec_list(parse_uplink, "uplink"), field="uplinks"),
    "extra": _Key((str,), "", _plain),
    "workload": _Key((str,), "idle", _workload),
    "restart_limit": _Key((list,), (5, 60.0), _restart_limit),
    "restart_backoff": _Key((list,), (0.25, 8.0), _restart_backoff),
    # credit2's relative CPU share (xl.cfg(5) weight=WEIGHT); the hypercall
    # carries it as a uint16_t, and 0 there means "unchanged", not a weight.
    "weight": _Key((int,), DEFAULT_WEIGHT, _int_range(1, 65535)),
    # Seconds the domain's kernel has to report ready after its process
    # starts; past it the hypervisor destroys the domain (createdomain fails
    # with ETIMEDOUT).
    "boot_timeout": _Key((int, float), 30.0, _seconds(0, 86400)),
    # MiB of grant windows (the pages it shares with its backends) the domain
    # may hold, charged to it as Xen charges grant frames; a backend restart
    # holds two windows for a moment. Default: max(64, memory).
    "max_grant_window_memory": _Key((int,), _Derived(lambda v: max(64, v["memory"])),
                                    _int_range(1, unit=" MiB")),
    # credit2's cap (xl.cfg(5) cap=N): at most N% of one pCPU for the whole
    # domain (200: two pCPUs' worth), 0 for none; its cgroup's CPU quota.
    "cap": _Key((int,), 0, _int_range(0, 100 * 128)),
    # Host paths a sandboxed domain may see (development and tests: a
    # workload's FIFOs and files), at the same path, read-only unless ":rw".
    "bind": _Key((list,), (), _binds, field="binds"),
}
_DOM0_KEYS: dict[str, _Key] = {
    "memory": _Key((int,), 512, _int_range(16, unit=" MiB")),
    **{k: _DOMAIN_KEYS[k] for k in ("vcpus", "cpus", "extra", "weight")},
}
_PLATFORM_KEYS: dict[str, _Key] = {
    "name": _Key((str,), "virt", _plain),
    "pcpus": _Key((int,), _Derived(lambda v: os.cpu_count() or 1), _int_range(1)),
    "memory": _Key((int,), 4096, _int_range(64, unit=" MiB")),
}
_DOMAIN_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def _unknown_key(key: str, keys: Iterable[str], where: str) -> str:
    if where == "[dom0]" and key in _DOMAIN_KEYS:
        return f"key {key!r} is not allowed in [dom0] (only {', '.join(sorted(keys))})"
    close = difflib.get_close_matches(key, list(keys), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r} in {where}{hint}"


def _apply_keys(
    src: _Source, prefix: tuple[str, ...], table: Mapping[str, Any], keys: Mapping[str, _Key],
    ctx: _Ctx, where: str, skip: Iterable[str] = (),
) -> dict[str, Any]:
    """Check every key of ``table`` against ``keys``; return field -> value with defaults filled."""
    values: dict[str, Any] = {}
    for key, raw in table.items():
        if key in skip:
            continue
        spec = keys.get(key)
        if spec is None:
            raise src.error(prefix + (key,), _unknown_key(key, keys, where))
        if not _type_ok(raw, spec.types):
            raise src.error(prefix + (key,), f"expected {_describe(spec.types)}, got {_toml_type(raw)}")
        try:
            values[spec.field or key] = spec.check(raw, ctx)
        except _Invalid as e:
            raise src.error(prefix + (key,), e.message, e.element) from None
    derived = []
    for key, spec in keys.items():
        name = spec.field or key
        if name not in values:
            if isinstance(spec.default, _Derived):
                derived.append((name, spec.default))
            else:
                values[name] = spec.default
    for name, d in derived:
        values[name] = d.compute(values)
    return values


def _build_domain(
    src: _Source, prefix: tuple[str, ...], name: str, table: Mapping[str, Any],
    keys: Mapping[str, _Key], ctx: _Ctx, where: str, skip: Iterable[str] = (),
) -> DomainConfig:
    values = _apply_keys(src, prefix, table, keys, ctx, where, skip)
    # Keys not allowed here (e.g. on_crash in [dom0]) still need a value.
    for key, spec in _DOMAIN_KEYS.items():
        values.setdefault(spec.field or key, spec.default)
    for name_, d in list(values.items()):
        if isinstance(d, _Derived):
            values[name_] = d.compute(values)
    if values["maxmem"] < values["memory"]:
        raise src.error(prefix + ("maxmem",), f"maxmem {values['maxmem']} is below memory {values['memory']}")
    if values["maxvcpus"] < values["vcpus"]:
        raise src.error(prefix + ("maxvcpus",), f"maxvcpus {values['maxvcpus']} is below vcpus {values['vcpus']}")
    if values["uplinks"] and not values["driver_domain"]:
        raise src.error(prefix + ("uplink",), "only a driver domain (driver_domain = true) "
                        "runs bridges to uplink")
    taps = [u.tap for u in values["uplinks"]]
    if len(set(taps)) != len(taps):
        raise src.error(prefix + ("uplink",), f"two uplinks to TAP {max(taps, key=taps.count)!r}")
    line = src.locator.line_of(prefix) if prefix else 1
    return DomainConfig(name=name, source=str(src.path), line=line, **values)


def _check_name(src: _Source, parts: tuple[str, ...], name: str) -> None:
    if name == DOM0_NAME:
        raise src.error(parts, f"the name {DOM0_NAME!r} is reserved for [dom0]")
    if not _DOMAIN_NAME_RE.match(name):
        raise src.error(parts, f"bad domain name {name!r} (use letters, digits, '_', '.' and '-')")


def _devices(dom: DomainConfig) -> Iterable[tuple[str, DiskSpec | VifSpec, int]]:
    for i, disk in enumerate(dom.disks):
        yield "disk", disk, i
    for i, vif in enumerate(dom.vifs):
        yield "vif", vif, i


def _table(src: _Source, parts: tuple[str, ...], value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise src.error(parts, f"expected table, got {_toml_type(value)}")
    return value


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------


def load_topology(path: str | os.PathLike[str], disk_dir: Path | None = None) -> Topology:
    """Load and validate a topology file; domains come back in boot order.

    Boot order is driver domains first, then the rest, each group in file
    order, so a guest's backends exist before its devices are connected.
    With ``disk_dir`` (the run directory's disks/), images with relative
    targets are checked too (that they exist or can be created).
    """
    path, data, src = _read(path)
    sections = ("platform", "dom0", "domain")
    for key in data:
        if key not in sections:
            raise src.error((key,), _unknown_key(key, sections, "the file"))

    pv = _apply_keys(src, ("platform",), _table(src, ("platform",), data.get("platform", {})),
                     _PLATFORM_KEYS, _Ctx(None), "[platform]")
    platform = Platform(**pv)
    ctx = _Ctx(platform.pcpus)
    dom0 = _build_domain(src, ("dom0",), DOM0_NAME, _table(src, ("dom0",), data.get("dom0", {})),
                         _DOM0_KEYS, ctx, "[dom0]")

    in_file: list[DomainConfig] = []
    tables = _table(src, ("domain",), data.get("domain", {}))
    for name, table in tables.items():
        parts = ("domain", name)
        _check_name(src, parts, name)
        in_file.append(_build_domain(src, parts, name, _table(src, parts, table), _DOMAIN_KEYS, ctx,
                                     f"[{dotted_key(parts)}]"))

    in_file = _default_vif_backends(src, in_file, tables)
    _check_backends(src, in_file, tables)
    _check_uplinks(src, in_file)
    _check_devices(src, in_file, tables, disk_dir)
    _check_memory(src, platform, dom0, in_file)
    boot = [d for d in in_file if d.driver_domain] + [d for d in in_file if not d.driver_domain]
    return Topology(path=path, platform=platform, dom0=dom0, domains=tuple(boot))


def _default_vif_backends(src: _Source, in_file: list[DomainConfig],
                          tables: Mapping[str, Any]) -> list[DomainConfig]:
    """A vif that names no backend goes to the one net driver domain."""
    candidates = topocheck.net_backends(in_file)
    out = []
    for dom in in_file:
        vifs = list(dom.vifs)
        for i, vif in enumerate(vifs):
            element = tables[dom.name]["vif"][i]
            if topocheck.names_backend(element):
                continue
            try:
                vifs[i] = replace(vif, backend=topocheck.default_vif_backend(
                    [c for c in candidates if c != dom.name]))
            except ValueError as exc:
                raise src.error(("domain", dom.name, "vif"), f"vif[{i}]: {exc}", element) from None
        out.append(replace(dom, vifs=tuple(vifs)) if vifs != list(dom.vifs) else dom)
    return out


def _check_devices(src: _Source, in_file: list[DomainConfig], tables: Mapping[str, Any],
                   disk_dir: Path | None) -> None:
    """What Xen's tools refuse across devices, and what would fail only once
    domains run (topocheck.py): the first problem, at its entry."""
    problems = [*topocheck.disk_problems(in_file, disk_dir), *topocheck.vif_problems(in_file)]
    for dom in in_file:
        problem = topocheck.workload_problem(dom.workload)
        if problem:
            problems.append(topocheck.Problem(dom.name, "workload", None, problem))
    if problems:
        first = problems[0]
        element = None if first.index is None else tables[first.domain][first.key][first.index]
        raise src.error(("domain", first.domain, first.key), first.message, element)


def _check_uplinks(src: _Source, in_file: list[DomainConfig]) -> None:
    """A host TAP device has one name: two driver domains cannot both own it."""
    owner: dict[str, str] = {}
    for dom in in_file:
        for uplink in dom.uplinks:
            if uplink.tap in owner:
                raise src.error(("domain", dom.name, "uplink"),
                                f"TAP {uplink.tap!r} is the uplink of "
                                f"[domain.{owner[uplink.tap]}] already")
            owner[uplink.tap] = dom.name


def _check_backends(src: _Source, in_file: list[DomainConfig], tables: Mapping[str, Any]) -> None:
    """Every device's backend must be Domain-0 or a driver domain that boots first."""
    by_name = {d.name: d for d in in_file}
    order = {d.name: i for i, d in enumerate(in_file)}
    for dom in in_file:
        for kind, dev, i in _devices(dom):
            b = dev.backend
            key = ("domain", dom.name, kind)
            element = tables[dom.name][kind][i]  # as written, to find its line
            if b == DOM0_NAME:
                if kind == "vif":
                    raise src.error(key, f"vif[{i}]: {topocheck.dom0_vif_problem(dev)}", element)
                continue
            if b == dom.name:
                raise src.error(key, f"{kind}[{i}]: a domain cannot be its own backend", element)
            if b not in by_name:
                raise src.error(key, f"{kind}[{i}]: unknown backend domain {b!r}", element)
            if not by_name[b].driver_domain:
                raise src.error(key, f"{kind}[{i}]: backend domain {b!r} is not a driver domain "
                                     f"(set driver_domain = true in [domain.{b}])", element)
            if dom.driver_domain and order[b] > order[dom.name]:
                raise src.error(key, f"{kind}[{i}]: backend domain {b!r} must come before "
                                     f"{dom.name!r} in the file (driver domains boot in file order)", element)


def _check_memory(src: _Source, platform: Platform, dom0: DomainConfig, in_file: list[DomainConfig]) -> None:
    total = dom0.memory
    if total > platform.memory:
        raise src.error(("dom0", "memory"), f"Domain-0's {total} MiB exceeds the platform's {platform.memory} MiB")
    for dom in in_file:
        total += dom.memory
        if total > platform.memory:
            raise src.error(("domain", dom.name, "memory"),
                            f"{dom.memory} MiB brings the total to {total} MiB "
                            f"(Domain-0 and every domain so far), over the platform's {platform.memory} MiB")


def load_domain_config(
    path: str | os.PathLike[str],
    platform: Platform | None = None,
    known_backends: Iterable[str] = frozenset({DOM0_NAME}),
) -> DomainConfig:
    """Load a ``pyxen create`` file: xl.cfg keys at the top level, plus ``name``.

    ``known_backends`` are the domains the toolstack can attach devices to
    (Domain-0 and the running driver domains).  With ``platform``, CPU numbers
    and memory are checked against the machine; free memory is the
    toolstack's business, since it changes at run time.
    """
    path, data, src = _read(path)
    ctx = _Ctx(platform.pcpus if platform else None)
    if "name" not in data:
        raise TopologyError(path, 1, "name", "missing required key (the domain's name)")
    name = data["name"]
    if not isinstance(name, str):
        raise src.error(("name",), f"expected string, got {_toml_type(name)}")
    _check_name(src, ("name",), name)
    dom = _build_domain(src, (), name, data, _DOMAIN_KEYS, ctx, "the file", skip=("name",))
    backends = set(known_backends)
    vifs = list(dom.vifs)
    for kind, dev, i in _devices(dom):
        element = data[kind][i]
        if kind == "vif" and not topocheck.names_backend(element):
            try:  # the one driver domain running, as load_topology does
                dev = vifs[i] = replace(dev, backend=topocheck.default_vif_backend(
                    sorted(backends - {DOM0_NAME, name})))
            except ValueError as exc:
                raise src.error((kind,), f"vif[{i}]: {exc}", element) from None
        if kind == "vif" and dev.backend == DOM0_NAME:
            raise src.error((kind,), f"vif[{i}]: {topocheck.dom0_vif_problem(dev)}", element)
        if dev.backend == name:
            raise src.error((kind,), f"{kind}[{i}]: a domain cannot be its own backend", element)
        if dev.backend not in backends:
            raise src.error((kind,), f"{kind}[{i}]: unknown backend domain {dev.backend!r}", element)
    dom = replace(dom, vifs=tuple(vifs))
    problems = [*topocheck.disk_problems([dom], None), *topocheck.vif_problems([dom])]
    if problems:
        first = problems[0]
        raise src.error((first.key,), first.message, data[first.key][first.index])
    problem = topocheck.workload_problem(dom.workload)
    if problem:
        raise src.error(("workload",), problem)
    if platform is not None and dom.memory > platform.memory:
        raise src.error(("memory",), f"{dom.memory} MiB exceeds the platform's {platform.memory} MiB")
    return dom
