"""A net driver domain's uplinks, made by the privileged spawner.

An uplink is a TAP device in the host's network namespace (see
backends/netback/uplink.py). A sandboxed driver domain cannot make one: it
has no capability over the host's network, and its own namespace is empty.
So the hypervisor (root, in the host's namespace) creates each TAP the
toolstack asked for, with its addresses and offloads, and hands the driver
domain the file descriptor; its copy is closed once sent, so the TAP still
lives exactly as long as the driver domain's process.
"""

from __future__ import annotations

from hypervisor.public.pyxen.tap import TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, Tap


def create(config: dict) -> tuple[Tap, dict]:
    """The TAP of one uplink (`tap`, `ip` list, `mtu`, `mac`), and what the
    driver domain needs to know of it."""
    tap = Tap.create(str(config["tap"]), mac=config.get("mac"),
                     mtu=int(config.get("mtu") or 1500),
                     addresses=[str(a) for a in config.get("ip", ())], vnet_hdr=True)
    try:
        tap.set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
    except OSError:
        tap.close()
        raise
    return tap, {"tap": tap.name, "mac": tap.mac, "mtu": tap.mtu,
                 "ip": [str(a) for a in tap.addresses]}
