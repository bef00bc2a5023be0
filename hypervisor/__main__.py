"""Boot the hypervisor: `python -m hypervisor --run-dir D --platform JSON --dom0 JSON
--dom0-kernel ENTRY --domain-boot MODULE`.

Like Xen, it is handed the platform, Dom0's parameters and Dom0's kernel by
its loader (`pyxen boot`) and knows nothing of topologies nor of the domains'
code: it builds Dom0, and Dom0's toolstack builds everything else through
hypercalls, naming each domain's kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import setproctitle

from hypervisor.connections import raise_fd_limit
from hypervisor.jail import seccomp_policy
from hypervisor.jail.sandbox import Sandbox, sandbox_report
from hypervisor.loop import ZmqTransport, remove_dir, run
from hypervisor.machine import Machine, Platform
from hypervisor.public.errno import XenError
from hypervisor.public.pyxen.title import MACHINE_ENV, process_title
from hypervisor.xenlog import make_logger


def notify(fd: int | None, **event) -> None:
    if fd is not None:
        try:
            os.write(fd, (json.dumps(event) + "\n").encode())
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyxen-hypervisor")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--platform", required=True, help="JSON: name, pcpus, memory")
    parser.add_argument("--dom0", required=True,
                        help="JSON: memory, vcpus, cpus, weight, cmdline")
    parser.add_argument("--dom0-kernel", required=True,
                        help="Dom0's kernel: the entry point (module:function) its "
                             "process runs")
    parser.add_argument("--domain-boot", required=True,
                        help="the module every domain process runs (python -m MODULE, "
                             "standby processes too): it reads its start_info and "
                             "boots the kernel named there")
    parser.add_argument("--notify-fd", type=int, default=None,
                        help="pipe on which boot progress is reported (JSON lines)")
    parser.add_argument("--log-json", action="store_true")
    parser.add_argument("--machine", default=None,
                        help="the machine's name, shown in every process title")
    parser.add_argument("--no-sandbox", action="store_true",
                        help="domains without namespaces, seccomp or cgroups "
                             "(for benchmark comparisons only)")
    args = parser.parse_args(argv)

    if args.machine:
        os.environ[MACHINE_ENV] = args.machine  # every domain process inherits it
    setproctitle.setproctitle(process_title("hypervisor"))
    run_dir: Path = args.run_dir
    platform = Platform(**json.loads(args.platform))
    dom0 = json.loads(args.dom0)
    logger = make_logger(run_dir / "logs" / "hypervisor.log", args.log_json)
    # Before any thread exists: the probe forks.
    sandbox = Sandbox.probe(run_dir, enabled=not args.no_sandbox)
    if sandbox.enabled and sandbox.seccomp:
        # Its own filter too, before any thread exists (domains inherit it
        # and add their role's: the stricter of both applies).
        seccomp_policy.install_role("hypervisor", sandbox.learn)
        sandbox.note_role(os.getpid(), "hypervisor")
    transport = ZmqTransport(run_dir)
    machine = Machine(platform, run_dir, transport, logger, args.log_json, standby=True,
                      sandbox=sandbox, fd_limit=raise_fd_limit(),
                      boot_module=args.domain_boot)
    (run_dir / "hypervisor.pid").write_text(f"{os.getpid()}\n")

    def terminate(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    machine.log(f"pyxen hypervisor on platform '{platform.name}': "
                f"{platform.pcpus} pCPUs, {platform.memory} MiB")
    for line in sandbox_report(sandbox):
        machine.log(line)
    status = 0
    try:
        cmdline = dom0.get("cmdline", "")
        if args.notify_fd is not None:
            cmdline = f"{cmdline} notify_fd={args.notify_fd}".strip()
        machine.create_domain({
            "name": "Domain-0",
            "max_vcpus": dom0.get("vcpus", 1),
            "max_memkb": dom0["memory"] * 1024,
            "cpus": dom0.get("cpus"),
            "weight": dom0.get("weight"),
            "kernel": args.dom0_kernel,
            "cmdline": cmdline,
            "extra_fds": [args.notify_fd] if args.notify_fd is not None else [],
        }, domid=0, privileged=True)
        if args.notify_fd is not None:
            os.close(args.notify_fd)  # Dom0 holds it now
        run(machine, transport)
    except XenError as exc:
        notify(args.notify_fd, event="error", message=f"cannot build Domain-0: {exc}")
        machine.log(f"cannot build Domain-0: {exc}")
        status = 1
    except SystemExit:
        pass
    finally:
        machine.halt("hypervisor stopping: halting the machine")
        transport.close()
        sandbox.close()
        remove_dir(run_dir / "hv")
        (run_dir / "hypervisor.pid").unlink(missing_ok=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
