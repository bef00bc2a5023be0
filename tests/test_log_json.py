"""With --log-json every line of every domain's log is JSON: structlog's
lines, and also whatever else a domain writes to its stdout and stderr
(prints, warnings, stdlib logging, tracebacks of exceptions no one
catches, in the main thread or another)."""

import json

import pytest

from tests.harness import Fifo

pytestmark = pytest.mark.timeout(120)


def test_every_line_of_every_log_is_json(system):
    out = Fifo(system.run_dir, "out")
    topology = system.write_topology(f"""
        [platform]
        pcpus = 2
        memory = 1024

        [dom0]
        memory = 256

        [domain.noisy]
        memory = 32
        workload = "tests.workloads:noisy_crash"
        extra = "out={out.path}"
        {Fifo.binds(out)}
        """)
    system.booted = True
    system.cli("boot", "--detach", "--log-json", str(topology))
    assert out.read_json() == {"raising": True}
    system.wait("noisy", "gone")
    system.halt()
    logs = sorted((system.run_dir / "logs").glob("*.log"))
    assert {p.stem for p in logs} >= {"hypervisor", "Domain-0", "noisy"}
    records = {}
    for path in logs:
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except ValueError:
                pytest.fail(f"{path.name}:{number} is not JSON: {line!r}")
            assert isinstance(record, dict), f"{path.name}:{number}: {line!r}"
        records[path.stem] = [json.loads(line) for line in lines]
    noisy = records["noisy"]
    events = [r.get("event") for r in noisy]
    assert "a plain print" in events and "of two lines" in events
    assert "a print to stderr" in events
    assert any("a warning" in (e or "") for e in events)
    assert any("a stdlib logging record" in (e or "") for e in events)
    logged = next(r for r in noisy if r.get("event") == "a logged exception")
    assert "ValueError: caught and logged" in logged["exception"]
    thread = next(r for r in noisy if r.get("event") == "uncaught exception in a thread")
    assert thread["thread"] == "boom"
    assert "RuntimeError: nobody catches this in its thread" in thread["exception"]
    panic = next(r for r in noisy if "RuntimeError: the kernel panics" in r.get("exception", ""))
    assert panic["domain"] == "noisy" and panic["level"] == "error"
