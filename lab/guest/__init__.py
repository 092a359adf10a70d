"""The lab's QEMU guest image (``make guest-image``, ``python -m lab.guest``).

Built from Debian packages through ``deploy/mkroot`` (the one Debian-tree
builder): bookworm minbase plus ``PACKAGES``.  From that tree:

* ``vmlinuz``: the stock Debian kernel (booted directly, ``-kernel``);
* ``initrd.img``: a small initramfs of our own (busybox and the kernel
  modules ``MODULES`` need, in dependency order; ``initramfs-init`` loads
  them, mounts /dev/vda and hands over), not Debian's generic one, so the
  guest boots in seconds under TCG;
* ``base.qcow2``: the tree as an ext4 disk, without kernel, modules and
  documentation, with ``init`` as /sbin/mbx-init (a small init instead of
  systemd: mounts, eth0, the QEMU guest agent).  Guests run on
  copy-on-write overlays of it (``lab.qemu``), so it is never written.

The image lives in the cache (``MBX_GUEST_CACHE``, default
/var/cache/mbx/guest/KEY/), KEY a hash of mkroot's tree, this recipe and
the two init scripts: a changed input builds a new image, an unchanged one
is reused.  A build holds a lock, so concurrent callers build once.
"""

import contextlib
import fcntl
import glob
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time

from lab.sh import LabError

RECIPE = 1
PACKAGES = ("linux-image-amd64", "python3", "iproute2", "qemu-guest-agent",
            "busybox-static", "iputils-ping", "procps")
MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "virtio_console", "crc32c_generic",
           "ext4")
CACHE = os.environ.get("MBX_GUEST_CACHE", "/var/cache/mbx/guest")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MKROOT = os.path.join(ROOT, "deploy", "mkroot")
# Left out of the disk: booted from outside, or not needed by the guest.
PRUNE = ("boot", "usr/lib/modules", "usr/share/doc", "usr/share/man",
         "usr/share/info", "usr/share/locale", "var/cache/apt", "var/lib/apt/lists")


def _log(msg):
    print("guest-image: %s" % msg, file=sys.stderr, flush=True)


def _script(name):
    with open(os.path.join(HERE, name), "rb") as f:
        return f.read()


def tree_tarball():
    """The Debian tree (a tarball), built by deploy/mkroot if not cached."""
    if not os.path.exists(MKROOT):
        raise LabError("%s is missing (the Debian tree builder)" % MKROOT)
    proc = subprocess.run([sys.executable, MKROOT, "--tar"] + list(PACKAGES),
                          stdout=subprocess.PIPE, stderr=None, text=True, timeout=1800)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise LabError("deploy/mkroot failed (exit %d)" % proc.returncode)
    return proc.stdout.strip().splitlines()[-1]


def image_key(tarball):
    h = hashlib.sha256()
    h.update(json.dumps({"recipe": RECIPE, "tree": os.path.basename(tarball),
                         "modules": MODULES}, sort_keys=True).encode())
    for name in ("init", "initramfs-init"):
        h.update(_script(name))
    return h.hexdigest()[:16]


def _paths(d):
    return {"dir": d, "kernel": os.path.join(d, "vmlinuz"),
            "initrd": os.path.join(d, "initrd.img"), "base": os.path.join(d, "base.qcow2"),
            "manifest": os.path.join(d, "manifest.json")}


_IMAGE = {}


def image(build=True):
    """The guest image's files {"kernel", "initrd", "base", "dir"}, built
    first if needed (``build``), else LabError if it is not there."""
    if "paths" in _IMAGE:
        return _IMAGE["paths"]
    tarball = tree_tarball() if build else None
    if tarball is None:
        raise LabError("no guest image: run 'make guest-image'")
    paths = _paths(os.path.join(CACHE, image_key(tarball)))
    if not os.path.exists(paths["manifest"]):
        os.makedirs(CACHE, exist_ok=True)
        with _locked(paths["dir"] + ".lock"):
            if not os.path.exists(paths["manifest"]):
                _build(tarball, paths)
    _IMAGE["paths"] = paths
    return paths


@contextlib.contextmanager
def _locked(path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(cmd, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise LabError("%s: %s" % (" ".join(cmd), (proc.stderr or proc.stdout).strip()[-400:]))
    return proc.stdout


def module_order(modules_dep, wanted, builtin=()):
    """The module files (relative to the modules directory) to load for
    ``wanted`` names, dependencies first, each once; ``modules_dep`` is the
    text of modules.dep, ``builtin`` the paths of modules.builtin (built into
    the kernel: nothing to load)."""
    deps = {}
    for line in modules_dep.splitlines():
        path, sep, rest = line.partition(":")
        if sep:
            deps[path] = rest.split()
    by_name = {os.path.basename(p).split(".ko")[0].replace("-", "_"): p for p in deps}
    built = {os.path.basename(p).split(".ko")[0].replace("-", "_") for p in builtin}
    order = []

    def visit(path):
        if path in order:
            return
        for dep in deps.get(path, ()):
            visit(dep)
        order.append(path)
    for name in wanted:
        key = name.replace("-", "_")
        if key in built:
            continue
        if key not in by_name:
            raise LabError("kernel module %s: neither in modules.dep nor built in" % name)
        visit(by_name[key])
    return order


def _cpio_newc(entries):
    """A cpio archive (newc) of ``entries`` [(name, mode, data or None,
    rdev (major, minor))], as the kernel unpacks an initramfs."""
    out = io.BytesIO()

    def header(ino, name, mode, size, rdev=(0, 0)):
        fields = [ino, mode, 0, 0, 1, 0, size, 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
        out.write(b"070701" + b"".join(b"%08x" % f for f in fields))
        out.write(name.encode() + b"\0")
        out.write(b"\0" * (-out.tell() % 4))
    for ino, (name, mode, data, rdev) in enumerate(entries, start=1):
        header(ino, name, mode, len(data or b""), rdev)
        if data:
            out.write(data)
            out.write(b"\0" * (-out.tell() % 4))
    header(0, "TRAILER!!!", 0, 0)
    return out.getvalue()


def _initramfs(root, version):
    moddir = os.path.join(root, "usr/lib/modules", version)
    with open(os.path.join(moddir, "modules.dep")) as f:
        dep = f.read()
    with open(os.path.join(moddir, "modules.builtin")) as f:
        builtin = f.read().split()
    order = module_order(dep, MODULES, builtin)
    with open(os.path.join(root, "usr/bin/busybox"), "rb") as f:
        busybox = f.read()
    d, x, r = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o755, stat.S_IFREG | 0o644
    entries = [(n, d, None, (0, 0)) for n in ("bin", "dev", "lib", "lib/modules", "proc",
                                               "sys", "newroot")]
    entries += [("dev/console", stat.S_IFCHR | 0o600, None, (5, 1)),
                ("bin/busybox", x, busybox, (0, 0)),
                ("init", x, _script("initramfs-init"), (0, 0))]
    names = []
    for path in order:
        name = os.path.basename(path).split(".ko")[0]
        with open(os.path.join(moddir, path), "rb") as f:
            entries.append(("lib/modules/%s.ko" % name, r, f.read(), (0, 0)))
        names.append(name)
    entries.append(("modules", r, ("\n".join(names) + "\n").encode(), (0, 0)))
    return gzip.compress(_cpio_newc(entries), compresslevel=6)


def _build(tarball, paths):
    t0 = time.monotonic()
    _log("building %s from %s" % (paths["dir"], tarball))
    work = tempfile.mkdtemp(dir=CACHE, prefix=os.path.basename(paths["dir"]) + ".build.")
    try:
        root = os.path.join(work, "root")
        os.makedirs(root)
        _run(["tar", "--numeric-owner", "-C", root, "-xpf", tarball], timeout=600)
        kernels = sorted(glob.glob(os.path.join(root, "boot", "vmlinuz-*")))
        if not kernels:
            raise LabError("no kernel in the tree (is linux-image-amd64 in it?)")
        version = os.path.basename(kernels[-1])[len("vmlinuz-"):]
        out = os.path.join(work, "out")
        os.makedirs(out)
        shutil.copy(kernels[-1], os.path.join(out, "vmlinuz"))
        with open(os.path.join(out, "initrd.img"), "wb") as f:
            f.write(_initramfs(root, version))
        for rel in PRUNE:
            shutil.rmtree(os.path.join(root, rel), ignore_errors=True)
        os.makedirs(os.path.join(root, "opt/mbx"), exist_ok=True)
        init = os.path.join(root, "sbin/mbx-init")
        with open(init, "wb") as f:
            f.write(_script("init"))
        os.chmod(init, 0o755)
        used = int(_run(["du", "-sx", "--block-size=1M", root]).split()[0])
        raw = os.path.join(work, "base.img")
        _run(["mkfs.ext4", "-q", "-F", "-L", "mbx-guest", "-d", root, raw,
              "%dM" % (used * 13 // 10 + 256)], timeout=600)
        _run(["qemu-img", "convert", "-O", "qcow2", raw, os.path.join(out, "base.qcow2")],
             timeout=600)
        with open(os.path.join(out, "manifest.json"), "w") as f:
            json.dump({"tree": tarball, "kernel": version, "packages": PACKAGES,
                       "modules": MODULES, "recipe": RECIPE,
                       "built_s": round(time.monotonic() - t0, 1)}, f, indent=1)
        shutil.rmtree(paths["dir"], ignore_errors=True)
        os.replace(out, paths["dir"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _log("built in %.0f s" % (time.monotonic() - t0))


def main():
    paths = image()
    with open(paths["manifest"]) as f:
        manifest = json.load(f)
    print("%s (kernel %s)" % (paths["dir"], manifest["kernel"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
