"""Device directories in XenStore (xenstore-paths, blkif.h), pure.

For a virtual block device the toolstack writes two directories:
  frontend  /local/domain/<fe>/device/vbd/<devid>            owned by the guest
  backend   /local/domain/<be>/backend/vbd/<fe>/<devid>      owned by the backend
each readable by the other end, each pointing at the other. Both start in
XenbusState Initialising; the drivers take it from there.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from domains.dom0.xlspec import DiskSpec, VifSpec
from domains.dom0.xsnodes import Node, dom_path
from hypervisor.public.io.xenbus import XenbusState


def vbd_frontend_path(fe: int, devid: int) -> str:
    return f"{dom_path(fe)}/device/vbd/{devid}"


def vbd_backend_path(be: int, fe: int, devid: int) -> str:
    return f"{dom_path(be)}/backend/vbd/{fe}/{devid}"


def vbd_nodes(fe: int, be: int, disk: DiskSpec, params: Path) -> list[Node]:
    devid = disk.virtual_device
    front, back = vbd_frontend_path(fe, devid), vbd_backend_path(be, fe, devid)
    fe_perms = [f"n{fe}", f"r{be}"]
    be_perms = [f"n{be}", f"r{fe}"]
    initialising = str(int(XenbusState.Initialising))
    nodes: list[Node] = [
        (f"{dom_path(be)}/backend", "", [f"n{be}"]),
        (f"{dom_path(be)}/backend/vbd", "", [f"n{be}"]),
        (f"{dom_path(be)}/backend/vbd/{fe}", "", [f"n{be}"]),
        (back, "", be_perms),
    ]
    nodes += [(f"{back}/{key}", value, be_perms) for key, value in (
        ("frontend", front),
        ("frontend-id", str(fe)),
        ("online", "1"),
        ("removable", "0"),
        ("bootable", "1"),
        ("state", initialising),
        ("dev", disk.vdev),
        ("type", "phy" if params.is_block_device() else "file"),
        ("mode", "r" if disk.readonly else "w"),
        ("params", str(params)),
        ("device-type", disk.devtype),
        ("discard-enable", "1" if disk.discard else "0"),
    )]
    nodes += [(front, "", fe_perms)]
    nodes += [(f"{front}/{key}", value, fe_perms) for key, value in (
        ("backend", back),
        ("backend-id", str(be)),
        ("state", initialising),
        ("virtual-device", str(devid)),
        ("device-type", disk.devtype),
    )]
    return nodes


def prepare_image(disk: DiskSpec, base: Path) -> Path:
    """The disk's backing path; a missing raw image is created sparse."""
    target = Path(disk.target)
    path = target if target.is_absolute() else base / target
    if path.exists():
        return path
    if disk.size is None:
        raise FileNotFoundError(f"disk {disk.vdev}: {path} does not exist and the "
                                "spec gives no size= to create it")
    if not target.is_absolute():
        # Inside the run directory: its own. Elsewhere the user's
        # directories are the user's to make (open fails, ENOENT).
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as f:
        f.truncate(disk.size)
    return path


def vif_frontend_path(fe: int, devid: int) -> str:
    return f"{dom_path(fe)}/device/vif/{devid}"


def vif_backend_path(be: int, fe: int, devid: int) -> str:
    return f"{dom_path(be)}/backend/vif/{fe}/{devid}"


def default_mac(name: str, devid: int) -> str:
    """A stable 00:16:3e (Xen's OUI) address from the domain name and index."""
    digest = hashlib.sha256(f"{name}/{devid}".encode()).digest()
    return "00:16:3e:" + ":".join(f"{b:02x}" for b in (digest[0] & 0x7F, digest[1], digest[2]))


def vif_nodes(fe: int, be: int, devid: int, vif: VifSpec, mac: str) -> list[Node]:
    front, back = vif_frontend_path(fe, devid), vif_backend_path(be, fe, devid)
    fe_perms = [f"n{fe}", f"r{be}"]
    be_perms = [f"n{be}", f"r{fe}"]
    initialising = str(int(XenbusState.Initialising))
    nodes: list[Node] = [
        (f"{dom_path(be)}/backend", "", [f"n{be}"]),
        (f"{dom_path(be)}/backend/vif", "", [f"n{be}"]),
        (f"{dom_path(be)}/backend/vif/{fe}", "", [f"n{be}"]),
        (back, "", be_perms),
    ]
    backend = {"frontend": front, "frontend-id": str(fe), "online": "1",
               "state": initialising, "handle": str(devid), "mac": mac,
               "bridge": vif.bridge, "type": "vif", "script": "vif-bridge"}
    if vif.ip:
        backend["ip"] = " ".join(vif.ip)
    if vif.mtu:
        backend["mtu"] = str(vif.mtu)
    nodes += [(f"{back}/{key}", value, be_perms) for key, value in backend.items()]
    nodes += [(front, "", fe_perms)]
    nodes += [(f"{front}/{key}", value, fe_perms) for key, value in (
        ("backend", back), ("backend-id", str(be)), ("state", initialising),
        ("handle", str(devid)), ("mac", mac))]
    return nodes


def device_cause(front_state: int, back_state: int | None, *, guest_paused: bool = False,
                 backend_name: str = "", backend_down: str = "",
                 backend_quota: str = "", frontend_quota: str = "") -> str:
    """Why a device is not Connected, in words for `block-list`,
    `network-list` and an attach that timed out ("" when it is).
    `back_state` None: the backend directory is gone."""
    connected = int(XenbusState.Connected)
    if front_state == connected and back_state == connected:
        return ""
    if guest_paused:
        return "the guest is paused"
    if backend_down:
        return f"backend {backend_name} is down ({backend_down})"
    if backend_quota:
        return f"backend {backend_name} hit its XenStore quota: {backend_quota}"
    if frontend_quota:
        return f"the guest hit its XenStore quota: {frontend_quota}"
    if back_state is None:
        return f"no backend directory in {backend_name or 'its backend'}"
    if back_state == int(XenbusState.Initialising):
        return f"backend {backend_name} has not picked the device up (no backend of that type?)"
    if front_state == int(XenbusState.Initialising):
        return "the guest has not started its frontend"
    names = {int(s): s.name for s in XenbusState}
    return (f"handshake: frontend {names.get(front_state, front_state)}, backend "
            f"{names.get(back_state, back_state)}")
