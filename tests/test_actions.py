"""xl.cfg's on_* actions and the restart budget (pure)."""

import dataclasses
from typing import Any

import pytest

from domains.dom0 import actions
from domains.dom0.topology import DomainConfig
from hypervisor.public.sched import (
    SHUTDOWN_crash,
    SHUTDOWN_poweroff,
    SHUTDOWN_reboot,
    SHUTDOWN_watchdog,
)

pytestmark = pytest.mark.timeout(10)


def config(**overrides: Any) -> DomainConfig:
    base = DomainConfig(name="g", memory=64, maxmem=64, vcpus=1, maxvcpus=1, cpus=None,
                        on_poweroff="destroy", on_reboot="restart", on_crash="preserve",
                        on_watchdog="rename-restart", driver_domain=False, workload="idle",
                        extra="", disks=(), vifs=(), restart_limit=(2, 10.0),
                        restart_backoff=(0.25, 8.0), source="t", line=1)
    return dataclasses.replace(base, **overrides)


@pytest.mark.parametrize("reason,expected", [
    (SHUTDOWN_poweroff, "destroy"), (SHUTDOWN_reboot, "restart"),
    (SHUTDOWN_crash, "preserve"), (SHUTDOWN_watchdog, "rename-restart")])
def test_each_reason_picks_its_key(reason, expected):
    assert actions.configured_action(config(), reason) == expected


def test_restart_budget_gives_up_past_n_in_t_and_recovers_after_t():
    cfg = config(on_crash="restart")
    budget = actions.RestartBudget(*cfg.restart_limit)
    assert actions.decide(cfg, SHUTDOWN_crash, budget, 0.0) == "restart"
    assert actions.decide(cfg, SHUTDOWN_crash, budget, 1.0) == "restart"
    assert actions.decide(cfg, SHUTDOWN_crash, budget, 2.0) == actions.GIVE_UP
    assert actions.decide(cfg, SHUTDOWN_crash, budget, 11.5) == "restart"


def test_destroy_does_not_spend_the_budget():
    cfg = config(on_crash="destroy")
    budget = actions.RestartBudget(1, 10.0)
    assert actions.decide(cfg, SHUTDOWN_crash, budget, 0.0) == "destroy"
    assert not budget.history


def test_restarts_back_off_within_the_window():
    budget = actions.RestartBudget(5, 60.0)
    delays = []
    for now in (0.0, 1.0, 2.0, 3.0):
        assert budget.allow(now)
        delays.append(budget.backoff())
    assert delays == [0.0, 0.25, 0.5, 1.0]
    assert budget.allow(100.0) and budget.backoff() == 0.0  # the window moved on


def test_back_off_is_configurable_and_can_be_turned_off():
    budget = actions.RestartBudget(5, 60.0, 1.0, 3.0)
    delays = []
    for now in (0.0, 1.0, 2.0, 3.0):
        assert budget.allow(now)
        delays.append(budget.backoff())
    assert delays == [0.0, 1.0, 2.0, 3.0]
    none = actions.RestartBudget(5, 60.0, 0.0, 0.0)
    assert none.allow(0.0) and none.allow(0.1) and none.backoff() == 0.0
