"""`pyxen chaos`: kill driver domains at random moments while every guest
runs a verifying workload, then say how fast each kill was recovered from
and whether any acknowledged write was lost, duplicated or corrupted.

The run boots a throw-away machine from the topology (the bundled default
unless one is given) in its own run directory under /tmp. What it changes
in the topology, and why:
- every non-driver domain runs domains/guest/chaos.py:verify (its `extra`
  is kept, so the demo's `peer=` still names the guest to probe);
- the targets' restart budget is lifted for the run (restart_limit of
  kills + 1 in an hour, no back-off): a chaos run kills far more often than
  any budget allows, and the budget has its own tests;
- disks must be images inside the run directory (relative targets): chaos
  writes over every block of them.

Step i: its timing (--timing, see steps.py: spaced, boot, handshake,
double, triple, reattach) and its target are drawn from the seeded
generator, then a pause drawn from [--min-gap, --max-gap] s of normal
running, then the step's kills (SIGKILL to the target, and to successors
at the step's moments). The next step waits until this one is recovered
(every device the target served completed a request through the last
successor, see analysis.py; timed from the step's first kill), or for
RECOVERY_TIMEOUT; then every guest device must be Connected.
"""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import sys
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from deploy import DEFAULT_TOPOLOGY
from domains.dom0.bench.common import (
    BenchError,
    Progress,
    become_subreaper,
    boot,
    halt,
    reap_children,
)
from domains.dom0.chaos import analysis, steps, toml_out
from domains.dom0.chaos.analysis import Device
from domains.dom0.client import CommandFailed, ControlClient, NotRunning
from domains.dom0.topology import Topology, TopologyError, load_topology
from domains.guest import chaos_blocks as blocks

WORKLOAD = "domains.guest.chaos:verify"
SLOTS = 2048  # 4 KiB blocks each disk cycles over (8 MiB)
READY_TIMEOUT = 60.0
RECOVERY_TIMEOUT = 10.0  # seconds; a kill not recovered by then counts as failed
STOP_TIMEOUT = 60.0
GOAL_MEDIAN_MS, GOAL_WORST_MS = 300.0, 2000.0


class ChaosError(Exception):
    """The run cannot go on; the message says why (no traceback for the user)."""


@dataclass
class Guest:
    name: str
    disks: dict[str, Path]  # vdev -> image
    vifs: list[str]  # backends of its vifs, in order
    report: Path
    control: Path
    domid: int = -1


@dataclass
class Events:
    """What the guests reported, as it arrives."""

    items: list[dict] = field(default_factory=list)
    ended: set[str] = field(default_factory=set)  # guests whose report pipe closed
    cond: threading.Condition = field(default_factory=threading.Condition)

    def add(self, event: dict) -> None:
        with self.cond:
            self.items.append(event)
            self.cond.notify_all()

    def wait_for(self, predicate, timeout: float):
        with self.cond:
            result = None

            def check():
                nonlocal result
                result = predicate(self.items)
                return result

            self.cond.wait_for(check, timeout)
            return result


def plan(topology: Topology, targets: list[str] | None) -> tuple[list[str], list[Guest], dict]:
    """Targets and guests of the run, and the derived topology (raw TOML)."""
    drivers = [d.name for d in topology.domains if d.driver_domain]
    targets = targets or drivers
    for name in targets:
        if name not in drivers:
            known = ", ".join(drivers) or "none"
            raise ChaosError(f"--target {name}: not a driver domain of {topology.path} "
                             f"(driver domains: {known})")
    guests = []
    for dom in topology.domains:
        if dom.driver_domain:
            continue
        disks = {}
        for disk in dom.disks:
            if disk.target and Path(disk.target).is_absolute():
                raise ChaosError(f"{dom.name}: disk {disk.vdev} is {disk.target}; chaos "
                                 "writes over every block of a disk, so it only takes "
                                 "images inside its own run directory (relative targets)")
            disks[disk.vdev] = Path(disk.target)
        guests.append(Guest(dom.name, disks, [v.backend for v in dom.vifs],
                            Path(), Path()))
    if not guests:
        raise ChaosError(f"{topology.path} has no guest to run a workload in")
    with open(topology.path, "rb") as f:
        raw = tomllib.load(f)
    return targets, guests, raw


def derive(raw: dict, targets: list[str], guests: list[Guest], kills: int) -> dict:
    domains = raw.setdefault("domain", {})
    for name in targets:
        domains[name].update(on_crash="restart", restart_limit=[kills + 1, 3600],
                             restart_backoff=[0, 0])
    for guest in guests:
        table = domains[guest.name]
        table["workload"] = WORKLOAD
        table["extra"] = " ".join(filter(None, [
            table.get("extra", ""), f"report={guest.report}", f"control={guest.control}",
            f"slots={SLOTS}", "disks=" + "+".join(guest.disks)]))
        # Its sandbox shows it its two pipes and nothing else of ours.
        table["bind"] = [*table.get("bind", []), str(guest.report), str(guest.control)]
    return raw


def devices_of(target: str, topology: Topology, network: bool) -> list[Device]:
    found = []
    for dom in topology.domains:
        for disk in dom.disks:
            if disk.backend == target:
                found.append(Device(dom.name, "vbd", disk.vdev))
        for i, vif in enumerate(dom.vifs):
            if vif.backend == target and network and "peer=" in dom.extra:
                found.append(Device(dom.name, "vif", f"eth{i}"))
    return found


def read_reports(guest: Guest, fd: int, events: Events) -> None:
    buf = b""
    while True:
        select.select([fd], [], [])
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            events.add(json.loads(line))
    with events.cond:
        events.ended.add(guest.name)
        events.cond.notify_all()


def run(topology_path: Path, targets: list[str] | None, kills: int, seed: int,
        gaps: tuple[float, float], progress: Progress,
        kinds: list[str] | None = None) -> dict:
    topology = load_topology(topology_path)
    targets, guests, raw = plan(topology, targets)
    network = os.geteuid() == 0  # guests get a network only as root
    tmp = Path(tempfile.mkdtemp(prefix="pyxen-chaos-", dir="/tmp"))
    run_dir = tmp / "run"
    for guest in guests:
        guest.report, guest.control = tmp / f"{guest.name}.report", tmp / f"{guest.name}.ctl"
        for fifo in (guest.report, guest.control):
            os.mkfifo(fifo)
            os.chmod(fifo, 0o666)  # the guest's own uid uses them (tmp is 0700)
    derived = tmp / "topology.toml"
    kinds = kinds or ["spaced"]
    # A step kills up to three times: the budget must hold them all.
    budget = kills * max(steps.KILLS_OF[k] for k in kinds)
    derived.write_text(toml_out.dumps(derive(raw, targets, guests, budget)))
    events = Events()
    fds = []
    keep = True  # the logs stay unless the run comes out clean
    try:
        for guest in guests:
            fd = os.open(guest.report, os.O_RDONLY | os.O_NONBLOCK)
            fds.append(fd)
            threading.Thread(target=read_reports, args=(guest, fd, events),
                             daemon=True).start()
            # Read-write: never blocks, and the guest's open for reading finds a writer.
            fds.append(os.open(guest.control, os.O_RDWR))
        try:
            boot(run_dir, derived, progress)
        except BenchError as exc:
            raise ChaosError(str(exc)) from None
        report = _run_kills(run_dir, topology, targets, guests, kills, seed, gaps, network,
                            events, progress, fds[1::2], kinds)
        halt(run_dir)
        report["blocks"] = _check_images(run_dir, guests, report.pop("tops"))
        report["goal"] = _goal(report)
        keep = not clean(report)
        return report
    except (NotRunning, CommandFailed) as exc:
        raise ChaosError(f"the machine stopped answering: {exc}") from None
    finally:
        halt(run_dir)
        for fd in fds:
            os.close(fd)
        reap_children()
        if keep and (run_dir / "logs").is_dir():
            progress(f"logs kept in {run_dir / 'logs'}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _domains(run_dir: Path) -> dict[str, dict]:
    return {row["name"]: row for row in ControlClient(run_dir).call("list")}


def _run_kills(run_dir: Path, topology: Topology, targets: list[str], guests: list[Guest],
               kills: int, seed: int, gaps: tuple[float, float], network: bool,
               events: Events, progress: Progress, controls: list[int],
               kinds: list[str]) -> dict:
    rng = random.Random(seed)
    expected = {(g.name, d) for g in guests for d in g.disks}
    progress(f"waiting for {len(guests)} guest(s) to write through their disks ...")
    if not events.wait_for(lambda items: expected <= {(e["guest"], e["disk"]) for e in items
                                                       if e.get("ev") == "blk"}
                           or events.ended, READY_TIMEOUT) or events.ended:
        raise ChaosError(_why_not_ready(events, run_dir))
    rows = _domains(run_dir)
    for guest in guests:
        guest.domid = rows[guest.name]["domid"]
    results = []
    striker = steps.Striker(run_dir)
    names = [g.name for g in guests]
    for i in range(kills):
        kind = rng.choice(kinds)
        target = rng.choice(targets)
        pause = rng.uniform(*gaps)
        threading.Event().wait(pause)  # a stretch of normal running, by design
        if kind == "reattach":
            result = _reattach(run_dir, topology, guests, rng, network)
            results.append({"kill": i + 1, "timing": kind, "target": result["guest"],
                            "domid": None, "after_s": round(pause, 3), "kills": [],
                            "recovery_ms": None, "measured": "attach", **result})
            progress(f"step {i + 1}/{kills}: reattach on {result['guest']} -> "
                     f"{result['error'] or 'connected each time'}")
        else:
            devices = devices_of(target, topology, network)

            def resumed(kill: steps.Kill, devices=devices) -> bool:
                return _recovery(run_dir, target, kill.domid, devices, kill.at,
                                 events)["recovery_ms"] is not None

            step = striker.strike(kind, target, resumed)
            if not step.kills:
                raise ChaosError(f"step {i + 1}: {step.note}")
            first, last = step.kills[0], step.kills[-1]
            recovered = _recovery(run_dir, target, last.domid, devices, last.at, events)
            if recovered["recovery_ms"] is not None:  # timed from the step's first kill
                recovered["recovery_ms"] = round(recovered["recovery_ms"]
                                                 + (last.at - first.at) * 1000, 1)
            results.append({"kill": i + 1, "timing": kind, "target": target,
                            "domid": first.domid, "after_s": round(pause, 3),
                            "kills": [{"domid": k.domid, "landed": k.landed}
                                      for k in step.kills],
                            "note": step.note, **recovered})
            shown = (f"{recovered['recovery_ms']:.0f} ms"
                     if recovered["recovery_ms"] is not None else "NOT recovered")
            landed = ", ".join(f"d{k.domid} {k.landed}" for k in step.kills)
            progress(f"step {i + 1}/{kills}: {kind} {target} ({landed}) -> {shown}"
                     + (f" [{step.note}]" if step.note else "")
                     + ("" if devices else " (driver domain back; no device to time)"))
        stuck = steps.not_connected(run_dir, names)
        results[-1]["not_connected"] = stuck
        if stuck:
            progress(f"  not Connected after step {i + 1}: "
                     + ", ".join(f"{d} (state {s})" for d, s in stuck.items()))
    rows = _domains(run_dir)
    guest_state = {g.name: _guest_state(g, rows.get(g.name)) for g in guests}
    progress("stopping the workloads and checking every block ...")
    for fd in controls:
        os.write(fd, b"stop\n")
    disks = {(g.name, d) for g in guests for d in g.disks}

    def last_words(items: list[dict]) -> dict | None:
        done = {(e["guest"], e["disk"]): e for e in items if e.get("ev") in ("done", "error")}
        return done if disks <= set(done) else None

    finished = events.wait_for(last_words, STOP_TIMEOUT) or {}
    bad_reads = sum(e.get("bad_reads", 0) for e in finished.values())
    errors = [f"{g}/{d}: {e['error']}" for (g, d), e in finished.items() if e["ev"] == "error"]
    errors += [f"{g}/{d}: never reported its last write" for g, d in disks - set(finished)]
    return {"seed": seed, "kills": results, "targets": targets,
            "guests": guest_state, "io_errors": errors,
            "reads": {"verified": sum(e.get("reads", 0) for e in finished.values()),
                      "bad": bad_reads},
            "tops": {key: e.get("top", -1) for key, e in finished.items()}}


def _reattach(run_dir: Path, topology: Topology, guests: list[Guest], rng: random.Random,
              network: bool) -> dict:
    """A detach/attach cycle on a guest, at the same vdev and vif index."""
    guest = rng.choice(guests)
    config = next(d for d in topology.domains if d.name == guest.name)
    disk_backend = next((d.backend for d in config.disks), None)
    vif = next(((v.backend, v.bridge) for v in config.vifs), None) if network else None
    error = steps.reattach(run_dir, guest.name, disk_backend, vif)
    return {"guest": guest.name, "error": error}


def _recovery(run_dir: Path, target: str, old: int, devices: list[Device],
              killed_at: float, events: Events) -> dict:
    if not devices:
        # Nothing to time through (no guest network without root): time the
        # driver domain's own return.
        ControlClient(run_dir).call("wait", domain=target, until="running", not_domid=old,
                                    timeout=RECOVERY_TIMEOUT)
        return {"recovery_ms": round((time.monotonic() - killed_at) * 1000, 1),
                "measured": "restart"}

    def all_back(items):
        times = [analysis.resumed_at(d, items, killed_at, old) for d in devices]
        return None if None in times else max(times)

    back = events.wait_for(all_back, RECOVERY_TIMEOUT)
    return {"recovery_ms": None if back is None else round((back - killed_at) * 1000, 1),
            "measured": "io"}


def _guest_state(guest: Guest, row: dict | None) -> str:
    if row is None:
        return "gone"
    if row["domid"] != guest.domid:
        return f"restarted (d{guest.domid} -> d{row['domid']})"
    if row["shutdown"]:
        return f"stopped ({row['shutdown_reason']})"
    return "running"


def _why_not_ready(events: Events, run_dir: Path) -> str:
    if events.ended:
        return (f"guest(s) {', '.join(sorted(events.ended))} ended before writing "
                f"(see {run_dir / 'logs'})")
    errors = [e for e in events.items if e.get("ev") == "error"]
    if errors:
        return f"{errors[0]['guest']}: {errors[0]['error']}"
    return f"the guests did not start writing within {READY_TIMEOUT:.0f}s"


def _check_images(run_dir: Path, guests: list[Guest], tops: dict) -> dict:
    totals = {"acknowledged": 0, "lost": 0, "duplicated": 0, "corrupted": 0, "disks": []}
    for guest in guests:
        for vdev, target in guest.disks.items():
            top = tops.get((guest.name, vdev), -1)
            with open(run_dir / "disks" / target, "rb") as f:
                image = f.read(SLOTS * blocks.BLOCK)
            found = analysis.check_image(image, blocks.tag_of(guest.name), top, SLOTS)
            totals["acknowledged"] += top + 1
            for kind in ("lost", "duplicated", "corrupted"):
                totals[kind] += len(getattr(found, kind))
            totals["disks"].append({"guest": guest.name, "disk": vdev, "writes": top + 1,
                                    "lost": found.lost[:20], "duplicated": found.duplicated[:20],
                                    "corrupted": found.corrupted[:20]})
    return totals


def _goal(report: dict) -> dict:
    times = [k["recovery_ms"] for k in report["kills"] if k.get("timing") != "reattach"]
    measured = [t for t in times if t is not None]
    median = analysis.percentile(measured, 50) if measured else None
    worst = max(measured) if measured else None
    met = (bool(measured) and len(measured) == len(times) and median < GOAL_MEDIAN_MS
           and worst < GOAL_WORST_MS)
    return {"median_ms": median, "worst_ms": worst, "met": met,
            "median_goal_ms": GOAL_MEDIAN_MS, "worst_goal_ms": GOAL_WORST_MS}


def clean(report: dict) -> bool:
    """Nothing lost, duplicated or corrupted, no I/O error, every guest up,
    every kill recovered, every re-attach connected, and after every step
    every guest device Connected."""
    blocks_ = report["blocks"]
    kills = [k for k in report["kills"] if k.get("timing") != "reattach"]
    return (not (blocks_["lost"] or blocks_["duplicated"] or blocks_["corrupted"])
            and not report["io_errors"] and not report["reads"]["bad"]
            and all(s == "running" for s in report["guests"].values())
            and all(k["recovery_ms"] is not None for k in kills)
            and not any(k.get("error") for k in report["kills"])
            and not any(k.get("not_connected") for k in report["kills"]))


def format_report(report: dict) -> str:
    lines = [(f"pyxen chaos: {len(report['kills'])} steps against "
             f"{', '.join(report['targets'])} (seed {report['seed']})"), ""]
    lines.append(f"  {'target':<12}{'kills':>6}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
                 f"{'max ms':>9}  timed by")
    timings = sorted({k.get("timing", "spaced") for k in report["kills"]} - {"reattach"})
    rows = [*report["targets"], *(timings if len(timings) > 1 else []), "all"]
    for target in rows:
        kills = [k for k in report["kills"] if k.get("timing") != "reattach" and
                 target in ("all", k["target"], k.get("timing"))]
        times = [k["recovery_ms"] / 1000 for k in kills if k["recovery_ms"] is not None]
        stats = analysis.summary_ms(times)
        how = ", ".join(sorted({k["measured"] for k in kills})) or "-"
        cells = ("".join(f"{stats[c]:>9.1f}" for c in ("p50", "p90", "p99", "max"))
                 if stats else f"{'-':>9}" * 4)
        failed = len(kills) - len(times)
        lines.append(f"  {target:<12}{len(kills):>6}{cells}  {how}"
                     + (f"  ({failed} NOT recovered)" if failed else ""))
    b = report["blocks"]
    lines += ["", (f"blocks: {b['acknowledged']} acknowledged writes checked on the images: "
                  f"{b['lost']} lost, {b['duplicated']} duplicated, {b['corrupted']} corrupted"),
              (f"reads: {report['reads']['verified']} read back during the run, "
              f"{report['reads']['bad']} wrong")]
    for error in report["io_errors"]:
        lines.append(f"I/O error seen by a guest: {error}")
    reattach = [k for k in report["kills"] if k.get("timing") == "reattach"]
    if reattach:
        failed = [k for k in reattach if k.get("error")]
        lines.append(f"re-attach cycles: {len(reattach)}, {len(failed)} failed"
                     + "".join(f"; {k['error']}" for k in failed))
    for k in report["kills"]:
        if k.get("not_connected"):
            lines.append(f"after step {k['kill']} ({k.get('timing')}): not Connected: "
                         + ", ".join(f"{d} (state {s})" for d, s in k["not_connected"].items()))
    lines.append("guests: " + ", ".join(f"{g} {s}" for g, s in report["guests"].items()))
    goal = report["goal"]
    if goal["median_ms"] is not None:
        lines.append(f"recovery: median {goal['median_ms']:.0f} ms, worst "
                     f"{goal['worst_ms']:.0f} ms (goal: median < {GOAL_MEDIAN_MS:.0f} ms, "
                     f"worst < {GOAL_WORST_MS:.0f} ms): {'met' if goal['met'] else 'NOT met'}")
    lines.append("verdict: " + ("clean" if clean(report) else "FAILED"))
    return "\n".join(lines)


def command(args) -> int:
    """The CLI entry: argument checks, the run, the report."""
    as_json = bool(args.json)

    def progress(msg: str) -> None:
        if not as_json:
            print(msg, file=sys.stderr, flush=True)

    if args.kills < 1:
        print("pyxen: chaos: --kills must be at least 1", file=sys.stderr)
        return 1
    if not 0 <= args.min_gap <= args.max_gap:
        print("pyxen: chaos: need 0 <= --min-gap <= --max-gap", file=sys.stderr)
        return 1
    targets = [t for t in (args.target or "").split(",") if t] or None
    try:
        kinds = list(steps.KINDS) if args.timing == "all" else steps.parse_kinds(args.timing)
    except ValueError as exc:
        print(f"pyxen: chaos: {exc}", file=sys.stderr)
        return 1
    topology = Path(args.topology) if args.topology else DEFAULT_TOPOLOGY
    try:
        become_subreaper()
        report = run(topology, targets, args.kills, args.seed, (args.min_gap, args.max_gap),
                     progress, kinds)
    except (ChaosError, TopologyError) as exc:
        print(f"pyxen: chaos: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"pyxen: chaos: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report) if as_json else format_report(report))
    return 0 if clean(report) else 2
