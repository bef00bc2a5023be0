"""Doorbells: the connected endpoints the hypervisor hands to the two ends of
interdomain event channels.

Once a port is bound interdomain, its kernels may raise it without a
hypercall, as a doorbell page would: each rings the other over a Unix
stream socket pair the hypervisor made for that pair of domains at their
first bind (and reuses for later channels between them). Each domain gets
its end over its memory channel, tagged with the peer's domid, and the
hypervisor closes its own copies at once. An end is a capability, not a
path: a domain can ring only a domain it is bound to, and the receiver
knows who rang from the end the ring came in on. It accepts a ring only on
a port bound interdomain to that peer (domains/kernel/events.py), so it
must learn each binding before the first ring of it can arrive: the owner
of the bound port is told before the binder's hypercall is answered.

Messages (msgpack maps on the memory channel, domains/kernel/memchan.py):

  bind    {port, peer, remote_port, ring} [+ the end to peer]: `port` is
          bound interdomain to peer's `remote_port`; `ring`: whether the
          peer knows it, so that we may ring it there
  unbind  {port, peer}: peer closed its end; `port` is unbound again
  unbell  {peer}: peer is gone; close the end to it

Every send is best effort and never blocks (hypervisor/memchan.py): when
the owner cannot be told, the binder is answered "doorbell": False and
uses EVTCHNOP_send for that port, which always works.

A binder's messages to the owner are charged to the binder: the owner's
memory channel is also where its grant windows come, and a peer that may
bind a port of it (in Xen, once bound and closed, a port waits for the
same peer to bind it again) could otherwise bind and close in a loop until
that channel is full. Each peer may have at most NOTICES_PER_PEER messages
in an owner's channel that the owner has not read (a bind counts for its
unbind too); past that, its bind fails with EBUSY until the owner has read
its channel. The doorbell ends themselves go once per pair of domains.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence

from hypervisor.memchan import MemChannel
from hypervisor.public.errno import EBUSY, XenError

ChannelOf = Callable[[int], "MemChannel | None"]

#: Messages one peer may have waiting, unread, in an owner's memory channel
#: (of the ~270 it holds): what one bind and close costs is 2.
NOTICES_PER_PEER = 16


class DoorbellBroker:
    def __init__(self, channel_of: ChannelOf) -> None:
        self.channel_of = channel_of  # domid -> its memory channel, None if gone
        # domid -> peers it holds an end to (as far as the hypervisor handed
        # them over; a kernel drops an end only when its peer's is gone).
        self.held: dict[int, set[int]] = {}
        # owner -> peer -> messages sent to the owner on the peer's account
        # since the owner last had nothing unread.
        self.charged: dict[int, dict[int, int]] = {}

    def _holds(self, domid: int, peer: int) -> bool:
        return peer in self.held.get(domid, ())

    def _send(self, domid: int, meta: dict, fds: Sequence[int] = ()) -> bool:
        channel = self.channel_of(domid)
        if channel is None:
            return False
        try:
            channel.send(meta, fds)
        except XenError:
            return False
        return True

    def admit(self, binder: int, owner: int) -> None:
        """May `binder` bind a port of `owner` now? XenError(EBUSY) while it
        has NOTICES_PER_PEER messages unread in the owner's channel. Asked
        before the binding is made: a refused bind changes nothing."""
        if binder == owner:
            return
        charged = self.charged.get(owner)
        if not charged or charged.get(binder, 0) + 2 <= NOTICES_PER_PEER:
            return
        channel = self.channel_of(owner)
        if channel is None or channel.queued() == 0:
            charged.clear()  # it has read all we told it: everyone starts afresh
            return
        raise XenError(EBUSY, f"d{owner} has not read the last {charged[binder]} "
                       f"messages about d{binder}'s channels yet")

    def _charge(self, owner: int, peer: int, n: int) -> None:
        charged = self.charged.setdefault(owner, {})
        charged[peer] = charged.get(peer, 0) + n

    def bound(self, binder: int, port: int, owner: int, owner_port: int) -> bool:
        """`binder` bound its `port` to `owner`'s `owner_port`: tell both,
        handing them a new pair of ends if either lacks one. True when both
        were told, so that the binder may ring.

        The order makes every ring arrive after the binding it needs: the
        binder is told first (before the owner can ring it), the owner next
        (before the binder's answer, after which it may ring); a kernel that
        finds a ring on a port it does not know reads its memory channel
        before refusing it. The binder's message says "ring": False, its
        answer says whether it may; the owner's says it at once."""
        if binder == owner:
            return False  # a loopback channel: the hypercall does it
        pair = None
        if not (self._holds(owner, binder) and self._holds(binder, owner)):
            # Whatever end one of them still has to the other is dead (its
            # partner was never handed over, or is closed): a new pair.
            self._drop(owner, binder)
            self._drop(binder, owner)
            pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            told_binder = self._send(
                binder, {"tag": "bind", "port": port, "peer": owner,
                         "remote_port": owner_port, "ring": False},
                [pair[1].fileno()] if pair else [])
            told_owner = self._send(
                owner, {"tag": "bind", "port": owner_port, "peer": binder,
                        "remote_port": port, "ring": told_binder},
                [pair[0].fileno()] if pair and told_binder else [])
            if told_owner:
                self._charge(owner, binder, 2)  # and its unbind, later
            if pair and told_binder and told_owner:
                self.held.setdefault(binder, set()).add(owner)
                self.held.setdefault(owner, set()).add(binder)
            return told_binder and told_owner
        finally:
            if pair:
                for end in pair:
                    end.close()

    def _drop(self, domid: int, peer: int) -> None:
        peers = self.held.get(domid)
        if peers is not None:
            peers.discard(peer)

    def unbound(self, owner: int, owner_port: int, closer: int) -> None:
        """`closer` closed its end of the channel to `owner_port`, which is
        unbound again: rings of it from `closer` are no longer accepted."""
        if owner != closer and self._holds(owner, closer):
            self._send(owner, {"tag": "unbind", "port": owner_port, "peer": closer})

    def forget(self, domid: int) -> None:
        """`domid` is gone: whoever holds an end to it closes that end (its
        ports were unbound with the domain)."""
        self.held.pop(domid, None)
        self.charged.pop(domid, None)
        for charged in self.charged.values():
            charged.pop(domid, None)
        for other, peers in self.held.items():
            if domid in peers:
                peers.discard(domid)
                self._send(other, {"tag": "unbell", "peer": domid})
