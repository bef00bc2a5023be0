"""The package layers hold: every import of every module is parsed (ast,
module level and inside functions alike) and checked against the rule the
README states.

- The hypervisor imports nothing of domains/, backends/, frontends/ or
  deploy/, and names no domain module by string either: its loader
  (`pyxen boot`) hands it the kernels' entry points.
- The kernel library (domains.kernel) imports nothing of domains.dom0,
  domains.driver, domains.guest, frontends or backends.
- A frontend or a backend imports only hypervisor.public, domains.kernel
  and its own package (besides the standard library and third-party
  packages): so no backend imports a frontend, nor the reverse.

Strings handed to importlib (the standby's pre-imports in
domains/kernel/boot.py) are not imports: the domain side names what its
processes load.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.harness import REPO

#: The project's top-level packages; any other import is the standard
#: library's or a third party's, and allowed everywhere.
PROJECT = ("hypervisor", "domains", "backends", "frontends", "deploy", "tests")
CHECKED = ("hypervisor", "domains", "backends", "frontends", "deploy")

# A string that is a dotted path into a domain-side package, e.g.
# "domains.dom0.main:main" or "domains.kernel.boot" (a path with slashes, in
# a message or a docstring, is not one).
DOMAIN_MODULE_NAME = re.compile(r"^(domains|backends|frontends|deploy)(\.\w+)+(:\w+)?$")


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def forbidden(importer: str, imported: str) -> bool:
    """Whether module `importer` may not import module `imported`."""
    if imported.split(".")[0] not in PROJECT:
        return False  # the standard library or a third party
    if _within(importer, "hypervisor"):
        return not _within(imported, "hypervisor")
    if _within(importer, "domains.kernel"):
        return any(_within(imported, p) for p in
                   ("domains.dom0", "domains.driver", "domains.guest", "frontends",
                    "backends", "tests"))
    if importer.split(".")[0] in ("frontends", "backends"):
        own = ".".join(importer.split(".")[:2])  # backends.netback, frontends.blkfront
        return not any(_within(imported, p) for p in
                       ("hypervisor.public", "domains.kernel", own))
    return False


def _module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(root: Path, dotted: str) -> bool:
    path = root.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(rel: Path, source: str, root: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in `source`, the module at `rel`
    (relative to `root`). `from P import name` counts as P.name when that
    is a module of its own, else as P; relative imports are resolved."""
    this = _module_name(rel)
    package = this if rel.name == "__init__.py" else this.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source, str(rel))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                found.append((node.lineno, sub if _is_module(root, sub) else base))
    return found


def names_of_domain_modules(source: str, rel: Path) -> list[tuple[int, str]]:
    """(line, string) of every string constant naming a domain-side module."""
    return [(node.lineno, node.value) for node in ast.walk(ast.parse(source, str(rel)))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and DOMAIN_MODULE_NAME.match(node.value)]


def check_source(rel: Path, source: str, root: Path = REPO) -> list[str]:
    """Each forbidden edge of one module, as "file:line: module"."""
    importer = _module_name(rel)
    bad = list(dict.fromkeys(  # one line per module, however many names it gives
        f"{rel}:{line}: {module}" for line, module in imports(rel, source, root)
        if forbidden(importer, module)))
    if _within(importer, "hypervisor"):
        bad += [f"{rel}:{line}: {name!r} (names a domain module)"
                for line, name in names_of_domain_modules(source, rel)]
    return bad


def violations(root: Path = REPO) -> list[str]:
    found = []
    for top in CHECKED:
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root)
            found += check_source(rel, path.read_text(), root)
    return found


def test_the_layers_hold():
    bad = violations()
    assert not bad, "forbidden imports:\n" + "\n".join(bad)


def test_every_package_is_checked():
    # A file the walk missed (or a package renamed away) would pass unseen.
    # (deploy/ holds only its package marker.)
    for top in ("hypervisor", "domains", "backends", "frontends"):
        assert len(list((REPO / top).rglob("*.py"))) > 5, top


# -- the checker itself, on sources made to break the rule --

BACKEND_IMPORTING_FRONTENDS = '''
import os
import frontends.netfront.device
from hypervisor.public.io import netif
from domains.kernel.netns import create_tap


def late():
    from frontends.netfront import rx
    from ..blkback import io
    from . import device
    from domains.dom0 import toolstack
'''


def test_the_checker_reports_each_forbidden_import_with_its_line():
    rel = Path("backends/netback/uplink.py")
    assert check_source(rel, BACKEND_IMPORTING_FRONTENDS) == [
        "backends/netback/uplink.py:3: frontends.netfront.device",
        "backends/netback/uplink.py:9: frontends.netfront.rx",     # inside a function
        "backends/netback/uplink.py:10: backends.blkback.io",      # relative, not its own
        "backends/netback/uplink.py:12: domains.dom0.toolstack",
    ]


@pytest.mark.parametrize("rel, source, edge", [
    ("frontends/netfront/bus.py", "from backends.netback.uplink import Uplink\n",
     "backends.netback.uplink"),
    ("frontends/blkfront/x.py", "import hypervisor.jail.confine\n", "hypervisor.jail.confine"),
    ("hypervisor/jail/uplinks.py", "from domains.kernel.netns import create_tap\n",
     "domains.kernel.netns"),
    ("hypervisor/machine.py", "def f():\n    import backends\n", "backends"),
    ("hypervisor/x.py", "from deploy import topologies\n", "deploy"),
    ("hypervisor/x.py", "import frontends.netfront\n", "frontends.netfront"),
    ("domains/kernel/boot.py", "def f():\n    from backends.netback.uplink import x\n",
     "backends.netback.uplink"),
    ("domains/kernel/xenbus/x.py", "from ...dom0 import toolstack\n", "domains.dom0.toolstack"),
    ("domains/kernel/x.py", "from domains import guest\n", "domains.guest"),
    ("domains/kernel/x.py", "import domains.driver.main\n", "domains.driver.main"),
    ("domains/kernel/x.py", "from frontends.netfront import device\n",
     "frontends.netfront.device"),
])
def test_the_checker_refuses(rel, source, edge):
    [violation] = check_source(Path(rel), source)
    assert violation.endswith(f": {edge}") and violation.startswith(f"{rel}:")


@pytest.mark.parametrize("rel, source", [
    ("backends/netback/x.py", ("from backends.netback.device import Frame\n"
                               "from .rx import plan_rx\nimport msgpack, os\n"
                               "from hypervisor.public.pyxen.tap import Tap\n"
                               "from domains.kernel import vnet\n")),
    ("domains/kernel/boot.py", ("from hypervisor.jail import confine\n"
                                "STANDBY = ('domains.driver.main', 'domains.guest.workloads')\n")),
    ("domains/dom0/cli.py", "from backends.netback import uplink\nimport frontends\n"),
    ("hypervisor/x.py", "'''see domains/kernel/boot.py'''\nfrom hypervisor.public import xen\n"),
])
def test_the_checker_allows(rel, source):
    assert check_source(Path(rel), source) == []


def test_the_hypervisor_may_not_name_a_domain_module_by_string():
    source = 'DOM0_KERNEL = "domains.dom0.main:main"\nARGV = ["-m", "domains.kernel.boot"]\n'
    assert check_source(Path("hypervisor/__main__.py"), source) == [
        "hypervisor/__main__.py:1: 'domains.dom0.main:main' (names a domain module)",
        "hypervisor/__main__.py:2: 'domains.kernel.boot' (names a domain module)",
    ]
