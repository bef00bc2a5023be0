"""What the toolstack does when a domain stops: xl.cfg's on_* actions.

Pure policy: given why a domain stopped, its config and its restart
history, decide. The restart budget works like an OTP supervisor's
intensity: at most N restarts within T seconds, then the domain stays down.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from hypervisor.public.sched import (
    SHUTDOWN_crash,
    SHUTDOWN_poweroff,
    SHUTDOWN_reboot,
    SHUTDOWN_soft_reset,
    SHUTDOWN_suspend,
    SHUTDOWN_watchdog,
)

DESTROY, RESTART, PRESERVE, RENAME_RESTART = "destroy", "restart", "preserve", "rename-restart"
GIVE_UP = "give-up"


def configured_action(config, reason: int) -> str:
    """The on_* key xl.cfg applies for a shutdown reason."""
    if reason == SHUTDOWN_poweroff:
        return config.on_poweroff
    if reason in (SHUTDOWN_reboot, SHUTDOWN_soft_reset):
        return config.on_reboot
    if reason == SHUTDOWN_watchdog:
        return config.on_watchdog
    if reason == SHUTDOWN_suspend:
        return PRESERVE  # a suspended domain waits for its toolstack
    if reason == SHUTDOWN_crash:
        return config.on_crash
    return config.on_crash


@dataclass
class RestartBudget:
    limit: int
    period: float
    backoff_first: float = 0.25  # seconds before a second restart in the window
    backoff_cap: float = 8.0
    history: deque = field(default_factory=deque)

    def allow(self, now: float) -> bool:
        """Record a restart at `now` if the budget allows it."""
        while self.history and now - self.history[0] > self.period:
            self.history.popleft()
        if len(self.history) >= self.limit:
            return False
        self.history.append(now)
        return True

    def backoff(self) -> float:
        """Seconds to wait before the restart just allowed: none for the first
        in the window, then doubling (as a supervisor backs off a child that
        keeps dying), capped."""
        recent = len(self.history) - 1
        if recent <= 0:
            return 0.0
        return min(self.backoff_first * 2 ** (recent - 1), self.backoff_cap)


def decide(config, reason: int, budget: RestartBudget, now: float) -> str:
    action = configured_action(config, reason)
    if action in (RESTART, RENAME_RESTART) and not budget.allow(now):
        return GIVE_UP
    return action
