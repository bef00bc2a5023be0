"""netback: the PV network backend (runs in the net driver domain).

The protocol core is pure, free of rings, grants, event channels and
XenStore, and tested without processes; the ring entries' byte layouts
themselves are hypervisor.public.io.netif's, shared with netfront:

- :mod:`.tx` (guest transmit): assembles the tx ring entries the frontend
  put on the ring into packets (:class:`~.tx.TxAssembler`, and
  :class:`~.tx.TxBlock`, its fast path over a block of entries): a
  :class:`~.tx.TxPacket` to copy out of the granted pages and hand to the
  bridge, or a :class:`~.tx.TxError` naming the slots to answer with an
  error.  Every slot consumed gets exactly one response, and a bad packet
  never spoils the next one.
- :mod:`.rx` (guest receive): the responses of a frame put into the pages
  the frontend posted (:func:`~.rx.rx_response_block`, :func:`~.rx.scatter`),
  and :func:`~.rx.plan_rx`, the whole decision for one frame (drop, wait
  for buffers, which slots, flags, the GSO extra) as a pure planner: the
  oracle the switch's rx path is tested against (tests/test_netback_switch.py).
- :mod:`.offload`: what a frontend's checksum and GSO claims are worth, and
  the software fallback for a receiver that cannot take them.
- :mod:`.bridge`: a learning Ethernet bridge connecting the vifs (and any
  other port) of the driver domain; time is passed in, nothing sleeps.

Not pure: :mod:`.device` (the vifs as xenbus backend devices, and the
switch that runs their rings, maps their grants and moves frames between
them) and :mod:`.uplink` (the driver domain's link to the host), which
wire those cores to rings, grants, event channels, XenStore and TAPs.
"""
