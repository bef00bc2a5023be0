"""`pyxen`: the xl of pyxen. Boots a machine and talks to its toolstack."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

from domains.dom0.client import (
    CommandFailed,
    ControlClient,
    NotRunning,
    default_run_dir,
    hypervisor_pid,
)
from domains.dom0.topology import TopologyError, load_topology
from domains.dom0.xlformat import (
    format_info,
    format_list,
    format_sched_credit2,
    format_top,
    format_vcpu_list,
)

# A Unix socket's path (ZeroMQ's ipc:// ones) must fit in
# sockaddr_un (108 bytes with the NUL).
MAX_SOCKET_PATH = 100
# What `pyxen boot` hands the hypervisor, as Xen's loader hands over Dom0's
# kernel: Dom0's entry point, and the module every domain process runs
# (which boots the kernel its start_info names; standby processes too).
DOM0_KERNEL = "domains.dom0.main:main"
DOMAIN_BOOT = "domains.kernel.boot"


class UserError(Exception):
    """A mistake the user can fix: printed as one line, exit status 1."""


def _boot_command(args) -> int:
    from deploy import DEFAULT_TOPOLOGY

    run_dir: Path = args.run_dir
    path = Path(args.topology) if args.topology else DEFAULT_TOPOLOGY
    try:
        topology = load_topology(path, disk_dir=run_dir / "disks")
    except TopologyError as exc:
        raise UserError(str(exc)) from None
    pid = hypervisor_pid(run_dir)
    if pid is not None:
        raise UserError(f"a pyxen system is already running in {run_dir} (hypervisor pid "
                        f"{pid}); `pyxen halt` it or choose another --run-dir")
    machine = _machine_name(args.name, path)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Only its owner may enter it: its sockets, logs and images are the
    # machine's, not every local user's.
    os.chmod(run_dir, 0o700)
    # hypervisor/loop.py's longest: a jailed domain's channel in its own
    # directory hv/j<n>/ (up to 4 hex digits of spawns budgeted).
    longest = run_dir.resolve() / "hv" / "jffff" / "65535.hc"
    if len(str(longest)) > MAX_SOCKET_PATH:
        raise UserError(f"--run-dir {run_dir} is too long for unix sockets; "
                        "use a shorter path")
    (run_dir / "logs").mkdir(exist_ok=True)
    dom0 = topology.dom0
    platform = topology.platform
    read_fd, write_fd = os.pipe()
    cmd = [sys.executable, "-m", "hypervisor", "--run-dir", str(run_dir.resolve()),
           "--platform", json.dumps({"name": platform.name, "pcpus": platform.pcpus,
                                     "memory": platform.memory}),
           "--dom0", json.dumps({"memory": dom0.memory, "vcpus": dom0.vcpus,
                                 "cpus": list(dom0.cpus) if dom0.cpus else None,
                                 "weight": dom0.weight,
                                 "cmdline": f"{dom0.extra} topology="
                                            f"{quote(str(path.resolve()))}".strip()}),
           "--dom0-kernel", DOM0_KERNEL, "--domain-boot", DOMAIN_BOOT,
           "--notify-fd", str(write_fd), "--machine", machine]
    if args.log_json:
        cmd.append("--log-json")
    if args.no_sandbox:
        cmd.append("--no-sandbox")
        print("WARNING: --no-sandbox: domains run as root with every capability, in the "
              "host's namespaces, unconfined (for benchmark comparisons only)",
              file=sys.stderr, flush=True)
    with open(run_dir / "logs" / "hypervisor.out", "ab") as out:
        hv = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                              pass_fds=[write_fd], start_new_session=True)
    os.close(write_fd)
    print(f"Booting {path.name} as machine '{machine}' in {run_dir} (hypervisor pid "
          f"{hv.pid})", flush=True)
    try:
        ok, error = _follow_boot(read_fd)
    except KeyboardInterrupt:
        # The user gave up on this boot: nothing may stay behind.
        hv.terminate()
        hv.wait()
        raise UserError("boot interrupted (Ctrl-C); the machine was halted") from None
    if not ok:
        hv.wait()
        log = run_dir / "logs" / "hypervisor.log"
        raise UserError(f"boot failed: {error or 'the hypervisor exited'} "
                        f"(see {log} and {run_dir / 'logs'})")
    if args.detach:
        print("All domains running. `pyxen list` shows them; `pyxen halt` stops them.")
        return 0
    return _foreground(run_dir, hv, machine)


MACHINE_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
HYPERVISOR_TITLE_RE = re.compile(r"^pyxen\[([^\]]+)\]: hypervisor\b")


def running_machines() -> set[str]:
    """The names of the machines whose hypervisors run on this host."""
    import psutil

    names = set()
    for proc in psutil.process_iter(["cmdline"]):
        match = HYPERVISOR_TITLE_RE.match(" ".join(proc.info["cmdline"] or []))
        if match:
            names.add(match.group(1))
    return names


def _machine_name(given: str | None, topology: Path) -> str:
    """The machine's name for process titles: unique on this host, so that
    `pgrep -f 'pyxen\\[NAME\\]: ...'` finds one machine's processes."""
    taken = running_machines()
    if given is not None:
        if not MACHINE_NAME_RE.match(given):
            raise UserError(f"--name {given!r}: use 1 to 64 letters, digits, '_', '.' and '-'")
        if given in taken:
            raise UserError(f"a machine named {given!r} is already running on this host; "
                            "choose another --name")
        return given
    stem = re.sub(r"[^A-Za-z0-9_.-]", "-", topology.stem)[:60] or "pyxen"
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    return name


def _follow_boot(fd: int) -> tuple[bool, str]:
    """Print boot progress from Dom0 until it says ready (or the pipe closes)."""
    with os.fdopen(fd, "r") as pipe:
        for line in pipe:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "created":
                print(f"  {event['name']:<16} started (domid {event['domid']})", flush=True)
            elif event.get("event") == "ready":
                return True, ""
            elif event.get("event") == "error":
                return False, event.get("message", "")
    return False, ""


def _foreground(run_dir: Path, hv: subprocess.Popen, machine: str) -> int:
    """Show the machine until Ctrl-C, or the reader of our output going
    away (`pyxen boot | tee log`, then Ctrl-C or `q` in a pager), halts it,
    or it stops by itself. On a terminal the screen is xl top's, redrawn
    every second; elsewhere a line per change.

    The hypervisor's end is watched on a pidfd, not with Popen.wait: a
    Ctrl-C landing inside Popen.wait can leave its internal lock taken, and
    the wait after the halt would then never return."""
    import select

    client = ControlClient(run_dir)
    live = sys.stdout.isatty()
    exited = os.pidfd_open(hv.pid)
    watch = select.poll()
    watch.register(exited, select.POLLIN)
    if stat.S_ISFIFO(os.fstat(sys.stdout.fileno()).st_mode):
        # A pipe's writer gets POLLERR once its reader is gone.
        watch.register(sys.stdout.fileno(), 0)
    screen = _LiveScreen(client, machine) if live else _ChangeLog()
    why = None
    try:
        while why is None:
            try:
                rows = client.call("list")
            except NotRunning:
                break
            try:
                screen.show(rows)
            except BrokenPipeError:
                why = "its output was closed"
                break
            for fd, _ in watch.poll(1000):  # a refresh a second
                if fd == exited:
                    why = "stopped"
                else:
                    why = "its output was closed"
    except KeyboardInterrupt:
        why = "Ctrl-C"
    if why not in (None, "stopped"):
        _halt_from_foreground(client, exited, why)
    os.close(exited)
    _, status = os.waitpid(hv.pid, 0)
    hv.returncode = os.waitstatus_to_exitcode(status)
    _say("The machine has halted.")
    return 0


def _say(text: str) -> None:
    """Print unless the reader of our output is gone (then: not at all)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Python would complain again flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _halt_from_foreground(client: ControlClient, exited: int, why: str) -> None:
    """Halt first, then say so: the reader may be gone, and a failed print
    must never leave the machine running, orphaned."""
    import select

    # A second Ctrl-C (tee's and ours arrive together) must not cut the
    # wait short: the halt is under way either way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        client.call("halt")
    except NotRunning:
        pass
    _say(f"\nHalting ({why})...")
    select.select([exited], [], [])


class _ChangeLog:
    """A pipe or a file: the list, printed again when a domain changes."""

    def __init__(self) -> None:
        self.last: list | None = None

    def show(self, rows: list[dict]) -> None:
        shown = [(r["name"], r["domid"], r["shutdown"], r["paused"], r["note"]) for r in rows]
        if shown != self.last:
            print(time.strftime("%H:%M:%S"), "domains:", flush=True)
            print(format_list(rows), end="", flush=True)
            self.last = shown


class _LiveScreen:
    """A terminal: xl top's screen, redrawn in place."""

    CLEAR = "\x1b[H\x1b[2J"

    def __init__(self, client: ControlClient, machine: str) -> None:
        self.machine = machine
        self.total_mib = client.call("info")["physinfo"]["total_pages"] * 4 // 1024
        self.previous: dict[str, float] | None = None
        self.at = time.monotonic()

    def show(self, rows: list[dict]) -> None:
        now = time.monotonic()
        text = format_top(rows, self.previous, now - self.at, self.total_mib,
                          time.strftime("%H:%M:%S"), self.machine)
        print(self.CLEAR + text + "Ctrl-C halts the machine.", end="", flush=True)
        self.previous = {r["name"]: float(r.get("cpu_time", 0.0)) for r in rows}
        self.at = now


def _client(args) -> ControlClient:
    return ControlClient(args.run_dir)


def _simple(cmd: str, done: str | None = None):
    def run(args) -> int:
        result = _client(args).call(cmd, domain=args.domain)
        if done:
            print(done.format(domain=args.domain))
        if isinstance(result, dict) and result.get("then"):
            # A driver domain: the guests it served decide what comes next.
            print(f"{args.domain} is a driver domain: {result['then']}")
        return 0
    return run


def _list(args) -> int:
    rows = _client(args).call("list", domain=args.domain)
    print(format_list(rows, verbose=args.verbose), end="")
    notes = [r for r in rows if r.get("note")]
    for row in notes if args.verbose else []:
        print(f"  {row['name']}: {row['note']}")
    return 0


def _info(args) -> int:
    info = _client(args).call("info")
    phys, ver = info["physinfo"], info["version"]
    physinfo = {"host": os.uname().nodename, "release": os.uname().release,
                "version": os.uname().version, "machine": "aarch64 (pyxen)",
                "nr_cpus": phys["nr_cpus"], "max_cpu_id": phys["max_cpu_id"],
                "nr_nodes": phys["nr_nodes"], "cores_per_socket": phys["cores_per_socket"],
                "threads_per_core": phys["threads_per_core"],
                "total_memory": phys["total_pages"] * 4 // 1024,
                "free_memory": phys["free_pages"] * 4 // 1024}
    versions = {**ver, "xen_scheduler": "credit2", "xen_pagesize": 4096,
                "platform": phys.get("platform")}
    print(format_info(physinfo, versions), end="")
    sandbox = phys.get("sandbox") or {}
    print("%-23s: %s" % ("sandbox", " ".join(sandbox.get("active", [])) or
                         ("off (--no-sandbox)" if sandbox.get("enabled") is False else "none")))
    missing = sandbox.get("missing", [])
    print("%-23s: %s" % ("sandbox_missing", "; ".join(f"{name} ({why})" for name, why in missing)
                         if missing else "none"))
    return 0


def _create(args) -> int:
    path = Path(args.config)
    if not path.is_file():
        raise UserError(f"{path}: no such config file")
    result = _client(args).call("create", path=str(path.resolve()))
    print(f"Created {result['name']} (domid {result['domid']})")
    return 0


def _console(args) -> int:
    from domains.dom0.console_client import ConsoleError, attach

    if hypervisor_pid(args.run_dir) is None:
        raise NotRunning(f"no pyxen system is running in {args.run_dir}")
    try:
        return attach(args.run_dir, args.domain)
    except ConsoleError as exc:
        raise UserError(f"console {args.domain}: {exc}") from None


def _block_attach(args) -> int:
    result = _client(args).call("block-attach", domain=args.domain,
                                spec=", ".join(args.spec), timeout=args.timeout)
    print(f"Attached {result['vdev']} (devid {result['devid']}) to {args.domain}")
    return 0


def _block_detach(args) -> int:
    _client(args).call("block-detach", domain=args.domain, vdev=args.vdev)
    return 0


def _block_list(args) -> int:
    rows = _client(args).call("block-list", domain=args.domain)
    print("%-5s %-3s %-6s %-5s %-6s %-8s %-30s" % (
        "Vdev", "BE", "handle", "state", "evt-ch", "ring-ref", "BE-path"))
    for r in rows:
        print("%-5d %-3d %-6d %-5d %-6d %-8d %-30s" % (
            r["devid"], r["backend_id"], r["devid"], r["state"], r["event_channel"],
            r["ring_ref"], r["backend_path"]))
    _causes(rows, lambda r: r["vdev"])
    return 0


def _network_attach(args) -> int:
    result = _client(args).call("network-attach", domain=args.domain,
                                spec=", ".join(args.spec), timeout=args.timeout)
    print(f"Attached vif {result['devid']} to {args.domain}")
    return 0


def _network_detach(args) -> int:
    _client(args).call("network-detach", domain=args.domain, devid=args.devid)
    return 0


def _network_list(args) -> int:
    rows = _client(args).call("network-list", domain=args.domain)
    print("%-3s %-3s %-17s %-5s %-7s %-17s %s" % (
        "Idx", "BE", "Mac Addr.", "state", "evt-ch", "tx-/rx-ring-ref", "BE-path"))
    for r in rows:
        print("%-3d %-3d %-17s %-5d %-7s %-17s %s" % (
            r["devid"], r["backend_id"], r["mac"], r["state"],
            f"{r['tx_evtchn']}/{r['rx_evtchn']}",
            f"{r['tx_ring_ref']}/{r['rx_ring_ref']}", r["backend_path"]))
    _causes(rows, lambda r: f"vif {r['devid']}")
    return 0


def _causes(rows: list[dict], name) -> None:
    """Below xl's table: why each device that is not Connected is not."""
    for r in rows:
        if r.get("cause"):
            print(f"  {name(r)}: {r['cause']}")


def _vcpu_list(args) -> int:
    result = _client(args).call("vcpu-list", domain=args.domain)
    print(format_vcpu_list(result["rows"], result["nr_cpus"]), end="")
    return 0


def _vcpu_pin(args) -> int:
    _client(args).call("vcpu-pin", domain=args.domain, vcpu=args.vcpu, cpus=args.cpus)
    return 0


def _sched_credit2(args) -> int:
    if args.weight is not None or args.cap is not None:
        if args.domain is None:
            raise UserError(f"sched-credit2: {'-w' if args.weight is not None else '-c'} "
                            "needs a domain (-d NAME)")
        _client(args).call("sched-credit2", domain=args.domain, weight=args.weight,
                           cap=args.cap)
        return 0
    result = _client(args).call("sched-credit2", domain=args.domain)
    print(format_sched_credit2(result["rows"], pool=args.domain is None), end="")
    return 0


def _dmesg(args) -> int:
    from domains.dom0.logtext import dmesg_lines

    # Guests write into this log: no control character of theirs reaches
    # the terminal, and a line of theirs says whose it is.
    print(dmesg_lines(str(_client(args).call("dmesg", clear=args.clear))), end="")
    return 0


def _xenstore_control(args) -> int:
    """xenstore-control: XS_CONTROL to the machine's xenstored, as Xen's
    tool sends it (quota, quota-soft, help ...)."""
    from domains.kernel.xenbus.client import XenStoreClient, XsError
    from domains.kernel.xenbus.transport import UnixTransport

    if hypervisor_pid(args.run_dir) is None:
        raise NotRunning(f"no pyxen system is running in {args.run_dir}")
    xs = XenStoreClient(UnixTransport(str(args.run_dir / "xenstored" / "socket")))
    try:
        reply = xs.control(*args.words)
    except XsError as exc:
        raise UserError(f"xenstore-control {' '.join(args.words)}: {exc}") from None
    finally:
        xs.close()
    print(reply.decode(errors="replace"), end="" if reply.endswith(b"\n") else "\n")
    return 0


def _wait(args) -> int:
    timeout = args.timeout
    client = ControlClient(args.run_dir, timeout_ms=int(timeout * 1000) + 5000)
    result = client.call("wait", domain=args.domain, until=args.until,
                         not_domid=args.not_domid, timeout=timeout)
    if "domid" in result:
        print(result["domid"])
    return 0


def _halt(args) -> int:
    pid = hypervisor_pid(args.run_dir)
    _client(args).call("halt")
    if pid is not None:
        _wait_exit(pid)
    print("The machine has halted.")
    return 0


def _wait_exit(pid: int) -> None:
    """Block until a (non-child) process ends: its pidfd becomes readable."""
    import select

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        select.select([fd], [], [], 60)
    finally:
        os.close(fd)


def _exec(args) -> int:
    """Run a command inside a domain's network namespace (like `ip netns exec`):
    setns into /proc/<pid>/ns/net of the domain's process, then exec, so the
    command keeps our stdin/stdout/tty and its exit status is ours."""
    import shutil

    from domains.kernel.netns import join_netns, netns_path
    from hypervisor.public.pyxen.tap import ROOT_REASON, NetnsError

    argv = list(args.argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise UserError("exec: no command given (pyxen exec DOMAIN -- COMMAND ARGS...)")
    rows = _client(args).call("list", domain=args.domain)
    pid = rows[0].get("pid") if rows else 0
    if not pid or not os.path.exists(f"/proc/{pid}"):
        raise UserError(f"exec: domain {args.domain} has no running process")
    program = shutil.which(argv[0])
    if program is None:
        raise UserError(f"exec: {argv[0]}: no such command")
    path = netns_path(pid)
    try:
        theirs, ours = os.stat(path), os.stat("/proc/self/ns/net")
    except FileNotFoundError:
        raise UserError(f"exec: domain {args.domain} has no running process") from None
    except OSError as exc:
        raise UserError(f"exec: cannot see {args.domain}'s network namespace ({path}: "
                        f"{exc.strerror}); {ROOT_REASON}") from None
    if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
        raise UserError(f"exec: {args.domain} has no network namespace of its own (no "
                        "guest networking: pyxen is not running as root, or the domain "
                        f"has no vif); not running {argv[0]} on the host")
    try:
        join_netns(path)
    except NetnsError as exc:
        raise UserError(f"exec: {args.domain}: {exc.strerror}") from None
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(program, argv)
    except OSError as exc:
        raise UserError(f"exec: {argv[0]}: {exc.strerror}") from None
    return 127  # not reached


def _no_sandbox(args) -> None:
    if args.no_sandbox:
        from domains.dom0.bench import common

        common.BOOT_ARGS = ["--no-sandbox"]


def _chaos(args) -> int:
    from domains.dom0.chaos.runner import command

    _no_sandbox(args)
    return command(args)


def _bench(args) -> int:
    from domains.dom0.bench import run_bench

    _no_sandbox(args)
    return run_bench(args)


RUN_DIR_HELP = ("the machine's run directory: its sockets, logs, consoles and disk "
                "images (default: $PYXEN_RUN_DIR, else /run/pyxen as root, else "
                "$XDG_RUNTIME_DIR/pyxen or /tmp/pyxen-<uid>)")

BOOT_HELP = """Boot a machine from a topology file (TOML; see deploy/topologies/default.toml,
which explains every key): the hypervisor, Domain-0 with the toolstack, then
the driver domains in file order, then the other domains.

A bad file is reported as one `file:line: key: message` error and nothing
starts. In the foreground, a terminal shows the domains live (as xl top,
redrawn every second) and a pipe gets a line per change; Ctrl-C, or the
reader of the pipe going away, halts the machine. With --detach it returns
once every domain runs; `pyxen halt` stops it.

Driver domains (driver_domain = true) serve the guests' disks and networks;
when one dies the toolstack restarts it under a new domid (restart_limit,
restart_backoff) and the guests' devices reconnect to it, nothing lost.
"""

CREATE_HELP = """Create one domain from an xl.cfg-style TOML file: the keys of a topology's
[domain.NAME] table at top level, plus `name`, e.g.

    name = "web"
    memory = 128
    vcpus = 1
    disk = ["backend=disk-dd, vdev=xvda, size=64M, target=web.img"]
    vif = ["backend=net-dd, bridge=xenbr0, ip=10.0.0.5"]
    workload = "demo"

Relative disk targets are images in the run directory's disks/ (created
sparse with size=). Devices' backends must be running driver domains.
"""

DESTROY_HELP = """\
Destroy a domain at once (xl destroy): its process is killed and its
memory freed, with no shutdown. A driver domain is destroyed as if it had
crashed: the guests it serves keep their devices, and its on_crash action
applies (restart, by default, within its restart_limit); the guests'
devices reconnect to the successor.
"""


SHUTDOWN_HELP = """\
Ask a domain to shut down (xl shutdown, through its control/shutdown node);
its on_poweroff action applies. A driver domain that serves devices is not
shut down unless --force is given: then those devices are removed and
their guests' frontends fail what is pending.
"""

REBOOT_HELP = """\
A running domain is asked to reboot (its on_reboot applies). A domain that
is stopped (crashed and preserved, or a driver domain the toolstack stopped
restarting: `pyxen list -v` says why) is started again, with a fresh
restart budget; a driver domain gets back the devices it served, and its
guests see them again. `restart` does the latter only.
"""


def _shutdown(args) -> int:
    _client(args).call("shutdown", domain=args.domain, force=args.force)
    print(f"Shutting down {args.domain}")
    return 0


def _reboot(args) -> int:
    result = _client(args).call(args.command, domain=args.domain)
    if isinstance(result, dict) and "domid" in result:
        print(f"Restarted {result['name']} (domid {result['domid']})")
    else:
        print(f"Rebooting {args.domain}")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"pyxen {version('pyxen')} (Xen 4.17 ABI)"
    except PackageNotFoundError:
        return "pyxen (not installed; Xen 4.17 ABI)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyxen", description=__doc__)
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--run-dir", type=Path, default=None, help=RUN_DIR_HELP)
    # Every command takes --run-dir after its name too; SUPPRESS keeps a
    # value given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--run-dir", type=Path, default=argparse.SUPPRESS, help=RUN_DIR_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common],
                              description=description or help[:1].upper() + help[1:] + ".",
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = command("boot", "boot a machine from a topology file", BOOT_HELP)
    p.add_argument("topology", nargs="?", help="TOML topology (default: the bundled "
                   "deploy/topologies/default.toml)")
    p.add_argument("--name", help="the machine's name in process titles, "
                   "pyxen[NAME]: dom1 disk-dd (default: the topology file's name; "
                   "NAME-2 ... if a machine of that name runs)")
    p.add_argument("--detach", action="store_true", help="return once every domain runs")
    p.add_argument("--log-json", action="store_true", help="JSON lines in the logs")
    p.add_argument("--no-sandbox", action="store_true",
                   help="FOR BENCHMARK COMPARISONS ONLY: run domains without their "
                        "sandbox (no namespaces, uid, seccomp or cgroups); never the default")
    p.set_defaults(func=_boot_command)

    p = command("list", "list domains (xl list)")
    p.add_argument("domain", nargs="?")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="grant-window memory used/cap; why domains stopped")
    p.set_defaults(func=_list)

    command("info", "machine information (xl info)").set_defaults(func=_info)

    p = command("create", "create a domain from an xl.cfg-style TOML file",
                       CREATE_HELP)
    p.add_argument("config", help="the domain's TOML file")
    p.set_defaults(func=_create)

    for name, done, text, description in (
            ("destroy", "Destroyed {domain}", "destroy a domain at once", DESTROY_HELP),
            ("pause", None, "pause a domain (its process stops)", None),
            ("unpause", None, "unpause a domain", None)):
        p = command(name, text, description)
        p.add_argument("domain", help="its name or domid")
        p.set_defaults(func=_simple(name, done))

    p = command("shutdown", "shut a domain down", SHUTDOWN_HELP)
    p.add_argument("domain", help="its name or domid")
    p.add_argument("--force", action="store_true",
                   help="a driver domain that serves devices too: they are removed")
    p.set_defaults(func=_shutdown)

    p = command("reboot", "reboot a domain; restart one that is stopped", REBOOT_HELP)
    p.add_argument("domain", help="its name or domid")
    p.set_defaults(func=_reboot)

    p = command("restart", "start a stopped domain again (crashed, or given up on)",
                REBOOT_HELP)
    p.add_argument("domain", help="its name or domid")
    p.set_defaults(func=_reboot)

    p = command("console", "attach to a domain's console (Ctrl-] detaches)")
    p.add_argument("domain")
    p.set_defaults(func=_console)

    p = command("exec", "run a command in a domain's network namespace "
                       "(pyxen exec guest1 -- ping 10.0.0.2)")
    p.add_argument("domain")
    p.add_argument("argv", metavar="command", nargs=argparse.REMAINDER,
                   help="the command and its arguments, after --")
    p.set_defaults(func=_exec)

    p = command("block-attach", "attach a disk (xl disk spec) to a domain")
    p.add_argument("domain")
    p.add_argument("spec", nargs="+", help="e.g. backend=disk-dd vdev=xvdb target=x.img "
                   "size=16M, or one comma-separated spec")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait for the device to connect (default 10; 0: do not "
                   "wait); past it, exit 1 naming its state and why")
    p.set_defaults(func=_block_attach)

    p = command("block-detach", "detach a disk from a domain")
    p.add_argument("domain")
    p.add_argument("vdev", help="xvdb, or the device number")
    p.set_defaults(func=_block_detach)

    p = command("block-list", "list a domain's disks (xl block-list)")
    p.add_argument("domain")
    p.set_defaults(func=_block_list)

    p = command("network-attach", "attach a vif (xl vif spec) to a domain")
    p.add_argument("domain")
    p.add_argument("spec", nargs="+", help="e.g. backend=net-dd bridge=xenbr0 ip=10.0.0.5")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait for the device to connect (default 10; 0: do not "
                   "wait); past it, exit 1 naming its state and why")
    p.set_defaults(func=_network_attach)

    p = command("network-detach", "detach a vif from a domain")
    p.add_argument("domain")
    p.add_argument("devid", type=int, help="the vif's index (see network-list)")
    p.set_defaults(func=_network_detach)

    p = command("network-list", "list a domain's vifs (xl network-list)")
    p.add_argument("domain")
    p.set_defaults(func=_network_list)

    p = command("vcpu-list", "list vCPUs (xl vcpu-list)")
    p.add_argument("domain", nargs="?")
    p.set_defaults(func=_vcpu_list)

    p = command("vcpu-pin", "set a vCPU's hard affinity")
    p.add_argument("domain")
    p.add_argument("vcpu", help="vCPU number or 'all'")
    p.add_argument("cpus", help="pCPUs: 'all', '0-1', '0,1', '^1'")
    p.set_defaults(func=_vcpu_pin)

    p = command("sched-credit2", "show or set credit2 weights and caps: the "
                       "CPU share and quota of the domain's cgroup (xl sched-credit2)")
    p.add_argument("-d", "--domain", help="the domain (name or id)")
    p.add_argument("-w", "--weight", help="set its weight, 1 to 65535 (default 256)")
    p.add_argument("-c", "--cap", help="set its cap: percent of one pCPU (0: none)")
    p.set_defaults(func=_sched_credit2)

    p = command("dmesg", "the hypervisor's log (xl dmesg)")
    p.add_argument("-c", "--clear", action="store_true", help="clear after reading")
    p.set_defaults(func=_dmesg)

    p = command("xenstore-control", "XS_CONTROL to xenstored (xenstore-control)",
                "Send xenstored a control command, as Xen's xenstore-control does:\n"
                "  quota                         the quotas\n"
                "  quota <domid>                 what a domain uses (and its own quotas)\n"
                "  quota set <name> <value>      change a quota for every domain\n"
                "  quota set <domid> <name> <v>  change it for one domain (the toolstack\n"
                "                                sizes a driver domain's for its devices)\n"
                "  help                          every command")
    p.add_argument("words", nargs="+", metavar="word", help="the command and its arguments")
    p.set_defaults(func=_xenstore_control)

    p = command("wait", "wait until a domain reaches a state (pyxen's own)")
    p.add_argument("domain")
    p.add_argument("--until", default="running",
                   choices=["running", "shutdown", "crashed", "gone"])
    p.add_argument("--not-domid", type=int, default=None,
                   help="with --until running: wait for a restart under a new domid")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    p.set_defaults(func=_wait)

    command("halt", "stop every domain and the hypervisor").set_defaults(
        func=_halt)

    p = command("bench", "benchmarks against a raw baseline")
    p.add_argument("what", choices=["evtchn", "xenstore", "blk", "net"])
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--iterations", type=int, default=2000,
                   help="measured round trips per measurement (default 2000)")
    p.add_argument("--no-sandbox", action="store_true",
                   help="boot without the sandbox: only to measure what it costs")
    p.set_defaults(func=_bench)

    p = command("chaos", "kill driver domains at random while guests verify "
                       "their I/O; report recovery times and lost blocks")
    p.add_argument("topology", nargs="?", help="TOML topology (default: bundled default)")
    p.add_argument("--target", help="driver domains to kill, comma-separated "
                   "(default: all of the topology's)")
    p.add_argument("--kills", type=int, default=20,
                   help="how many steps, each one to three kills (default 20)")
    p.add_argument("--timing", default="spaced",
                   help="when steps strike, comma-separated, drawn at random: spaced (one "
                   "kill), boot (then the successor while it boots), handshake (then the "
                   "successor once up), double, triple (kills in a row), reattach (detach and "
                   "attach a disk and a vif again under I/O); or all (default: spaced)")
    p.add_argument("--seed", type=int, default=1, help="of the random schedule (default 1)")
    p.add_argument("--min-gap", type=float, default=0.05,
                   help="seconds of normal running before a kill, at least (default 0.05)")
    p.add_argument("--max-gap", type=float, default=0.5,
                   help="... and at most (default 0.5)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-sandbox", action="store_true",
                   help="boot without the sandbox: only to measure what it costs")
    p.set_defaults(func=_chaos)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.run_dir is None:
        args.run_dir = default_run_dir()
    try:
        return args.func(args)
    except (UserError, NotRunning, CommandFailed) as exc:
        print(f"pyxen: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
