"""Text a domain hands over, made safe for an admin's terminal.

A domain chooses every byte it prints. Where its text lands in front of
the admin (the hypervisor's console and log, `pyxen dmesg`, console logs)
it must not drive the terminal (escape sequences: colours are the least of
it, some terminals answer queries or set the window title), hide itself
(carriage returns, bidi overrides that reorder what is shown) or pass for
somebody else's line. The hypervisor and Dom0 clean with the same rule.
"""

from __future__ import annotations

import re

# ESC sequences (CSI ... final, OSC/DCS/APC/PM ... ST or BEL, two-byte
# ones) and their 8-bit C1 forms, whole, so no half-sequence remains.
_ESCAPE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"             # CSI
    r"|\x1b[\]P_^X][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC, DCS, APC, PM, SOS
    r"|\x1b[ -/]*[0-~]?"                   # two-byte (and nF) sequences
    r"|\x9b[0-?]*[ -/]*[@-~]?"              # 8-bit CSI
    r"|[\x90\x9d\x9e\x9f\x98][^\x07\x1b\x9c]*(?:\x07|\x9c)?"  # 8-bit string controls
)
# C0 but tab, DEL, C1; and the Unicode format characters that reorder or
# hide text (bidi embeddings/overrides/isolates, marks) or a line break.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029"
                      r"\u202a-\u202e\u2066-\u2069]")


def clean_line(text: str) -> str:
    """One line with every control character and escape sequence removed."""
    return _CONTROL.sub("", _ESCAPE.sub("", text))


def clean_text(text: str) -> str:
    """Each line of `text` cleaned; the line structure stays."""
    return "\n".join(clean_line(line) for line in text.split("\n"))
