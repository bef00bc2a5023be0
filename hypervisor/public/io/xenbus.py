"""io/xenbus.h: the states a frontend and a backend move through.

Each end publishes its state in its own XenStore directory (`state` node)
and watches the other's. The usual dance (see io/blkif.h for a device's):
Initialising -> InitWait (backend ready for the frontend's details) ->
Initialised (frontend published its rings) -> Connected; Closing -> Closed
to tear down.
"""

import enum


class XenbusState(enum.IntEnum):
    Unknown = 0
    Initialising = 1
    InitWait = 2
    Initialised = 3
    Connected = 4
    Closing = 5
    Closed = 6
    Reconfiguring = 7
    Reconfigured = 8


XenbusStateUnknown = XenbusState.Unknown
XenbusStateInitialising = XenbusState.Initialising
XenbusStateInitWait = XenbusState.InitWait
XenbusStateInitialised = XenbusState.Initialised
XenbusStateConnected = XenbusState.Connected
XenbusStateClosing = XenbusState.Closing
XenbusStateClosed = XenbusState.Closed
XenbusStateReconfiguring = XenbusState.Reconfiguring
XenbusStateReconfigured = XenbusState.Reconfigured
