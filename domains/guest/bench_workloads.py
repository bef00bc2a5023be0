"""Workloads of `pyxen bench evtchn`: an event-channel ping-pong between two domains.

The bench runner (domains/dom0/bench/evtchn.py) boots a topology with two domains,
``ping`` first and ``pong`` second, and hands them named pipes (FIFOs) on the
kernel command line. Blocking FIFO opens and reads are the only
synchronisation; nothing here sleeps or polls.

  peer=FIFO    pong -> ping: pong's domid
  port=FIFO    ping -> pong: {"domid": ping's domid, "port": the unbound port}
  go=FIFO      runner -> ping: start measuring (the runner writes it once boot
               has completed, so boot work does not disturb the measurement)
  result=FIFO  ping -> runner: JSON {"samples_ns": [...]} (ping opens it first
               thing, so the runner sees EOF at once if ping dies)

Pong binds its end of the channel *before* it reports ready, so when the boot
completes the channel is connected. The ping-pong itself runs entirely on the
upcall threads: ping's handler times the round trip and sends the next ping,
pong's handler sends the notification straight back. No thread switch is
measured inside either domain.
"""

from __future__ import annotations

import json
import threading
import time

from domains.kernel.kernel import Kernel


def ping(kernel: Kernel) -> None:
    args = kernel.args
    n = int(args["n"])
    warmup = int(args.get("warmup", "0"))
    total = warmup + n
    # Opened before anything else: if this domain dies, the runner reads EOF.
    result = open(args["result"], "w")
    kernel.ready()  # lets the toolstack create pong

    with open(args["peer"]) as f:  # blocks until pong writes its domid
        pong_domid = int(f.readline())
    port = kernel.events.alloc_unbound(pong_domid)

    samples: list[int] = []
    done = threading.Event()
    send = kernel.events.send
    clock = time.perf_counter_ns
    t0 = [0]

    def on_pong(p: int) -> None:
        now = clock()
        samples.append(now - t0[0])
        if len(samples) >= total:
            done.set()
            return
        t0[0] = clock()
        send(p)

    kernel.events.bind(port, on_pong)
    with open(args["port"], "w") as f:
        f.write(json.dumps({"domid": kernel.domid, "port": port}) + "\n")
    kernel.log.info("bench: channel offered", peer=pong_domid, port=port)

    with open(args["go"]) as f:  # blocks until the runner says go
        f.readline()
    kernel.log.info("bench: measuring", iterations=n, warmup=warmup)
    t0[0] = clock()
    send(port)  # the first ping; every later one is sent by on_pong
    done.wait()
    kernel.log.info("bench: done", round_trips=len(samples))
    result.write(json.dumps({"samples_ns": samples[warmup:]}) + "\n")
    result.close()
    threading.Event().wait()  # stay up until the runner halts the machine


def pong(kernel: Kernel) -> None:
    args = kernel.args
    with open(args["peer"], "w") as f:  # ping is blocked reading it
        f.write(f"{kernel.domid}\n")
    with open(args["port"]) as f:
        offer = json.loads(f.readline())
    send = kernel.events.send
    local = kernel.events.bind_interdomain(offer["domid"], offer["port"],
                                           lambda p: send(p))
    kernel.log.info("bench: channel bound", peer=offer["domid"], port=local)
    kernel.ready()  # the boot completes with the channel connected
    threading.Event().wait()
