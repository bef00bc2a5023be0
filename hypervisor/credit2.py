"""credit2's domain weight, carried out by the host's scheduler.

pyxen's vCPUs are host threads, so it is Linux's CFS that shares the host
CPUs among them; pyxen does not schedule vCPUs itself. A credit2 weight is a
relative share (a domain of weight 512 gets twice the CPU of one of 256 when
both want more than they get), and the CFS knob with that meaning is the
per-thread nice value: each nice step scales a thread's CFS load weight by
about 1.25 (kernel/sched/core.c, sched_prio_to_weight), so weight w becomes
nice -log(w / 256) / log(1.25).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

DEFAULT_WEIGHT = 256     # CSCHED2_DEFAULT_WEIGHT
MIN_WEIGHT = 1
MAX_WEIGHT = 65535       # xen_domctl_sched_credit2.weight is a uint16_t
NICE_MIN, NICE_MAX = -20, 19
CFS_STEP = 1.25          # CFS load weight ratio between adjacent nice values


def weight_to_nice(weight: int) -> int:
    """The Linux nice value whose CFS share matches a credit2 `weight`
    relative to the default 256 (nice 0): 512 -> -3, 128 -> +3."""
    if not MIN_WEIGHT <= weight <= MAX_WEIGHT:
        raise ValueError(f"weight {weight} is not between {MIN_WEIGHT} and {MAX_WEIGHT}")
    nice = round(-math.log(weight / DEFAULT_WEIGHT) / math.log(CFS_STEP))
    return max(NICE_MIN, min(NICE_MAX, nice))


def each_thread(pid: int, apply: Callable[[int], None],
                skip: frozenset[int] = frozenset()) -> int:
    """Call `apply(tid)` for every thread of process `pid` but those in
    `skip`; returns how many threads it was called for.

    Linux keeps nice and CPU affinity per thread, so setting the pid alone
    would leave the other threads as they were. A thread started while this
    runs inherits its creator's values, which may still be the old ones, so
    the task list is read again until a pass finds no new thread.
    Raises ProcessLookupError if the process is gone; a thread that ends
    meanwhile is passed over.
    """
    done: set[int] = set(skip)
    for _ in range(8):
        try:
            tids = {int(t) for t in os.listdir(f"/proc/{pid}/task")}
        except FileNotFoundError:
            raise ProcessLookupError(pid) from None
        new = tids - done
        if not new:
            break
        for tid in sorted(new):
            try:
                apply(tid)
            except ProcessLookupError:
                pass  # the thread ended meanwhile
        done |= new
    return len(done - skip)


def renice_threads(pid: int, nice: int) -> int:
    """Give every thread of process `pid` the nice value `nice` (each_thread);
    returns how many threads were set. PermissionError if the host refuses
    (a lower nice needs CAP_SYS_NICE or RLIMIT_NICE)."""
    return each_thread(pid, lambda tid: os.setpriority(os.PRIO_PROCESS, tid, nice))


def thread_nices(pid: int) -> dict[int, int]:
    """tid -> nice of every thread of `pid`, from /proc/<pid>/task/*/stat."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except FileNotFoundError:
            continue
        # Fields after the parenthesised comm (which may hold spaces): the
        # 19th field, nice, is the 17th after it.
        out[int(tid)] = int(stat.rsplit(")", 1)[1].split()[16])
    return out
