"""The control socket: how `pyxen` (xl) talks to Dom0's toolstack.

ZeroMQ REP at <run-dir>/control.sock; requests and replies are msgpack maps:
  request {"cmd": "list", "args": {...}}
  reply   {"ok": true, "result": ...} | {"ok": false, "error": "..."}
A user mistake (unknown domain, bad config) is an error reply, never a crash
of the toolstack.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from domains.dom0.toolstack import Toolstack
from domains.dom0.topology import TopologyError, load_domain_config
from domains.dom0.xlspec import SpecError, parse_cpulist, parse_disk, parse_vif
from hypervisor.public.errno import XenError

COMMANDS: dict[str, Callable[[Toolstack, dict], Any]] = {}


class Halt(Exception):
    """Raised after the reply to `halt` is sent: Dom0 powers the machine off."""


def command(name: str):
    def register(fn):
        COMMANDS[name] = fn
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


@command("create")
def _create(ts: Toolstack, args: dict):
    drivers = {d.name for d in ts.domains.values()
               if d.domid == 0 or (d.config and d.config.driver_domain)}
    config = load_domain_config(Path(args["path"]), ts.platform, drivers)
    dom = ts.create(config)
    return {"name": dom.name, "domid": dom.domid}


@command("destroy")
def _destroy(ts: Toolstack, args: dict):
    then = ts.destroy_requested(ts.find(args["domain"]))
    return {"then": then}


def _shutdown(request: str):
    def run(ts: Toolstack, args: dict):
        ts.request_shutdown(ts.find(args["domain"]), request)
    return run


COMMANDS["shutdown"] = _shutdown("poweroff")
COMMANDS["reboot"] = _shutdown("reboot")


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
    vcpus = range(nr) if str(args["vcpu"]) == "all" else [int(args["vcpu"])]
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


@command("block-attach")
def _block_attach(ts: Toolstack, args: dict):
    dom = ts.find(args["domain"])
    disk = parse_disk(str(args["spec"]))
    if disk.backend not in {d.name for d in ts.domains.values()}:
        raise SpecError(f"unknown backend domain '{disk.backend}'")
    return {"devid": ts.block_attach(dom, disk), "vdev": disk.vdev}


@command("block-detach")
def _block_detach(ts: Toolstack, args: dict):
    ts.block_detach(ts.find(args["domain"]), str(args["vdev"]))


@command("block-list")
def _block_list(ts: Toolstack, args: dict):
    return ts.block_list(ts.find(args["domain"]))


@command("network-attach")
def _network_attach(ts: Toolstack, args: dict):
    dom = ts.find(args["domain"])
    vif = parse_vif(str(args["spec"]))
    if vif.backend not in {d.name for d in ts.domains.values()}:
        raise SpecError(f"unknown backend domain '{vif.backend}'")
    return {"devid": ts.network_attach(dom, vif)}


@command("network-detach")
def _network_detach(ts: Toolstack, args: dict):
    ts.network_detach(ts.find(args["domain"]), int(args["devid"]))


@command("network-list")
def _network_list(ts: Toolstack, args: dict):
    return ts.network_list(ts.find(args["domain"]))


@command("dmesg")
def _dmesg(ts: Toolstack, args: dict):
    return ts.xc.readconsole(clear=bool(args.get("clear")))


@command("halt")
def _halt(ts: Toolstack, args: dict):
    raise Halt()


WAIT_STATES = ("running", "shutdown", "crashed", "gone")


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
        if until == "running" and not row["shutdown"] and row["domid"] != args.get("not_domid"):
            return {"domid": row["domid"]}
        if until == "shutdown" and row["shutdown"]:
            return {"domid": row["domid"]}
        if until == "crashed" and row["crashed"]:
            return {"domid": row["domid"]}
    return None


class Waiters:
    """`wait` requests in flight, each with its deadline."""

    def __init__(self) -> None:
        self.pending: list[tuple[list[bytes], dict, float]] = []

    def add(self, address: list[bytes], args: dict) -> None:
        timeout = float(args.get("timeout", 30))
        self.pending.append((address, args, time.monotonic() + timeout))

    def timeout_ms(self) -> int | None:
        if not self.pending:
            return None
        nearest = min(deadline for _, _, deadline in self.pending)
        return max(0, int((nearest - time.monotonic()) * 1000) + 1)

    def settle(self, ts: Toolstack) -> list[tuple[list[bytes], dict]]:
        done, keep = [], []
        now = time.monotonic()
        for address, args, deadline in self.pending:
            try:
                if args.get("until") not in WAIT_STATES:
                    raise ValueError(f"until must be one of {', '.join(WAIT_STATES)}")
                result = wait_state(ts, args)
            except (KeyError, ValueError, XenError) as exc:
                done.append((address, {"ok": False, "error": f"bad wait: {exc}"}))
                continue
            if result is not None:
                done.append((address, {"ok": True, "result": result}))
            elif now >= deadline:
                done.append((address, {"ok": False, "error":
                             f"timed out waiting for {args['domain']} to be {args['until']}"}))
            else:
                keep.append((address, args, deadline))
        self.pending = keep
        return done


def handle(ts: Toolstack, request: Any) -> tuple[dict, bool]:
    """Answer one request; the flag says the machine must halt after it."""
    if not isinstance(request, dict) or request.get("cmd") not in COMMANDS:
        cmd = request.get("cmd") if isinstance(request, dict) else None
        return {"ok": False, "error": f"unknown command {cmd!r}"}, False
    args = request.get("args") or {}
    try:
        return {"ok": True, "result": COMMANDS[request["cmd"]](ts, args)}, False
    except Halt:
        return {"ok": True, "result": None}, True
    except (XenError, TopologyError, SpecError) as exc:
        return {"ok": False, "error": str(exc)}, False
    except (KeyError, ValueError, TypeError) as exc:
        return {"ok": False, "error": f"bad request: {exc!r}"}, False
