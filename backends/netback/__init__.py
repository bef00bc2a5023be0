"""netback: the PV network backend's protocol core (runs in the net driver domain).

Everything here is pure and free of rings, grants, event channels and
XenStore, so that the driver domain can wire those around it:

- :mod:`.tx` (guest transmit): decodes each 12-byte tx ring entry the
  frontend put on the ring (:func:`~.tx.parse_tx`, from a private copy) and
  assembles slots into packets (:class:`~.tx.TxAssembler`): a
  :class:`~.tx.TxPacket` to copy out of the granted pages and hand to the
  bridge, or a :class:`~.tx.TxError` naming the slots to answer with an
  error.  Every slot consumed gets exactly one response, and a bad packet
  never spoils the next one.
- :mod:`.rx` (guest receive): plans how a frame is copied into the pages
  the frontend posted (:func:`~.rx.plan_rx`: slots, flags, the GSO extra
  slot) and encodes the responses of both rings (:func:`~.rx.make_rx_response`,
  :func:`~.rx.make_tx_response`).
- :mod:`.bridge`: a learning Ethernet bridge connecting the vifs (and any
  other port) of the driver domain; time is passed in, nothing sleeps.

Per tx ring entry: ``result = assembler.feed(ring.get_request())``; for a
TxPacket grant-copy its ``segments()`` into one frame (a failed copy makes
the answer ``packet.responses(NETIF_RSP_ERROR)``), pass the frame to
``bridge.forward(port, frame)`` and answer ``packet.responses()``; for a
TxError answer ``error.responses()``.  Per frame for a vif: ``plan =
plan_rx(frame, posted_requests, features)``; None: wait for more rx
requests; RxDrop: count it; else do ``plan.copies()``, consume
``len(plan.slots)`` requests and put ``plan.responses(failed)``.
"""
