"""The control socket: how `pyxen` (xl) talks to Dom0's toolstack.

ZeroMQ ROUTER at <run-dir>/control.sock; requests and replies are msgpack maps:
  request {"cmd": "list", "args": {...}}
  reply   {"ok": true, "result": ...} | {"ok": false, "error": "..."}

Only processes of the uid that started pyxen may connect (ZMQ_IPC_FILTER_UID),
a request is at most MAX_REQUEST bytes (ZMQ_MAXMSGSIZE), and each command's
arguments are checked against its schema (SCHEMAS: the type of every
argument, bool never taken for an int) before the toolstack sees them.
Every request gets exactly one reply: a user mistake (unknown domain, bad
config) and a failure of the toolstack alike are error replies, never a
crash of the control loop. `create`, `wait` and the detaches are answered
later (`respond`), when the domain has booted, reached the state or let go
of the device: the loop serves other requests meanwhile.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from domains.dom0 import topocheck
from domains.dom0.devices import vbd_frontend_path, vif_frontend_path
from domains.dom0.toolstack import Managed, Toolstack
from domains.dom0.topology import TopologyError, load_domain_config
from domains.dom0.xlspec import SpecError, parse_cpulist, parse_disk, parse_vif
from hypervisor.public.errno import EBUSY, XenError
from hypervisor.public.pyxen.text import clean_text

#: The largest request the control socket takes (ZMQ_MAXMSGSIZE): a path
#: or a device spec, never more.
MAX_REQUEST = 64 * 1024

Reply = dict
Respond = Callable[[Reply], None]


class BadRequest(Exception):
    """A request that does not fit its command's schema."""


@dataclass(frozen=True)
class Arg:
    """One argument of a command: the types it may have, and a check."""

    kinds: tuple[type, ...]
    required: bool = False
    check: Callable[[Any], str | None] | None = None  # returns what is wrong


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _text(limit: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, str):
            if not 0 < len(value) <= limit:
                return f"must be 1 to {limit} characters"
            if "\0" in value:
                return "must not contain NUL"
        return None
    return check


def _range(low: float, high: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, (int, float)):
            if isinstance(value, float) and not math.isfinite(value):
                return "must be a finite number"
            if not low <= value <= high:
                return f"must be {low:g} to {high:g}"
        return None
    return check


def _both(*checks: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        for one in checks:
            problem = one(value)
            if problem:
                return problem
        return None
    return check


_DOMID_MAX = 0x7FEF  # DOMID_FIRST_RESERVED - 1
_domain_check = _both(_text(128), _range(0, _DOMID_MAX))
DOMAIN = Arg((str, int), True, _domain_check)
OPT_DOMAIN = Arg((str, int), False, _domain_check)

#: Seconds an attach waits for its device to connect (xl's hotplug wait).
ATTACH_TIMEOUT = 10.0

SCHEMAS: dict[str, dict[str, Arg]] = {
    "list": {"domain": OPT_DOMAIN},
    "info": {},
    "create": {"path": Arg((str,), True, _text(4096))},
    "destroy": {"domain": DOMAIN},
    "shutdown": {"domain": DOMAIN, "force": Arg((bool,))},
    "reboot": {"domain": DOMAIN},
    "restart": {"domain": DOMAIN},
    "pause": {"domain": DOMAIN},
    "unpause": {"domain": DOMAIN},
    "vcpu-list": {"domain": OPT_DOMAIN},
    "vcpu-pin": {"domain": DOMAIN,
                 "vcpu": Arg((str, int), True, _both(_text(16), _range(0, 127))),
                 "cpus": Arg((str, int), True, _both(_text(256), _range(0, 4095)))},
    "sched-credit2": {"domain": OPT_DOMAIN,
                      "weight": Arg((str, int), False,
                                    _both(_text(16), _range(-(1 << 31), 1 << 31))),
                      "cap": Arg((str, int), False,
                                 _both(_text(16), _range(-(1 << 31), 1 << 31)))},
    "block-attach": {"domain": DOMAIN, "spec": Arg((str,), True, _text(4096)),
                     "timeout": Arg((int, float), False, _range(0, 600))},
    "block-detach": {"domain": DOMAIN,
                     "vdev": Arg((str, int), True, _both(_text(64), _range(0, 1 << 32)))},
    "block-list": {"domain": DOMAIN},
    "network-attach": {"domain": DOMAIN, "spec": Arg((str,), True, _text(4096)),
                       "timeout": Arg((int, float), False, _range(0, 600))},
    "network-detach": {"domain": DOMAIN,
                       "devid": Arg((int,), True, _range(0, (1 << 31) - 1))},
    "network-list": {"domain": DOMAIN},
    "dmesg": {"clear": Arg((bool,))},
    "halt": {},
    "wait": {"domain": Arg((str,), True, _text(128)),
             "until": Arg((str,), True, lambda v: None if v in WAIT_STATES else
                          f"must be one of {', '.join(WAIT_STATES)}"),
             "not_domid": Arg((int,), False, _range(0, _DOMID_MAX)),
             "timeout": Arg((int, float), False, _range(0, 24 * 3600))},
}

WAIT_STATES = ("running", "shutdown", "crashed", "gone")


def parse_request(request: Any) -> tuple[str, dict[str, Any]]:
    """(command, arguments) of a request that fits its schema, else
    BadRequest. Optional arguments left out come back as None."""
    if not isinstance(request, dict):
        raise BadRequest(f"a request is a map, not {type(request).__name__}")
    extra = set(request) - {"cmd", "args"}
    if extra:
        raise BadRequest(f"unexpected request keys: {', '.join(_short(k) for k in extra)}")
    cmd = request.get("cmd")
    if not isinstance(cmd, str) or cmd not in SCHEMAS:
        raise BadRequest(f"unknown command {_short(cmd)}")
    args = request.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise BadRequest(f"{cmd}: args must be a map, not {type(args).__name__}")
    schema = SCHEMAS[cmd]
    unknown = [key for key in args if key not in schema]
    if unknown:
        raise BadRequest(f"{cmd}: unexpected argument {_short(unknown[0])}")
    checked: dict[str, Any] = {}
    for key, arg in schema.items():
        value = args.get(key)
        if value is None:
            if arg.required:
                raise BadRequest(f"{cmd}: missing argument {key}")
            checked[key] = None
            continue
        if (isinstance(value, bool) and bool not in arg.kinds) or not isinstance(value, arg.kinds):
            kinds = " or ".join(k.__name__ for k in arg.kinds)
            raise BadRequest(f"{cmd}: {key} must be {kinds}, not {type(value).__name__}")
        problem = arg.check(value) if arg.check else None
        if problem:
            raise BadRequest(f"{cmd}: {key} {_short(value)} {problem}")
        checked[key] = value
    return cmd, checked


COMMANDS: dict[str, Callable[..., Any]] = {}
DEFERRED: set[str] = set()  # commands that get `respond` and answer through it


class Halt(Exception):
    """Raised after the reply to `halt` is sent: Dom0 powers the machine off."""


class Later:
    """What a deferred command returns: its reply comes through `respond`."""


LATER = Later()


def command(name: str, deferred: bool = False):
    def register(fn):
        COMMANDS[name] = fn
        if deferred:
            DEFERRED.add(name)
        return fn
    return register


@command("list")
def _list(ts: Toolstack, args: dict):
    rows = ts.list_rows()
    if args.get("domain") is not None:
        dom = ts.find(args["domain"])
        rows = [r for r in rows if r["domid"] == dom.domid]
    return rows


@command("info")
def _info(ts: Toolstack, args: dict):
    phys = ts.xc.physinfo()
    return {"physinfo": phys, "version": ts.xc.version()}


@command("create", deferred=True)
def _create(ts: Toolstack, args: dict, respond: Respond):
    """Answered once the domain's kernel is up (or failed to come up): its
    boot runs on a worker of the toolstack, the control loop goes on."""
    drivers = {d.name for d in ts.domains.values()
               if d.domid == 0 or (d.config and d.config.driver_domain)}
    config = load_domain_config(Path(args["path"]), ts.platform, drivers)

    ts.create_async(config, _created(respond))
    return LATER


def _created(respond: Respond) -> Callable[[Managed | None, XenError | None], None]:
    """A create's (or restart's) answer, once its domain is up or failed."""
    def done(dom: Managed | None, error: XenError | None) -> None:
        if error is not None or dom is None:
            respond({"ok": False, "error": str(error)})
        else:
            respond({"ok": True, "result": {"name": dom.name, "domid": dom.domid}})
    return done


@command("destroy")
def _destroy(ts: Toolstack, args: dict):
    if isinstance(args["domain"], str) and ts.is_booting(args["domain"]):
        ts.destroy_booting(args["domain"])
        return {"then": None}
    then = ts.destroy_requested(ts.find(args["domain"]))
    return {"then": then}


@command("shutdown")
def _shutdown(ts: Toolstack, args: dict):
    """xl shutdown. A driver domain that serves devices is not shut down
    without `force`: its guests would lose them (with it, they do, and
    their frontends fail what is pending)."""
    dom = ts.find(args["domain"])
    served = ts.serves(dom) if dom.config is not None and dom.config.driver_domain else []
    if served and not args.get("force"):
        raise XenError(EBUSY, f"{dom.name} serves {', '.join(served)}; its guests would lose "
                       "them (--force removes them and shuts it down; `pyxen destroy` "
                       "restarts it instead)")
    if served:
        ts.orphan(dom)
    ts.request_shutdown(dom, "poweroff")


@command("reboot", deferred=True)
def _reboot(ts: Toolstack, args: dict, respond: Respond):
    """xl reboot: asks a running domain; restarts one that is stopped (a
    crashed driver domain the toolstack gave up on, a preserved crash)."""
    dom = ts.find(args["domain"])
    if not dom.handled:
        ts.request_shutdown(dom, "reboot")
        return None
    return _revive(ts, dom, respond)


@command("restart", deferred=True)
def _restart(ts: Toolstack, args: dict, respond: Respond):
    return _revive(ts, ts.find(args["domain"]), respond)


def _revive(ts: Toolstack, dom: Managed, respond: Respond):
    ts.revive(dom, _created(respond))
    return LATER


@command("pause")
def _pause(ts: Toolstack, args: dict):
    ts.xc.domain_pause(ts.find(args["domain"]).domid)


@command("unpause")
def _unpause(ts: Toolstack, args: dict):
    ts.xc.domain_unpause(ts.find(args["domain"]).domid)


@command("vcpu-list")
def _vcpu_list(ts: Toolstack, args: dict):
    return {"rows": ts.vcpu_rows(args.get("domain")), "nr_cpus": ts.platform.pcpus}


@command("vcpu-pin")
def _vcpu_pin(ts: Toolstack, args: dict):
    dom = ts.find(args["domain"])
    cpus = parse_cpulist(str(args["cpus"]), ts.platform.pcpus)
    nr = ts.xc.domain_getinfo(dom.domid)["max_vcpu_id"] + 1
    vcpu = args["vcpu"]
    if vcpu == "all":
        vcpus: Any = range(nr)
    else:
        try:
            vcpus = [int(str(vcpu), 10)]
        except ValueError:
            raise SpecError(f"vcpu {vcpu!r} is not a number or 'all'") from None
    for vcpu in vcpus:
        ts.xc.vcpu_setaffinity(dom.domid, vcpu, cpus)


@command("sched-credit2")
def _sched_credit2(ts: Toolstack, args: dict):
    """xl sched-credit2: without a weight or cap, the rows; with either, set
    it (the other stays as it is)."""
    weight, cap = args.get("weight"), args.get("cap")
    if weight is None and cap is None:
        return {"rows": ts.sched_rows(args.get("domain"))}
    if args.get("domain") is None:
        raise SpecError("a weight or cap needs a domain (-d NAME)")
    weight = 0 if weight is None else _weight(weight)  # 0: unchanged
    dom = ts.find(args["domain"])
    cap = ts.xc.sched_credit2_domain_get(dom.domid)["cap"] if cap is None else _cap(cap)
    ts.xc.sched_credit2_domain_set(dom.domid, weight, cap)
    return {"rows": ts.sched_rows(dom.domid)}


def _cap(value: Any) -> int:
    try:
        cap = int(str(value), 10)
    except ValueError:
        raise SpecError(f"cap {value!r} is not a number (percent of a pCPU, 0 for none)"
                        ) from None
    if cap < 0:
        raise SpecError(f"cap {cap} is out of range (0 for none, 100 for one pCPU)")
    return cap


def _weight(value: Any) -> int:
    # 0 would mean "leave it" to the hypercall: from a user it is a mistake.
    try:
        weight = int(str(value), 10)
    except ValueError:
        raise SpecError(f"weight {value!r} is not a number (1 to 65535)") from None
    if not 1 <= weight <= 65535:
        raise SpecError(f"weight {weight} is out of range (1 to 65535)")
    return weight


@command("block-attach", deferred=True)
def _block_attach(ts: Toolstack, args: dict, respond: Respond):
    """Answered once the device is Connected, or with why it is not."""
    dom = ts.find(args["domain"])
    disk = parse_disk(str(args["spec"]))
    if disk.backend not in {d.name for d in ts.domains.values()}:
        raise SpecError(f"unknown backend domain '{disk.backend}'")
    devid = ts.block_attach(dom, disk)
    result = {"devid": devid, "vdev": disk.vdev}
    ts.wait_connected(dom, vbd_frontend_path(dom.domid, devid), disk.vdev,
                      _attach_timeout(args), _attached(respond, result))
    return LATER


def _attach_timeout(args: dict) -> float:
    timeout = args.get("timeout")
    return ATTACH_TIMEOUT if timeout is None else float(timeout)


def _attached(respond: Respond, result: dict) -> Callable[[XenError | None], None]:
    def done(error: XenError | None) -> None:
        respond({"ok": False, "error": str(error)} if error is not None
                else {"ok": True, "result": result})
    return done


def _detached(respond: Respond) -> Callable[[XenError | None], None]:
    """A detach's answer, sent when its worker is done."""
    def done(error: XenError | None) -> None:
        respond({"ok": False, "error": str(error)} if error is not None
                else {"ok": True, "result": None})
    return done


@command("block-detach", deferred=True)
def _block_detach(ts: Toolstack, args: dict, respond: Respond):
    """Answered once the device is gone: the wait for the frontend runs on
    a worker (a guest may never close it), the control loop goes on."""
    ts.block_detach(ts.find(args["domain"]), str(args["vdev"]), _detached(respond))
    return LATER


@command("block-list")
def _block_list(ts: Toolstack, args: dict):
    return ts.block_list(ts.find(args["domain"]))


@command("network-attach", deferred=True)
def _network_attach(ts: Toolstack, args: dict, respond: Respond):
    dom = ts.find(args["domain"])
    spec = str(args["spec"])
    vif = parse_vif(spec)
    if not topocheck.names_backend(spec):
        # As a topology's vif without backend=: the one net driver domain.
        configs = [d.config for d in ts.domains.values() if d.config is not None]
        candidates = [n for n in topocheck.net_backends(configs) if n != dom.name]
        try:
            vif = replace(vif, backend=topocheck.default_vif_backend(candidates))
        except ValueError as exc:
            raise SpecError(str(exc)) from None
    problem = topocheck.dom0_vif_problem(vif)
    if problem:
        raise SpecError(problem)
    if vif.backend not in {d.name for d in ts.domains.values()}:
        raise SpecError(f"unknown backend domain '{vif.backend}'")
    devid = ts.network_attach(dom, vif)
    ts.wait_connected(dom, vif_frontend_path(dom.domid, devid), f"vif {devid}",
                      _attach_timeout(args), _attached(respond, {"devid": devid}))
    return LATER


@command("network-detach", deferred=True)
def _network_detach(ts: Toolstack, args: dict, respond: Respond):
    ts.network_detach(ts.find(args["domain"]), int(args["devid"]), _detached(respond))
    return LATER


@command("network-list")
def _network_list(ts: Toolstack, args: dict):
    return ts.network_list(ts.find(args["domain"]))


@command("dmesg")
def _dmesg(ts: Toolstack, args: dict):
    # Guests write into the hypervisor's console: no control character of
    # theirs reaches the admin's terminal.
    text = ts.xc.readconsole(clear=bool(args.get("clear")))
    if isinstance(text, list):  # a console that keeps its entries apart
        text = "".join(f"{entry}\n" for entry in text)
    return clean_text(str(text))


@command("halt")
def _halt(ts: Toolstack, args: dict):
    raise Halt()


def wait_state(ts: Toolstack, args: dict) -> dict | None:
    """The reply to `wait` if the domain has reached the state, else None.

    `running` with `not_domid` waits for a restart: the same name under a
    new domid.
    """
    rows = [r for r in ts.list_rows() if r["name"] == args["domain"]]
    until = args["until"]
    if until == "gone":
        return {} if not rows else None
    for row in rows:
        if until == "running" and not row["shutdown"] and row["domid"] != args.get("not_domid") \
                and row["note"] != "booting":
            return {"domid": row["domid"]}
        if until == "shutdown" and row["shutdown"]:
            return {"domid": row["domid"]}
        if until == "crashed" and row["crashed"]:
            return {"domid": row["domid"]}
    return None


class Waiters:
    """`wait` requests in flight, each with its deadline."""

    def __init__(self) -> None:
        self.pending: list[tuple[Respond, dict, float]] = []

    def add(self, respond: Respond, args: dict) -> None:
        timeout = 30.0 if args.get("timeout") is None else float(args["timeout"])
        self.pending.append((respond, args, time.monotonic() + timeout))

    def timeout_ms(self) -> int | None:
        if not self.pending:
            return None
        nearest = min(deadline for _, _, deadline in self.pending)
        return max(0, int((nearest - time.monotonic()) * 1000) + 1)

    def settle(self, ts: Toolstack) -> None:
        """Answer the waits whose state came, or whose time ran out."""
        keep = []
        now = time.monotonic()
        for respond, args, deadline in self.pending:
            try:
                with ts.lock:
                    result = wait_state(ts, args)
            except Exception as exc:
                respond({"ok": False, "error": f"wait failed: {exc}"})
                continue
            if result is not None:
                respond({"ok": True, "result": result})
            elif now >= deadline:
                respond({"ok": False, "error":
                         f"timed out waiting for {args['domain']} to be {args['until']}"})
            else:
                keep.append((respond, args, deadline))
        self.pending = keep

    def cancel(self, reason: str) -> None:
        for respond, _, _ in self.pending:
            respond({"ok": False, "error": reason})
        self.pending = []


class Control:
    """Requests in, replies out; never raises."""

    def __init__(self, ts: Toolstack) -> None:
        self.ts = ts
        self.waiters = Waiters()

    def handle(self, request: Any, respond: Respond) -> tuple[Reply | None, bool]:
        """The reply to `request` (None when it comes later through
        `respond`), and whether the machine must halt after it."""
        try:
            cmd, args = parse_request(request)
        except BadRequest as exc:
            return {"ok": False, "error": f"bad request: {exc}"}, False
        if cmd == "wait":
            self.waiters.add(respond, args)
            return None, False
        try:
            with self.ts.lock:
                if cmd in DEFERRED:
                    result = COMMANDS[cmd](self.ts, args, respond)
                else:
                    result = COMMANDS[cmd](self.ts, args)
        except Halt:
            return {"ok": True, "result": None}, True
        except (XenError, TopologyError, SpecError) as exc:
            return {"ok": False, "error": str(exc)}, False
        except (KeyError, ValueError, TypeError) as exc:
            return {"ok": False, "error": f"bad request: {exc!r}"}, False
        except Exception as exc:  # a bug of ours: the client and the log say so
            self.ts.log.exception("control request failed", cmd=cmd)
            return {"ok": False, "error": f"internal error in {cmd}: {exc!r}"}, False
        if result is LATER:
            return None, False
        return {"ok": True, "result": result}, False


def handle(ts: Toolstack, request: Any, respond: Respond | None = None
           ) -> tuple[Reply | None, bool]:
    """One request against a fresh Control (tests, and callers without waits)."""
    replies: list[Reply] = []
    reply, halt = Control(ts).handle(request, respond or replies.append)
    return reply, halt
