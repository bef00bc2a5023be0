"""A driver domain's kernel: an unprivileged domain that will host the
backends of one device class (blkback, netback). Until those arrive it
boots and waits, so that killing it shows the isolation of the rest."""

from __future__ import annotations

from domains.guest.workloads import idle
from domains.kernel.kernel import Kernel


def main(kernel: Kernel) -> None:
    idle(kernel)
