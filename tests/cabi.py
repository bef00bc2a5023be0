"""Check hypervisor.public against Xen's real C headers.

Every module ``hypervisor/public/<name>.py`` mirrors ``<xen/<name>.h>``,
and every module ``hypervisor/public/io/<name>.py`` ``<xen/io/<name>.h>``.
:func:`python_facts` walks the modules and lists what they claim about the
ABI: the value of every constant, the size and alignment of every ctypes
structure, the offset, size and signedness of every (nested) field, and
the size and signedness of every ``*_t`` type (and of the typedefs in
:data:`C_TYPEDEFS`).  :func:`generate_c` turns
the same walk into a C program that includes Xen's headers and prints the
same facts as C sees them; :func:`header_facts` compiles and runs it.  So a
constant or structure added to a module later is checked without touching
this file.

Python names map to C names unchanged except ``HYPERVISOR_x``, which is
Xen's ``__HYPERVISOR_x``, and the errno module, whose names are Xen's
``XEN_E*`` enumerators (those are compared as a whole: the C side lists
every ``XEN_ERRNO()`` in the header).  A constant may be a macro or an
enumerator of the module's header (C enums are found by reading the
header); a string constant is compared with a string macro.  The members
of a module's ``enum.IntEnum`` are constants too, named as in C when the
member's name is (``XS_CONTROL``), else with the class name prefixed
(``XenbusState.Connected`` is ``XenbusStateConnected``).  A table of
strings in :data:`C_STRING_TABLES` (``xsd_errors``) is compared entry by
entry with the header's array.  Names containing "pyxen" are pyxen's
own and are skipped; a constant that is neither in the headers nor in
:data:`C_EXPRESSIONS` is reported as missing.

The headers are read as Xen-on-ARM (AArch64) sees them: pyxen's ABI is
Xen-on-ARM's, and ARM's guest handles and ``xen_pfn_t`` differ from x86's.
"""

import ctypes
import enum
import pkgutil
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TypeGuard

import hypervisor.public
import hypervisor.public.io

XEN_INCLUDE = Path("/usr/include/xen")

Key = tuple[str, ...]
Facts = dict[Key, tuple[int | str, ...]]

#: Python constants that are no macro of Xen's, and the C that defines them.
C_EXPRESSIONS: dict[str, str] = {
    "PAGE_SHIFT": "XEN_PAGE_SHIFT",
    "PAGE_SIZE": "(1UL << XEN_PAGE_SHIFT)",
    "GRANT_ENTRIES_PER_FRAME_V1":
        "((1UL << XEN_PAGE_SHIFT) / sizeof(grant_entry_v1_t))",
    "XENCONS_IN_SIZE": "sizeof(((struct xencons_interface *)0)->in)",
    "XENCONS_OUT_SIZE": "sizeof(((struct xencons_interface *)0)->out)",
    "BLKIF_SRING_ENTRY_SIZE": "sizeof(union blkif_sring_entry)",
    "BLKIF_SRING_RING_OFFSET": "offsetof(struct blkif_sring, ring)",
    "SEGS_PER_INDIRECT_FRAME":
        "((1UL << XEN_PAGE_SHIFT) / sizeof(struct blkif_request_segment))",
    "XEN_BLKIF_REQS_PER_PAGE": "__CONST_RING_SIZE(blkif, 1UL << XEN_PAGE_SHIFT)",
    "NETIF_TX_SRING_ENTRY_SIZE": "sizeof(union netif_tx_sring_entry)",
    "NETIF_RX_SRING_ENTRY_SIZE": "sizeof(union netif_rx_sring_entry)",
    "NETIF_EXTRA_INFO_SIZE": "sizeof(struct netif_extra_info)",
    "XEN_NETIF_TX_RING_SIZE": "__CONST_RING_SIZE(netif_tx, 1UL << XEN_PAGE_SHIFT)",
    "XEN_NETIF_RX_RING_SIZE": "__CONST_RING_SIZE(netif_rx, 1UL << XEN_PAGE_SHIFT)",
    # Linux's names for io/netif.h's NETIF_RSP_*.
    "XEN_NETIF_RSP_DROPPED": "NETIF_RSP_DROPPED",
    "XEN_NETIF_RSP_ERROR": "NETIF_RSP_ERROR",
    "XEN_NETIF_RSP_OKAY": "NETIF_RSP_OKAY",
    "XEN_NETIF_RSP_NULL": "NETIF_RSP_NULL",
    # io/ring.h declares no ring itself: make one in a GNU statement
    # expression (the sizeofs use its typedefs: no -Wunused-local-typedefs).
    "SRING_HEADER_SIZE":
        "({ DEFINE_RING_TYPES(pyxen_hdr, uint8_t, uint8_t);"
        " offsetof(pyxen_hdr_sring_t, ring) + 0 * sizeof(pyxen_hdr_front_ring_t)"
        " + 0 * sizeof(pyxen_hdr_back_ring_t); })",
}

#: Types that are C typedefs although their names do not end in "_t".
C_TYPEDEFS = frozenset({"XENSTORE_RING_IDX", "XENCONS_RING_IDX", "RING_IDX"})

#: Python tuples of strings that mirror a C array: the C expression for
#: entry ``i`` (the array is named like the tuple).
C_STRING_TABLES: dict[str, str] = {
    "xsd_errors": "xsd_errors[i].errstring",
}

_CONSTANT_NAME = re.compile(r"_?[A-Z]\w*")

_PROLOGUE = r"""
#include <errno.h> /* io/xs_wire.h defines xsd_errors[] only #ifdef EINVAL */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/*
 * pyxen's ABI is Xen-on-ARM's: make the Xen headers pick arch-arm.h on any
 * (LP64) host.  Only Xen's headers, which include no system header, follow.
 */
#if !defined(__arm__) && !defined(__aarch64__)
#undef __i386__
#undef __x86_64__
#define __aarch64__ 1
#endif
/* domctl.h and sysctl.h are for the node control tools only. */
#define __XEN_TOOLS__ 1

#include <xen/xen.h>
#include <xen/io/ring.h> /* XEN_PAGE_SHIFT */
@INCLUDES@

#define SIGNED(x) _Generic((x), signed char: 1, short: 1, int: 1, long: 1, \
                           long long: 1, default: 0)
#define MEMBER(T, m) (((T *)0)->m)
#define CONST(mod, name, expr)                                            \
    if ((expr) < 0)                                                       \
        printf("const\t%s\t%s\t=\t%lld\n", mod, name, (long long)(expr)); \
    else                                                                  \
        printf("const\t%s\t%s\t=\t%llu\n", mod, name,                  \
               (unsigned long long)(expr));
#define MISSING(mod, name) printf("const\t%s\t%s\t=\tmissing\n", mod, name);
#define STRCONST(mod, name, expr) \
    printf("const\t%s\t%s\t=\t%s\n", mod, name, expr);
#define STRTABLE(mod, name, array, expr)                                 \
    for (size_t i = 0; i < sizeof(array) / sizeof((array)[0]); i++)     \
        printf("const\t%s\t%s[%zu]\t=\t%s\n", mod, name, i, expr);
#define TYPEDEF(T) \
    printf("typedef\t%s\t=\t%zu\t%d\n", #T, sizeof(T), SIGNED((T)0));
#define STRUCT(name, T) \
    printf("struct\t%s\t=\t%zu\t%zu\n", name, sizeof(T), _Alignof(T));
#define AGGREGATE(name, T, m)                                             \
    printf("field\t%s\t%s\t=\t%zu\t%zu\n", name, #m, offsetof(T, m),   \
           sizeof(MEMBER(T, m)));
#define SCALAR(name, T, m)                                                \
    printf("field\t%s\t%s\t=\t%zu\t%zu\t%d\n", name, #m, offsetof(T, m), \
           sizeof(MEMBER(T, m)), SIGNED(MEMBER(T, m)));

static void dump_errno(void)
{
/* List the hypervisor-internal values (EINTR, ERESTART) too. */
#define __XEN__ 1
#define XEN_ERRNO(name, value) printf("errno\t%s\t=\t%d\n", #name, value);
#include <xen/errno.h>
#undef __XEN__
}

static void dump_gnttab_error_msgs(void)
{
    static const char *const msgs[] = GNTTABOP_error_msgs;

    for (size_t i = 0; i < sizeof(msgs) / sizeof(msgs[0]); i++)
        printf("gnttab_msg\t%zu\t=\t%s\n", i, msgs[i]);
}

int main(void)
{
    dump_errno();
    dump_gnttab_error_msgs();
"""


def skip_reason() -> str | None:
    """Why the C comparison cannot run here, or None if it can."""
    if not XEN_INCLUDE.is_dir():
        return f"needs Debian's libxen-dev ({XEN_INCLUDE})"
    if shutil.which("cc") is None:
        return "needs a C compiler (cc) to compile against libxen-dev"
    return None


def abi_modules() -> list[ModuleType]:
    """Every module of hypervisor.public, each mirroring <xen/NAME.h>, and
    of hypervisor.public.io, each mirroring <xen/io/NAME.h>."""
    return [
        __import__(f"{package.__name__}.{info.name}", fromlist=["_"])
        for package in (hypervisor.public, hypervisor.public.io)
        for info in pkgutil.iter_modules(package.__path__)
        if not info.ispkg
    ]


def _short(module: ModuleType) -> str:
    """The header's name below <xen/>: "grant_table", "io/xs_wire"."""
    return module.__name__.removeprefix("hypervisor.public.").replace(".", "/")


def _is_errno(module: ModuleType) -> bool:
    return _short(module) == "errno"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _enum_c_name(cls: type, member: enum.Enum) -> str:
    return member.name if member.name.isupper() else cls.__name__ + member.name


def _constants(module: ModuleType) -> Iterator[tuple[str, str, int | str]]:
    """(Python name, C name, value) of every constant, IntEnum members
    included; strings are string macros."""
    for name, value in vars(module).items():
        if "pyxen" in name.lower():
            continue
        if _CONSTANT_NAME.fullmatch(name) and (_is_int(value) or isinstance(value, str)):
            yield name, _c_name(name), value if isinstance(value, str) else int(value)
        elif (isinstance(value, type) and issubclass(value, enum.IntEnum)
              and value.__module__ == module.__name__):
            for member in value:
                yield (f"{value.__name__}.{member.name}", _enum_c_name(value, member),
                       int(member))


def _string_tables(module: ModuleType) -> Iterator[tuple[str, tuple[str, ...]]]:
    for name in C_STRING_TABLES:
        table = vars(module).get(name)
        if isinstance(table, tuple) and all(isinstance(s, str) for s in table):
            yield name, table


def _aggregates(module: ModuleType) -> Iterator[type]:
    """The module's own ctypes structures and unions named as in C."""
    for name, value in vars(module).items():
        if (isinstance(value, type)
                and issubclass(value, (ctypes.Structure, ctypes.Union))
                and value.__module__ == module.__name__
                and not name.startswith("_")):
            yield value


def _typedefs(module: ModuleType) -> Iterator[tuple[str, type]]:
    for name, value in vars(module).items():
        if ((name.endswith("_t") or name in C_TYPEDEFS) and isinstance(value, type)
                and issubclass(value, ctypes._SimpleCData)):
            yield name, value


def _is_aggregate(ctype: type) -> TypeGuard[type[ctypes.Structure | ctypes.Union]]:
    return issubclass(ctype, (ctypes.Structure, ctypes.Union))


def _fields(ctype: type[ctypes.Structure | ctypes.Union], prefix: str = "", base: int = 0
            ) -> Iterator[tuple[str, int, type]]:
    """(C member designator, offset, ctypes type) of every nested field;
    an array also yields its element ``[0]``."""
    for name, ftype, *_ in ctype._fields_:
        designator = prefix + name
        offset = base + getattr(ctype, name).offset
        yield designator, offset, ftype
        yield from _inside(ftype, designator, offset)


def _inside(ftype: type, designator: str, offset: int
            ) -> Iterator[tuple[str, int, type]]:
    if _is_aggregate(ftype):
        yield from _fields(ftype, designator + ".", offset)
    elif issubclass(ftype, ctypes.Array):
        element = designator + "[0]"
        # typeshed has _type_ as an instance property; on an array class it
        # is the element's type.
        element_type: type = ftype._type_  # type: ignore[assignment]
        yield element, offset, element_type
        yield from _inside(element_type, element, offset)


def _scalar(ftype: type) -> bool:
    return not _is_aggregate(ftype) and not issubclass(ftype, ctypes.Array)


def _signed(ctype: type) -> int:
    if ctype is ctypes.c_char:
        return 0  # C's plain char: neither of SIGNED()'s signed types
    return int(ctype(-1).value < 0)


def _c_type(ctype: type) -> str:
    kind = "union" if issubclass(ctype, ctypes.Union) else "struct"
    return f"{kind} {ctype.__name__}"


def python_facts(modules: list[ModuleType]) -> Facts:
    """What the Python modules claim about Xen's ABI."""
    facts: Facts = {}
    for module in modules:
        for name, _, value in _constants(module):
            key = ("errno", name) if _is_errno(module) else (
                "const", _short(module), name)
            facts[key] = (value,)
        for name, table in _string_tables(module):
            for index, string in enumerate(table):
                facts["const", _short(module), f"{name}[{index}]"] = (string,)
        for name, ctype in _typedefs(module):
            facts["typedef", name] = (ctypes.sizeof(ctype), _signed(ctype))
        for ctype in _aggregates(module):
            name = ctype.__name__
            facts["struct", name] = (ctypes.sizeof(ctype),
                                     ctypes.alignment(ctype))
            for designator, offset, ftype in _fields(ctype):
                fact: tuple[int, ...] = (offset, ctypes.sizeof(ftype))
                if _scalar(ftype):
                    fact += (_signed(ftype),)
                facts["field", name, designator] = fact
        if hasattr(module, "GNTTABOP_error_msgs"):
            for index, message in enumerate(module.GNTTABOP_error_msgs):
                facts["gnttab_msg", str(index)] = (message,)
    return facts


def _c_name(name: str) -> str:
    return "__" + name if name.startswith("HYPERVISOR_") else name


_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL)
_ENUM_BODY = re.compile(r"\benum\b[^{;]*\{([^}]*)\}", re.DOTALL)
_ENUMERATOR = re.compile(r"\s*([A-Za-z_]\w*)\s*(?:=.*)?", re.DOTALL)


def header_enumerators(text: str) -> set[str]:
    """The enumerators the C header `text` declares."""
    text = _COMMENT.sub(" ", text)
    text = "\n".join(line for line in text.splitlines()
                     if not line.lstrip().startswith("#"))
    names = set()
    for body in _ENUM_BODY.findall(text):
        for item in body.split(","):
            match = _ENUMERATOR.fullmatch(item)
            if match:
                names.add(match.group(1))
    return names


def _enumerators(module: ModuleType) -> set[str]:
    try:
        return header_enumerators((XEN_INCLUDE / f"{_short(module)}.h").read_text())
    except OSError:
        return set()


def generate_c(modules: list[ModuleType]) -> str:
    """A C program printing, from Xen's headers, the facts of the modules."""
    includes = "\n".join(f"#include <xen/{_short(m)}.h>" for m in modules)
    lines = [_PROLOGUE.replace("@INCLUDES@", includes)]
    for module in modules:
        mod = _short(module)
        if not _is_errno(module):
            enumerators = _enumerators(module)
            for name, c_name, value in _constants(module):
                if name in C_EXPRESSIONS:
                    lines.append(
                        f'    CONST("{mod}", "{name}", {C_EXPRESSIONS[name]})')
                    continue
                macro = "STRCONST" if isinstance(value, str) else "CONST"
                found = f'    {macro}("{mod}", "{name}", {c_name})'
                lines += [f"#ifdef {c_name}", found, "#else",
                          found if c_name in enumerators and macro == "CONST"
                          else f'    MISSING("{mod}", "{name}")',
                          "#endif"]
            for name, _ in _string_tables(module):
                lines.append(f'    STRTABLE("{mod}", "{name}", {name}, '
                             f'{C_STRING_TABLES[name]})')
        for name, _ in _typedefs(module):
            lines.append(f"    TYPEDEF({name})")
        for ctype in _aggregates(module):
            name, c_type = ctype.__name__, _c_type(ctype)
            lines.append(f'    STRUCT("{name}", {c_type})')
            for designator, _, ftype in _fields(ctype):
                macro = "SCALAR" if _scalar(ftype) else "AGGREGATE"
                lines.append(f'    {macro}("{name}", {c_type}, {designator})')
    lines += ["    return 0;", "}", ""]
    return "\n".join(lines)


def _parse(value: str) -> int | str:
    try:
        return int(value)
    except ValueError:
        return value


def header_facts(modules: list[ModuleType], workdir: Path) -> Facts:
    """Compile and run generate_c(modules) in workdir; parse its output."""
    source = workdir / "abi.c"
    program = workdir / "abi"
    source.write_text(generate_c(modules))
    compiled = subprocess.run(
        ["cc", "-std=gnu11", "-Wall", "-o", str(program), str(source)],
        capture_output=True, text=True, timeout=50, check=False)
    if compiled.returncode != 0:
        raise RuntimeError(f"cc failed on {source}:\n{compiled.stderr}")
    output = subprocess.run([str(program)], capture_output=True, text=True,
                            check=True, timeout=10).stdout
    facts: Facts = {}
    for line in output.splitlines():
        fields = line.split("\t")
        split = fields.index("=")
        facts[tuple(fields[:split])] = tuple(map(_parse, fields[split + 1:]))
    return facts


def mismatches(python: Facts, c: Facts, kind: str | None = None) -> list[str]:
    """Readable differences between two fact sets (of one kind, if given)."""
    keys = sorted(k for k in python.keys() | c.keys()
                  if kind is None or k[0] == kind)
    return [f"{' '.join(key)}: python {python.get(key, 'missing')}, "
            f"C {c.get(key, 'missing')}"
            for key in keys if python.get(key) != c.get(key)]


def run_c_facts(workdir: Path, name: str, source: str) -> dict[str, int]:
    """Compile `source` (a program printing ``key=value`` lines) natively
    and return its facts; the caller skips first when cc or headers lack."""
    (workdir / f"{name}.c").write_text(source)
    subprocess.run(["cc", "-std=gnu11", "-Wall", "-o", str(workdir / name),
                    str(workdir / f"{name}.c")], check=True, timeout=50,
                   capture_output=True)
    output = subprocess.run([str(workdir / name)], check=True, timeout=10,
                            capture_output=True, text=True).stdout
    return {key: int(value) for key, value in
            (line.rsplit("=", 1) for line in output.splitlines())}
