"""Text output of ``pyxen list``, ``vcpu-list``, ``sched-credit2`` and ``info``,
byte-for-byte as xl prints it.

Scripts written against ``xl list`` / ``xl vcpu-list`` / ``xl info`` parse
fixed columns, so the formats below reproduce xl's printf formats exactly
(tools/xl/xl_info.c ``list_domains``/``output_*`` and tools/xl/xl_vcpu.c
``print_vcpuinfo``), including xl's quirks: the tab-separated ``list`` header,
``virt_caps`` having no space after its colon, and CPU maps printed as
``all`` / ``none`` / ``0-1,3`` by ``print_bitmap``.

Pure functions: plain dicts in, a string out.  Every returned string ends with
a newline, like xl's output, so the CLI can write it as is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "LIST_HEADER",
    "format_cpumap",
    "format_info",
    "format_list",
    "format_sched_credit2",
    "format_vcpu_list",
    "state_letters",
]

LIST_HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)"

# xl prints the shutdown reason in the fifth column, from this string indexed
# by libxl_shutdown_reason (poweroff, reboot, suspend, crash, watchdog, soft_reset).
_SHUTDOWN_REASON_LETTER = {
    "poweroff": "-",
    "reboot": "r",
    "suspend": "s",
    "crash": "c",
    "watchdog": "w",
    "soft_reset": "S",
}


def state_letters(flags: Mapping[str, Any]) -> str:
    """xl's six state columns ``rbpscd``, a dash where the flag is off.

    The fifth column is really xl's shutdown reason: ``c`` for a crash.  A
    row may give ``shutdown_reason`` (``reboot``, ``watchdog`` ...) to get the
    other letters xl prints there; otherwise ``crashed`` decides.
    """
    reason = flags.get("shutdown_reason")
    if flags.get("crashed"):
        fifth = "c"
    elif reason is not None and flags.get("shutdown"):
        fifth = _SHUTDOWN_REASON_LETTER.get(str(reason), "?")
    else:
        fifth = "-"
    return "".join(
        (
            "r" if flags.get("running") else "-",
            "b" if flags.get("blocked") else "-",
            "p" if flags.get("paused") else "-",
            "s" if flags.get("shutdown") else "-",
            fifth,
            "d" if flags.get("dying") else "-",
        )
    )


def format_list(rows: Iterable[Mapping[str, Any]], verbose: bool = False) -> str:
    """``xl list``: rows are dicts {name, domid, mem_mib, vcpus, <state flags>, cpu_time}.

    ``verbose`` (``list -v``) adds pyxen's column of grant-window memory each
    domain holds against its cap (rows' ``window_mib`` / ``max_window_mib``).
    """
    out = [LIST_HEADER + ("\tWindows(MiB)" if verbose else "")]
    for row in rows:
        line = "%-40s %5d %5d %5d     %s  %8.1f" % (
            row["name"],
            row["domid"],
            row["mem_mib"],
            row["vcpus"],
            state_letters(row),
            float(row.get("cpu_time", 0.0)),
        )
        if verbose:
            line += "  %12s" % f"{row.get('window_mib', 0)}/{row.get('max_window_mib', 0)}"
        out.append(line)
    return "\n".join(out) + "\n"


def _ranges(cpus: Sequence[int]) -> str:
    parts = []
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        parts.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(parts)


def format_cpumap(cpus: Iterable[int] | None, nr_cpus: int | None = None) -> str:
    """A CPU set as xl's ``print_bitmap`` prints it: ``all``, ``none`` or ``0-1,3``.

    None means "every CPU".  As in xl, CPUs at or above ``nr_cpus`` are not
    shown, and the set prints as ``all`` only when it holds every CPU below
    ``nr_cpus`` (so without ``nr_cpus`` a set is always printed as ranges).
    """
    if cpus is None:
        return "all"
    shown = sorted({c for c in cpus if nr_cpus is None or 0 <= c < nr_cpus})
    if not shown:
        return "none"
    if nr_cpus is not None and len(shown) == nr_cpus:
        return "all"
    return _ranges(shown)


def format_vcpu_list(rows: Iterable[Mapping[str, Any]], nr_cpus: int | None = None) -> str:
    """``xl vcpu-list``.

    Rows are dicts {name, domid, vcpu, cpu, online, running, blocked,
    cpu_time (seconds), hard_affinity, soft_affinity} where an affinity is a
    tuple of CPUs or None for all.  ``online`` defaults to True.  ``nr_cpus``
    is the host's pCPU count, used as xl uses it to decide what is ``all``.
    """
    out = ["%-32s %5s %5s %5s %5s %9s %s" % ("Name", "ID", "VCPU", "CPU", "State", "Time(s)",
                                             "Affinity (Hard / Soft)")]
    for row in rows:
        line = "%-32s %5d %5d" % (row["name"], row["domid"], row["vcpu"])
        if not row.get("online", True):
            line += "%5s %3s%sp " % ("-", "-", "-")
        else:
            line += "%5d %3s%s- " % (
                row["cpu"],
                "r" if row.get("running") else "-",
                "b" if row.get("blocked") else "-",
            )
        line += "%9.1f  " % float(row.get("cpu_time", 0.0))
        line += format_cpumap(row.get("hard_affinity"), nr_cpus)
        line += " / " + format_cpumap(row.get("soft_affinity"), nr_cpus)
        out.append(line)
    return "\n".join(out) + "\n"


def format_sched_credit2(rows: Iterable[Mapping[str, Any]], pool: bool = True) -> str:
    """``xl sched-credit2`` (tools/xl/xl_sched.c ``sched_credit2_domain_output``).

    Rows are dicts {name, domid, weight, cap}. Listing every domain, xl
    first prints the cpupool's line; pyxen has one pool and no pool
    parameters (no ratelimit), which xl prints as ``[sched params
    unavailable]``. With ``-d`` (``pool`` False) there is no pool line.
    """
    out = ["Cpupool Pool-0: [sched params unavailable]"] if pool else []
    out.append("%-33s %4s %6s %4s" % ("Name", "ID", "Weight", "Cap"))
    for row in rows:
        out.append("%-33s %4d %6d %4d" % (row["name"], row["domid"], row["weight"],
                                          row["cap"]))
    return "\n".join(out) + "\n"


def _hw_caps(v: Any) -> str:
    if isinstance(v, str):
        return v
    words = list(v) + [0] * (8 - len(list(v)))
    return ":".join("%08x" % w for w in words[:8])


def _virt_caps(v: Any) -> str:
    caps = v.split() if isinstance(v, str) else list(v)
    return "".join(" " + c for c in caps)


def _cpu_mhz(info: Mapping[str, Any]) -> str | None:
    if "cpu_khz" in info:
        khz = int(info["cpu_khz"])
        return "%d.%03d" % (khz // 1000, khz % 1000)
    if "cpu_mhz" in info:
        return str(info["cpu_mhz"])
    return None


def _xen_version(v: Mapping[str, Any]) -> str | None:
    if "xen_version" in v:
        return str(v["xen_version"])
    if "xen_major" in v and "xen_minor" in v:
        return f"{v['xen_major']}.{v['xen_minor']}{v.get('xen_extra', '')}"
    return None


def _platform_params(v: Mapping[str, Any]) -> str | None:
    if "platform_params" in v:
        return str(v["platform_params"])
    if "virt_start" in v:
        return "virt_start=0x%x" % int(v["virt_start"])
    return None


# (key, where it comes from).  The order is xl's: node info, physinfo, xen info.
_PHYS_KEYS = (
    "host", "release", "version", "machine",
    "nr_cpus", "max_cpu_id", "nr_nodes", "cores_per_socket", "threads_per_core",
    "cpu_mhz", "hw_caps", "virt_caps",
    "total_memory", "free_memory", "sharing_freed_memory", "sharing_used_memory",
    "outstanding_claims", "free_cpus",
)
_XEN_KEYS = (
    "xen_major", "xen_minor", "xen_extra", "xen_version", "xen_caps", "xen_scheduler",
    "xen_pagesize", "platform_params", "xen_changeset", "xen_commandline",
    "cc_compiler", "cc_compile_by", "cc_compile_domain", "cc_compile_date", "build_id",
)


def _info_lines(physinfo: Mapping[str, Any], versions: Mapping[str, Any]) -> list[str]:
    lines = []

    def emit(key: str, value: Any) -> None:
        if value is None:
            return
        if key == "virt_caps":
            lines.append("%-23s:%s" % (key, _virt_caps(value)))  # xl: no space after ':'
        else:
            lines.append("%-23s: %s" % (key, value))

    for key in _PHYS_KEYS:
        if key == "cpu_mhz":
            emit(key, _cpu_mhz(physinfo))
        elif key == "hw_caps":
            emit(key, _hw_caps(physinfo[key]) if key in physinfo else None)
        else:
            emit(key, physinfo.get(key))
    for key in _XEN_KEYS:
        if key == "xen_version":
            emit(key, _xen_version(versions))
        elif key == "platform_params":
            emit(key, _platform_params(versions))
        else:
            emit(key, versions.get(key))
    emit("xend_config_format", 4)
    return lines


def format_info(
    physinfo: Mapping[str, Any], versions: Mapping[str, Any], name: str | None = None
) -> str:
    """``xl info``: ``key : value`` lines for the keys present, in xl's order.

    ``physinfo`` carries the host keys (host, release, machine, nr_cpus,
    total_memory ... in MiB) and ``versions`` the Xen ones (xen_major,
    xen_caps, xen_scheduler ...); ``xen_version`` is derived as xl derives it.
    With ``name`` (``xl info NAME``) only the values of lines whose key starts
    with ``name`` are printed, as xl's prefix match does.
    """
    lines = _info_lines(physinfo, versions)
    if name is not None:
        picked = []
        for line in lines:
            colon = line.find(":")
            if line.startswith(name) and colon >= 0 and line[colon + 1 : colon + 2] == " ":
                picked.append(line[colon + 2 :])
        lines = picked
    return "".join(line + "\n" for line in lines)


TOP_HEADER = ("      NAME  STATE   CPU(sec) CPU(%)     MEM(k) MEM(%)  VCPUS  "
              "WIN(MiB)  NOTE")


def format_top(rows: Sequence[Mapping[str, Any]], previous: Mapping[str, float] | None,
               interval: float, total_mib: int, when: str, machine: str = "") -> str:
    """xentop's screen (``xl top``): a summary line of domain states, then a
    row per domain. CPU(%) is the CPU time a domain used since the previous
    screen (``previous``: name -> cpu_time) over ``interval`` seconds."""
    counts = {k: 0 for k in ("running", "blocked", "paused", "crashed", "dying", "shutdown")}
    for row in rows:
        for key in counts:
            counts[key] += bool(row.get(key))
    title = f"pyxen top - {when}" + (f"   machine {machine}" if machine else "")
    lines = [title,
             f"{len(rows)} domains: " + ", ".join(f"{n} {k}" for k, n in counts.items()),
             TOP_HEADER]
    for row in rows:
        cpu = float(row.get("cpu_time", 0.0))
        before = (previous or {}).get(row["name"])
        percent = (cpu - before) * 100 / interval if before is not None and interval > 0 else 0.0
        mem_k = int(row["mem_mib"]) * 1024
        lines.append("%10s %6s %10d %6.1f %10d %6.1f %6d %9s  %s" % (
            str(row["name"])[-10:], state_letters(row), int(cpu), max(percent, 0.0), mem_k,
            mem_k * 100 / (total_mib * 1024) if total_mib else 0.0, row["vcpus"],
            f"{row.get('window_mib', 0)}/{row.get('max_window_mib', 0)}", row.get("note") or ""))
    return "\n".join(lines) + "\n"
