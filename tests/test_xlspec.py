"""xl disk/vif/cpus spec parsing (domains/dom0/xlspec.py)."""

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from domains.dom0.xlspec import (
    DiskSpec,
    SpecError,
    UplinkSpec,
    VifSpec,
    parse_cpulist,
    parse_disk,
    parse_size,
    parse_uplink,
    parse_vif,
    virtual_device_number,
)

pytestmark = pytest.mark.timeout(30)


# --- disk specs ------------------------------------------------------------

# The equivalence groups given in xl-disk-configuration(5) (deprecated
# "raw:" forms excepted: pyxen does not accept them).
HDA_FORMS = [
    "/dev/vg/guest-volume,,hda",
    "/dev/vg/guest-volume,raw,hda,rw",
    "format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume",
]
CDROM_FORMS = [
    "/root/image.iso,,hdc,cdrom",
    "/root/image.iso,,hdc,,cdrom",
    "/root/image.iso,raw,hdc,devtype=cdrom",
    "format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/root/image.iso",
]


@pytest.mark.parametrize("spec", HDA_FORMS)
def test_doc_examples_disk(spec):
    assert parse_disk(spec) == DiskSpec(vdev="hda", target="/dev/vg/guest-volume")


@pytest.mark.parametrize("spec", CDROM_FORMS)
def test_doc_examples_cdrom(spec):
    d = parse_disk(spec)
    assert d == DiskSpec(vdev="hdc", target="/root/image.iso", devtype="cdrom", access="ro")
    assert d.readonly


def test_pyxen_form_with_backend_and_size():
    d = parse_disk("backend=disk-dd, vdev=xvda, size=64M, target=guest1.img")
    assert d.backend == "disk-dd"
    assert d.vdev == "xvda" and d.virtual_device == 51712
    assert d.target == "guest1.img"  # relative paths stay as written
    assert d.size == 64 << 20
    assert d.access == "rw" and d.format == "raw"


def test_positional_order_and_mixing():
    d = parse_disk("img.raw, raw, xvdb, ro")
    assert (d.target, d.format, d.vdev, d.access) == ("img.raw", "raw", "xvdb", "ro")
    # A named parameter takes its slot; positionals fill the rest in order.
    d = parse_disk("vdev=xvdc, img.raw, , w")
    assert (d.target, d.vdev, d.access) == ("img.raw", "xvdc", "rw")


def test_target_takes_rest_of_spec():
    d = parse_disk("vdev=xvda, target=/srv/a,b c ")
    assert d.target == "/srv/a,b c "


def test_flags():
    d = parse_disk("img,,xvda, direct-io-safe, no-discard, backendtype=qdisk")
    assert d.direct_io_safe and not d.discard and d.backendtype == "qdisk"


def test_empty_cdrom():
    d = parse_disk(",,hdc,cdrom")
    assert d.target is None and d.devtype == "cdrom"


@pytest.mark.parametrize(
    "spec, words",
    [
        ("img,qcow2,xvda", ["qcow2", "not supported by pyxen"]),
        ("img,vmdk,xvda", ["unknown format", "vmdk"]),
        ("img,,xvda,rx", ["access", "rx"]),
        ("img,raw", ["missing vdev"]),
        ("img,,xvda,rw,extra", ["'extra'", "too many positional"]),
        ("img,,xvda,colour=red", ["colour=red", "unknown disk parameter"]),
        ("vdev=xvda,vdev=xvdb,target=x", ["vdev=xvdb", "more than once"]),
        ("img,,xvda,size=12Q", ["12Q"]),
        ("img,,xvda,size=100", ["multiple of 512"]),
        ("img,,floppy", ["floppy"]),
        ("img,,sdq", ["sdq"]),
        ("img,,hde", ["hde"]),
        ("img,,hdc,cdrom,rw", ["cdrom", "writable"]),
        ("vdev=xvda", ["missing target"]),
        ("img,,xvda,backendtype=nbd", ["nbd"]),
        ("img,,xvda,colo", ["COLO", "not supported"]),
        ("img,,xvda,backend=bad name", ["bad name"]),
        ("vdev=xvda, target=guest.img, size=64M", ["size=64M", "put target= last"]),
    ],
)
def test_disk_errors_name_the_token(spec, words):
    with pytest.raises(SpecError) as e:
        parse_disk(spec)
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize(
    "vdev, number",
    [
        ("xvda", 202 << 8),
        ("xvdb", 202 << 8 | 1 << 4),
        ("xvda1", 202 << 8 | 1),
        ("xvdp", 202 << 8 | 15 << 4),
        ("xvdq", 1 << 28 | 16 << 8),
        ("xvdaa", 1 << 28 | 26 << 8),
        ("xvdtq37", 1 << 28 | 536 << 8 | 37),
        ("d536p37", 1 << 28 | 536 << 8 | 37),
        ("d0", 51712),
        ("sda", 8 << 8),
        ("sdb3", 8 << 8 | 1 << 4 | 3),
        ("hda", 3 << 8),
        ("hdb", 3 << 8 | 1 << 6),
        ("hdc", 22 << 8),
        ("hdc2", 22 << 8 | 2),
        ("hdd", 22 << 8 | 1 << 6),
        ("51712", 51712),
        ("0xca00", 51712),
        ("0145000", 51712),
    ],
)
def test_virtual_device_number(vdev, number):
    assert virtual_device_number(vdev) == number


def test_parse_size():
    assert parse_size("64M") == 64 << 20
    assert parse_size("1g") == 1 << 30
    assert parse_size("512K") == 512 << 10
    assert parse_size("4096") == 4096
    assert parse_size("2MiB") == 2 << 20


# --- vif specs -------------------------------------------------------------


def test_doc_examples_vif():
    v = parse_vif("mac=00:16:3E:74:3d:76,model=rtl8139,bridge=xenbr0")
    assert v.mac == "00:16:3e:74:3d:76"  # normalised to lower case
    assert v.bridge == "xenbr0"
    assert v.extra == {"model": "rtl8139"}
    assert parse_vif("mac=00:16:3E:74:34:32").mac == "00:16:3e:74:34:32"
    empty = parse_vif("")
    assert empty == VifSpec() and empty.mac is None and empty.backend == "Domain-0"


def test_pyxen_vif():
    v = parse_vif("backend=net-dd, bridge=xenbr0, mac=00:16:3e:00:00:01, ip=10.0.0.1 10.0.0.9, mtu=9000")
    assert v.backend == "net-dd"
    assert v.ip == ("10.0.0.1", "10.0.0.9")
    assert v.mtu == 9000


def test_vif_extra_keys_kept():
    v = parse_vif("rate=10Mb/s, netdev=eth0, script=vif-route, vifname=web0, type=vif")
    assert v.extra == {"rate": "10Mb/s", "gatewaydev": "eth0", "script": "vif-route", "type": "vif"}
    assert v.vifname == "web0"


@pytest.mark.parametrize(
    "spec, words",
    [
        ("mac=00:16:3e:00:00", ["00:16:3e:00:00"]),
        ("mac=01:16:3e:00:00:01", ["multicast"]),
        ("mac=zz:16:3e:00:00:01", ["zz:16"]),
        ("colour=blue", ["colour=blue", "unknown vif parameter"]),
        ("bridge", ["'bridge'", "key=value"]),
        ("ip=10.0.0.300", ["10.0.0.300"]),
        ("mtu=big", ["mtu=big"]),
        ("mtu=10", ["mtu", "10"]),
        ("bridge=a, bridge=b", ["bridge=b", "more than once"]),
        ("vifname=averyveryverylongname", ["averyveryverylongname"]),
    ],
)
def test_vif_errors_name_the_token(spec, words):
    with pytest.raises(SpecError) as e:
        parse_vif(spec)
    for w in words:
        assert w in str(e.value)


# --- cpus ------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, nr, expected",
    [
        ("all", 4, None),
        ("0-3,5,^1", 8, (0, 2, 3, 5)),
        ("all,^7", 8, (0, 1, 2, 3, 4, 5, 6)),
        ("^1", 4, (0, 2, 3)),
        ("1", None, (1,)),
        ([1, 0, 1], 2, (0, 1)),
    ],
)
def test_cpulist(spec, nr, expected):
    assert parse_cpulist(spec, nr) == expected


@pytest.mark.parametrize(
    "spec, nr, words",
    [
        ("0-2", 2, ["CPU 2", "2 pCPUs"]),
        ("3-1", 4, ["3-1"]),
        ("nodes:0", 4, ["NUMA"]),
        ("1,x", 4, ["'x'"]),
        ("0,^0", 4, ["no CPU"]),
        ("^1", None, ["number of pCPUs"]),
        ([True], 4, ["True"]),
    ],
)
def test_cpulist_errors(spec, nr, words):
    with pytest.raises(SpecError) as e:
        parse_cpulist(spec, nr)
    for w in words:
        assert w in str(e.value)


# --- dict round trips ------------------------------------------------------

_names = st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True)
_vdevs = st.one_of(
    st.from_regex(r"xvd[a-z]{1,3}", fullmatch=True),
    st.from_regex(r"sd[a-p]", fullmatch=True),
    st.from_regex(r"hd[a-d]", fullmatch=True),
)
disk_specs = st.builds(
    DiskSpec,
    vdev=_vdevs,
    target=st.text(min_size=1, max_size=40),
    access=st.sampled_from(["ro", "rw"]),
    backend=_names,
    backendtype=st.none() | st.sampled_from(["phy", "qdisk", "tap"]),
    script=st.none() | st.text(max_size=10),
    direct_io_safe=st.booleans(),
    discard=st.booleans(),
    size=st.none() | st.integers(1, 1 << 20).map(lambda n: n * 512),
)
_macs = st.lists(st.integers(0, 255), min_size=6, max_size=6).map(
    lambda b: ":".join(f"{x:02x}" for x in [b[0] & 0xFE] + b[1:])
)
_ips = st.ip_addresses().map(str)
vif_specs = st.builds(
    VifSpec,
    mac=st.none() | _macs,
    bridge=st.from_regex(r"[a-z0-9]{1,15}", fullmatch=True),
    ip=st.lists(_ips, max_size=3).map(tuple),
    backend=_names,
    vifname=st.none() | st.from_regex(r"[a-z0-9.]{1,15}", fullmatch=True),
    mtu=st.none() | st.integers(68, 65535),
    extra=st.dictionaries(st.sampled_from(["model", "rate", "type", "script"]), st.text(max_size=8)),
)


@given(disk_specs)
def test_disk_dict_round_trip(disk):
    assert DiskSpec.from_dict(disk.to_dict()) == disk
    # The toolstack sends these with msgpack.
    assert DiskSpec.from_dict(msgpack.unpackb(msgpack.packb(disk.to_dict()))) == disk


@given(vif_specs)
def test_vif_dict_round_trip(vif):
    assert VifSpec.from_dict(vif.to_dict()) == vif
    assert VifSpec.from_dict(msgpack.unpackb(msgpack.packb(vif.to_dict()))) == vif


def test_from_dict_validates():
    d = parse_disk("img,,xvda").to_dict()
    with pytest.raises(SpecError):
        DiskSpec.from_dict({**d, "format": "qcow2"})
    with pytest.raises(SpecError):
        DiskSpec.from_dict({**d, "bogus": 1})
    with pytest.raises(SpecError):
        DiskSpec.from_dict({**d, "vdev": 51712})
    with pytest.raises(SpecError):
        VifSpec.from_dict({**VifSpec().to_dict(), "mtu": True})


# --- uplinks (pyxen's) ---------------------------------------------------------


def test_uplink_spec_and_its_command_line_form():
    from backends.netback.uplink import UplinkConfig, parse_uplink_arg

    u = parse_uplink("bridge=xenbr1, tap=pyxtap1, ip=10.0.1.254/24 fd00::fe/64, mtu=9000,"
                     " mac=02:00:00:00:00:FE")
    assert u == UplinkSpec("pyxtap1", "xenbr1", ("10.0.1.254/24", "fd00::fe/64"), 9000,
                           "02:00:00:00:00:fe")
    assert parse_uplink("tap=t0") == UplinkSpec("t0")
    assert UplinkSpec.from_dict(msgpack.unpackb(msgpack.packb(u.to_dict()))) == u
    # The driver domain reads what the toolstack put on its command line.
    arg = ";".join(x.to_arg() for x in (u, parse_uplink("tap=t0")))
    assert " " not in arg
    assert parse_uplink_arg(arg) == [
        UplinkConfig("xenbr1", "pyxtap1", ("10.0.1.254/24", "fd00::fe/64"), 9000,
                     "02:00:00:00:00:fe"),
        UplinkConfig("xenbr0", "t0")]
    assert parse_uplink_arg("") == []
    for bad in ("xenbr0,t0", ",t0,,,", "b,t,,big,"):
        with pytest.raises(ValueError):
            parse_uplink_arg(bad)


@pytest.mark.parametrize(
    "spec, words",
    [
        ("bridge=xenbr0", ["missing tap="]),
        ("tap=pyxtap0, colour=blue", ["colour=blue", "unknown uplink parameter"]),
        ("tap=a/b", ["a/b"]),
        ("tap=averyveryverylongname", ["averyveryverylongname"]),
        ("tap=t, ip=10.0.0.300/24", ["10.0.0.300"]),
        ("tap=t, mtu=10", ["mtu", "10"]),
        ("tap=t, mac=01:00:00:00:00:01", ["multicast"]),
        ("tap=t, tap=u", ["more than once"]),
        ("tap", ["key=value"]),
    ],
)
def test_uplink_errors_name_the_token(spec, words):
    with pytest.raises(SpecError) as e:
        parse_uplink(spec)
    for w in words:
        assert w in str(e.value)
