"""The XenStore nodes the toolstack writes for a domain (xenstore-paths).

Pure: returns (path, value, perms) triples; the toolstack writes them in one
transaction before it introduces the domain to xenstored, so that the
domain's first request already finds its directory. Permissions follow
libxl: the domain may read its directory but not change it, and owns the
few nodes it must write (control/shutdown, data, ...).
"""

from __future__ import annotations

import time

Node = tuple[str, str, list[str]]
CONSOLE_LIMIT = 1048576  # bytes of output xenconsoled buffers for a domain

# Nodes the domain owns (libxl's rwperm); everything else is Dom0's,
# readable by the domain (libxl's roperm).
DOMAIN_OWNED = ("control/shutdown", "control/feature-poweroff", "control/feature-reboot",
                "control/feature-suspend", "control/sysrq", "data", "drivers", "feature",
                "attr", "error")


def dom_path(domid: int) -> str:
    return f"/local/domain/{domid}"


def domain_nodes(domid: int, name: str, uuid: str, memory_kib: int, vcpus: int,
                 store: dict | None, console: dict | None,
                 now: float | None = None) -> list[Node]:
    """`store` and `console` are what the domain's kernel announced at boot:
    {"ring-ref": ..., "port": ...} for its xenstore and console rings."""
    base = dom_path(domid)
    vm = f"/vm/{uuid}"
    ro = ["n0", f"r{domid}"]
    rw = [f"n{domid}"]
    nodes: list[Node] = [
        (base, "", ro),
        (f"{base}/domid", str(domid), ro),
        (f"{base}/name", name, ro),
        (f"{base}/vm", vm, ro),
        (f"{base}/memory", "", ro),
        (f"{base}/memory/static-max", str(memory_kib), ro),
        (f"{base}/memory/target", str(memory_kib), ro),
        (f"{base}/cpu", "", ro),
        (f"{base}/device", "", ro),
        (f"{base}/control", "", ro),
    ]
    nodes += [(f"{base}/cpu/{i}/availability", "online", ro) for i in range(vcpus)]
    nodes += [(f"{base}/{node}", "", rw) for node in DOMAIN_OWNED]
    if store is not None:
        nodes += [(f"{base}/store/port", str(store["port"]), ro),
                  (f"{base}/store/ring-ref", str(store["ring-ref"]), ro)]
    if console is not None:
        nodes += [(f"{base}/console", "", ro),
                  (f"{base}/console/port", str(console["port"]), ro),
                  (f"{base}/console/ring-ref", str(console["ring-ref"]), ro),
                  (f"{base}/console/type", "xenconsoled", ro),
                  (f"{base}/console/limit", str(CONSOLE_LIMIT), ro)]
    nodes += [
        (vm, "", ["n0"]),
        (f"{vm}/name", name, ["n0"]),
        (f"{vm}/uuid", uuid, ["n0"]),
        (f"{vm}/start_time", f"{time.time() if now is None else now:.2f}", ["n0"]),
    ]
    return nodes


#: What one device costs its backend in XenStore, measured on a default
#: boot (a vbd's backend directory and blkback's nodes: ~30 nodes, ~3 KiB;
#: a vif's a little less), with room to spare; and the watches it holds.
NODES_PER_DEVICE = 40
WATCHES_PER_DEVICE = 2
MEMORY_PER_DEVICE = 8 * 1024
OUTSTANDING_PER_DEVICE = 1


def backend_quotas(devices: int) -> dict[str, int]:
    """A driver domain's XenStore quotas (CONTROL names) for `devices`
    devices served: Xen 4.17's defaults plus each device's share."""
    return {
        "nodes": 1000 + NODES_PER_DEVICE * devices,
        "watches": 128 + WATCHES_PER_DEVICE * devices,
        "memory": 2560 * 1024 + MEMORY_PER_DEVICE * devices,
        "outstanding": 20 + OUTSTANDING_PER_DEVICE * devices,
    }
