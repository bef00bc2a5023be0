"""Guest text on its way to the admin: cleaned, attributed, rate limited,
capped (domains/dom0/logtext.py; the cleaning rule, hypervisor/public/pyxen/text.py,
is the hypervisor's too)."""

from __future__ import annotations

import pytest

from domains.dom0.logtext import ConsoleLog, TokenBucket, dmesg_lines
from hypervisor.public.pyxen.text import clean_line, clean_text
from hypervisor.xenlog import printable

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("raw, shown", [
    ("plain text, \u00e9t\u00e9 \u2713", "plain text, \u00e9t\u00e9 \u2713"),
    ("tab\there", "tab\there"),
    ("\x1b[31mred\x1b[0m", "red"),
    ("\x1b]0;window title\x07after", "after"),
    ("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link"),
    ("\x1bPq#0;2;0;0;0\x1b\\sixel", "sixel"),
    ("\x9b31mc1 csi", "c1 csi"),
    ("\x1b[", ""),
    ("over\rwrite", "overwrite"),
    ("bell\x07 nul\x00 del\x7f bs\x08", "bell nul del bs"),
    ("\u202eevil\u202c \u2066iso\u2069", "evil iso"),
    ("line\u2028sep", "linesep"),
])
def test_clean_line(raw, shown):
    assert clean_line(raw) == shown
    assert printable(raw) == shown  # what the hypervisor's console keeps of it


def test_clean_text_keeps_lines():
    assert clean_text("a\x1b[1m\nb\r\n") == "a\nb\n"


def test_dmesg_marks_the_lines_a_guest_slipped_in():
    text = ("(XEN) [t] pyxen hypervisor\n"
            "(d3) [t] hello\x1b[2J\n"
            "second line of d3's write\n"
            "(XEN) [t] d0 toolstack: guest1 (d3) crashed\n")
    assert dmesg_lines(text).splitlines() == [
        "(XEN) [t] pyxen hypervisor",
        "(d3) [t] hello",
        "(d3) | second line of d3's write",
        "(XEN) [t] d0 toolstack: guest1 (d3) crashed",
    ]


def test_token_bucket():
    bucket = TokenBucket(rate=100, burst=300)
    assert bucket.take(250, now=0.0)
    assert not bucket.take(100, now=0.0)         # 50 left
    assert bucket.take(100, now=0.5)             # 0.5 s: 50 more
    assert not bucket.take(301, now=100.0)       # never more than the burst
    assert bucket.take(300, now=100.0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_console_log_lines_are_cleaned_and_prefixed(tmp_path):
    log = ConsoleLog(tmp_path / "g.log", "(d4)", Clock())
    log.feed(b"booted\r\n\x1b[31mred\x1b[0m and a par")
    log.feed(b"tial line\r\n(XEN) [t] d0 forged\rhidden\r\nunterminated")
    log.close()
    assert (tmp_path / "g.log").read_bytes().decode().splitlines() == [
        "(d4) booted",
        "(d4) red and a partial line",
        "(d4) (XEN) [t] d0 forgedhidden",
        "(d4) unterminated",
    ]


def test_console_log_rate_limit_says_what_it_dropped(tmp_path):
    clock = Clock()
    log = ConsoleLog(tmp_path / "g.log", "(d4)", clock, rate=1024, burst=2048)
    line = b"x" * 99 + b"\n"
    for _ in range(100):                     # 10000 bytes at once: 2000 pass
        log.feed(line)
    clock.now = 10.0                         # 10 s later, quiet since
    log.feed(b"back\n")
    log.close()
    lines = (tmp_path / "g.log").read_text().splitlines()
    assert len([x for x in lines if x.endswith("x" * 99)]) == 20
    assert "(d4) xenconsoled: output over 1 KiB/s, dropping" in lines
    assert "(d4) xenconsoled: dropped 8000 bytes of output" in lines
    assert lines[-1] == "(d4) back"


def test_console_log_is_capped_and_rotated(tmp_path):
    clock = Clock()
    log = ConsoleLog(tmp_path / "g.log", "(d4)", clock, rate=1e12, burst=1e12, limit=10_000)
    for i in range(5000):
        log.feed(b"line %d\n" % i)
    log.close()
    current, older = tmp_path / "g.log", tmp_path / "g.log.1"
    assert current.stat().st_size <= 10_000 and older.stat().st_size <= 10_000
    assert current.read_text().splitlines()[-1] == "(d4) line 4999"
    assert older.read_text().splitlines()[-1].startswith("(d4) line ")
    assert not (tmp_path / "g.log.2").exists()


def test_a_line_without_end_is_cut(tmp_path):
    log = ConsoleLog(tmp_path / "g.log", "(d4)", Clock())
    log.feed(b"y" * 10000)
    log.close()
    lengths = [len(x) for x in (tmp_path / "g.log").read_text().splitlines()]
    assert lengths == [5 + 4096, 5 + 4096, 5 + 10000 - 8192]
