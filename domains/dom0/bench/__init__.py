"""`pyxen bench WHAT`: pyxen's cost measured against a raw baseline.

- evtchn: an interdomain event-channel round trip vs. a raw ZeroMQ round trip
  (evtchn.py);
- xenstore: XS_READ and XS_WRITE round trips to Dom0's xenstored over its unix
  socket vs. a raw unix-socket echo (xenstore.py);
- blk: 1 MiB sequential reads and writes and 4 KiB random reads through
  blkfront -> blkback vs. os.preadv / os.pwritev on the same image file
  (blk.py);
- net: TCP throughput with iperf3 from guest1 to guest2 over netfront ->
  netback + bridge vs. a veth pair between two network namespaces (net.py).

What both share (statistics, the throw-away machine, the command frame) is in
common.py.
"""

from __future__ import annotations

import sys


def run_bench(args) -> int:
    if args.what == "evtchn":
        from domains.dom0.bench.evtchn import run_bench as run
    elif args.what == "xenstore":
        from domains.dom0.bench.xenstore import run_bench as run
    elif args.what == "blk":
        from domains.dom0.bench.blk import run_bench as run
    elif args.what == "net":
        from domains.dom0.bench.net import run_bench as run
    else:
        print(f"pyxen: bench: unknown benchmark {args.what!r}", file=sys.stderr)
        return 1
    return run(args)
