"""The pure parts of the lab's QEMU guests: QEMU's command line on both
ends of a migration, the guest's kernel command line, the initramfs's
module order and archive, commands as the guest runs them."""

import sys

import pytest

from lab import guest, qemu
from lab.sh import LabError

IMAGE = {"kernel": "/c/vmlinuz", "initrd": "/c/initrd.img", "base": "/c/base.qcow2"}
VM = {"name": "mv", "mac": "02:00:00:00:00:10", "vif": "vif-mv", "ip": "10.0.0.10/24",
      "mtu": 1450, "gateway": "10.0.0.1"}


def files(host):
    return {"disk": "/r/vms/mv/disk.qcow2", "payload": "/r/vms/mv/lab.tar",
            "qmp": "/r/vms/mv/qmp-%s.sock" % host, "qga": "/r/vms/mv/qga-%s.sock" % host,
            "console": "/r/vms/mv/console.log", "pidfile": "/r/vms/mv/qemu-%s.pid" % host}


def test_source_and_destination_have_the_same_machine_and_devices():
    src = qemu.qemu_argv(IMAGE, VM, files("h1"))
    dst = qemu.qemu_argv(IMAGE, VM, files("h2"), incoming=True)
    assert dst[-2:] == ["-incoming", "defer"] and "-incoming" not in src
    differ = [(a, b) for a, b in zip(src, dst[:-2]) if a != b]
    assert len(src) == len(dst) - 2
    # Only the per-host sockets and pid file differ.
    assert all("h1" in a and "h2" in b for a, b in differ) and len(differ) == 3, differ


def test_the_nic_has_the_vms_mac_and_no_checksum_offload_on_its_tap():
    argv = qemu.qemu_argv(IMAGE, VM, files("h1"))
    assert "tap,id=net0,ifname=vif-mv,script=no,downscript=no" in argv
    assert "virtio-net-pci,netdev=net0,mac=02:00:00:00:00:10,csum=off,guest_csum=off" in argv
    assert argv[argv.index("-machine") + 1] == "q35,accel=tcg"
    assert argv[argv.index("-cpu") + 1] == "qemu64"
    # The disk is the shared overlay, the lab's modules a read-only second disk.
    assert any("file=/r/vms/mv/lab.tar" in a and "readonly=on" in a for a in argv)


def test_the_guest_reads_its_network_from_the_kernel_command_line():
    line = qemu.kernel_cmdline(VM).split()
    assert {"mbx.name=mv", "mbx.ip=10.0.0.10/24", "mbx.mtu=1450",
            "mbx.gw=10.0.0.1"} <= set(line)
    assert not [a for a in qemu.kernel_cmdline(dict(VM, gateway=None)).split()
                if a.startswith("mbx.gw=")]


def test_the_labs_python_is_the_guests_python3():
    assert qemu._guest_argv([sys.executable, "-m", "lab.probe", "serve"])[0] == "python3"
    assert qemu._guest_argv(["ip", "addr"]) == ["ip", "addr"]


def test_the_migration_port_is_stable_per_vm():
    assert qemu.migration_port("mv") == qemu.migration_port("mv")
    assert qemu.MIGRATION_PORT_BASE <= qemu.migration_port("x") < qemu.MIGRATION_PORT_BASE + 1000


DEP = """kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/lib/crc16.ko:
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/crypto/crc32c_generic.ko:
"""


def test_modules_load_after_their_dependencies_each_once():
    order = guest.module_order(DEP, ["virtio_net", "ext4", "virtio_pci"],
                               builtin=["kernel/drivers/virtio/virtio_pci.ko"])
    names = [p.rsplit("/", 1)[1] for p in order]
    assert names == ["failover.ko", "net_failover.ko", "virtio_net.ko", "crc16.ko",
                     "mbcache.ko", "jbd2.ko", "ext4.ko"]


def test_a_module_the_kernel_lacks_is_one_clear_error():
    with pytest.raises(LabError, match="virtio_blk"):
        guest.module_order(DEP, ["virtio_blk"])


def read_newc(data):
    """[(name, mode, data, rdev)] of a cpio "newc" archive, read as the
    format is specified (the kernel's initramfs format): a 110-byte header
    of "070701" and 13 hex fields, the name with its NUL, padding to 4
    bytes, the data, padding to 4 bytes; "TRAILER!!!" ends it."""
    out, pos = [], 0
    while True:
        assert data[pos:pos + 6] == b"070701", pos
        fields = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = (fields[1], fields[6], fields[9], fields[10],
                                            fields[11])
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        assert data[pos + 110 + namesize - 1] == 0
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos:pos + size]
        pos += size
        pos += -pos % 4
        if name == "TRAILER!!!":
            assert pos == len(data)
            return out
        out.append((name, mode, body, (rmaj, rmin)))


def test_the_initramfs_archive_is_what_the_kernel_unpacks():
    entries = [("bin", 0o40755, b"", (0, 0)),
               ("init", 0o100755, b"#!/bin/sh\necho hi\n", (0, 0)),
               ("dev/console", 0o20600, b"", (5, 1)),
               ("lib/modules/x.ko", 0o100644, bytes(range(256)) * 3 + b"z", (0, 0))]
    data = guest._cpio_newc([(n, m, d or None, r) for n, m, d, r in entries])
    assert len(data) % 4 == 0
    assert read_newc(data) == entries
