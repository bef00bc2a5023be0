"""A domain's environment: an allow-list, not the launcher's whole one.

What the launcher's environment holds (tokens, credentials, the caller's
HOME ...) is none of a domain's business. A domain gets the locale, PATH,
PYTHONPATH (how a custom workload is found: see hypervisor/jail/binds.py)
and the interpreter's own switches; the start info comes separately.
"""

from __future__ import annotations

from collections.abc import Mapping

ALLOWED = frozenset({
    "PATH", "LANG", "LANGUAGE", "TZ",
    "PYTHONPATH", "PYTHONHASHSEED", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE",
    "PYTHONIOENCODING", "PYTHONFAULTHANDLER", "PYTHONWARNINGS", "PYTHONDEVMODE",
    "PYTHONUTF8", "PYTHONMALLOC",
    "PYXEN_MACHINE",  # the machine's name, for process titles
})


def domain_environment(environ: Mapping[str, str], **extra: str) -> dict[str, str]:
    """The allowed part of `environ` (and LC_* locale variables), plus `extra`."""
    env = {k: v for k, v in environ.items() if k in ALLOWED or k.startswith("LC_")}
    env.update(extra)
    return env
