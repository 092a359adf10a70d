"""QEMU guests in the namespace lab (``mbx-lab vm-add NAME ... --kind qemu``).

A guest is a real QEMU (``-machine q35,accel=tcg -cpu qemu64``, the guest
image of ``lab.guest``) running in its host's network namespace:

* its virtio-net NIC (``csum=off,guest_csum=off``: a tap on a userspace
  OVS bridge gets no checksum offload, or TCP fails) is the tap ``vif-NAME``
  in the host namespace, a port of the host's br-int with the same
  external_ids as a namespace VM's veth (``iface-id``, ``attached-mac``);
* its disk is a copy-on-write overlay of the shared base image
  (RUNDIR/vms/NAME/disk.qcow2; the hosts share the file system, so a
  migration copies no block), a second read-only disk carries the lab's
  own Python modules (a tar of lab/*.py: the probes are the checkout's);
* the guest's init configures eth0 from the kernel command line as
  ``Lab.vm_add`` configures a namespace VM, then starts the QEMU guest agent
  on a virtio-serial port; the lab runs commands, starts background
  processes and reads files through it (``exec``, ``spawn``, ``read``);
* each QEMU has a QMP monitor and the agent's socket, named after the host
  it runs on (RUNDIR/vms/NAME/qmp-HOST.sock, qga-HOST.sock), and its PID is
  in the lab's state (``vm/NAME/qemu``), so ``mbx-lab down`` ends it.

``migrate`` is a real QEMU live migration over QMP: the destination QEMU
starts in the destination host's namespace with ``-incoming defer`` and
listens on the host's management address, the source sends the guest over
the management network.  On the announced path QEMU's own MIGRATION events
drive mbx through ``hypervisor.adapter`` (the libvirt hook's steps and
mbxctl command lines, run in this process: ``mbxctl_runner``); ``drive`` is
the one QMP migration driver; docs/libvirt.md has the sequence.
"""

import base64
import io
import json
import os
import select
import socket
import subprocess
import sys
import tarfile
import threading
import time
import zlib

from hypervisor import adapter
from lab import guest
from lab.sh import LabError, TryEach, run, wait_until
from ovsdb.errors import MbxError
from ovsdb.server import pid_alive, stop as stop_pid

MEMORY_MB = 128
MIGRATION_PORT_BASE = 47000     # + a hash of the VM name, on the destination's mgmt address
GUEST_LAB_DIR = "/opt/mbx"      # where the guest unpacks the lab's modules
GUEST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
BOOT_TIMEOUT = 180              # TCG on two busy cores: boots take 10-60 s
MIGRATE_TIMEOUT = 60


# ----------------------------------------------------------------- files
def vm_dir(lab, name):
    return os.path.join(lab.rundir, "vms", name)


def _sock(lab, name, kind, host):
    return os.path.join(vm_dir(lab, name), "%s-%s.sock" % (kind, host))


def qmp_path(lab, name, host):
    return _sock(lab, name, "qmp", host)


def qga_path(lab, name, host):
    return _sock(lab, name, "qga", host)


def qemu_key(name):
    """The pid key of the QEMU running the guest (``down`` ends it)."""
    return "vm/%s/qemu" % name


def incoming_key(name):
    return "vm/%s/qemu-incoming" % name


def migration_port(name):
    return MIGRATION_PORT_BASE + zlib.crc32(name.encode()) % 1000


def kernel_cmdline(vm):
    """The guest's configuration, read by its init (lab/guest/init)."""
    args = ["console=ttyS0", "root=/dev/vda", "rw", "quiet", "init=/sbin/mbx-init",
            "mbx.name=%s" % vm["name"], "mbx.ip=%s" % vm["ip"],
            "mbx.mtu=%d" % vm["mtu"]]
    if vm.get("gateway"):
        args.append("mbx.gw=%s" % vm["gateway"])
    return " ".join(args)


def qemu_argv(image, vm, files, incoming=False):
    """QEMU's command line for guest ``vm`` (its lab state: name, mac, vif,
    ip, mtu, gateway) with ``files`` (disk, payload, qmp, qga, console,
    pidfile).  Source and destination differ only in their sockets, pid
    file and ``-incoming defer``; devices and their order are the same, as a
    migration needs."""
    argv = ["qemu-system-x86_64", "-name", vm["name"],
            "-machine", "q35,accel=tcg", "-cpu", "qemu64", "-smp", "1",
            "-m", str(MEMORY_MB), "-nodefaults", "-no-user-config", "-display", "none",
            "-kernel", image["kernel"], "-initrd", image["initrd"],
            "-append", kernel_cmdline(vm),
            "-drive", "file=%s,if=none,id=disk0,format=qcow2,cache=writeback" % files["disk"],
            "-device", "virtio-blk-pci,drive=disk0",
            "-drive", "file=%s,if=none,id=disk1,format=raw,readonly=on" % files["payload"],
            "-device", "virtio-blk-pci,drive=disk1",
            "-netdev", "tap,id=net0,ifname=%s,script=no,downscript=no" % vm["vif"],
            "-device", "virtio-net-pci,netdev=net0,mac=%s,csum=off,guest_csum=off"
            % vm["mac"],
            "-chardev", "socket,id=qga0,path=%s,server=on,wait=off" % files["qga"],
            "-device", "virtio-serial-pci",
            "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            "-chardev", "file,id=con0,path=%s,append=on" % files["console"],
            "-serial", "chardev:con0",
            "-qmp", "unix:%s,server=on,wait=off" % files["qmp"],
            "-pidfile", files["pidfile"], "-daemonize"]
    if incoming:
        argv += ["-incoming", "defer"]
    return argv


def _files(lab, name, host):
    d = vm_dir(lab, name)
    return {"disk": os.path.join(d, "disk.qcow2"), "payload": os.path.join(d, "lab.tar"),
            "qmp": qmp_path(lab, name, host), "qga": qga_path(lab, name, host),
            "console": os.path.join(d, "console.log"),
            "pidfile": os.path.join(d, "qemu-%s.pid" % host)}


def console_tail(lab, name, size=600):
    try:
        with open(os.path.join(vm_dir(lab, name), "console.log"), "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - size))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return "(no console output)"


def payload(path):
    """A tar of the lab's own modules (lab/*.py of this checkout)."""
    here = os.path.dirname(os.path.abspath(__file__))
    tmp = path + ".part"
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for fname in sorted(os.listdir(here)):
            if fname.endswith(".py"):
                tar.add(os.path.join(here, fname), arcname="lab/" + fname)
    size = os.path.getsize(tmp)
    with open(tmp, "ab") as f:         # whole 512-byte sectors for the raw disk
        f.write(b"\0" * (-size % 512 + 512 * 20))
    os.replace(tmp, path)


# ------------------------------------------------------------------- QMP
class Monitor:
    """A QMP connection: commands and their answers, events in between."""

    def __init__(self, path, timeout=10):
        self.path = path
        self.sock = None
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError as err:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise LabError("QMP %s: %s" % (path, err))
                time.sleep(0.05)
        self.buf = b""
        self.events = []
        self._read(timeout)                        # the greeting
        self.command("qmp_capabilities")

    def close(self):
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()

    def _read(self, timeout):
        """The next message (a dict), or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = max(0.0, deadline - time.monotonic())
            if not select.select([self.sock], [], [], left)[0]:
                return None
            data = self.sock.recv(65536)
            if not data:
                raise LabError("QMP %s: the connection closed" % self.path)
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def command(self, name, timeout=30, **arguments):
        msg = {"execute": name}
        if arguments:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(max(0.0, deadline - time.monotonic()))
            if reply is None:
                raise LabError("QMP %s: no answer to %s within %gs" % (self.path, name,
                                                                       timeout))
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                raise LabError("QMP %s: %s: %s" % (self.path, name,
                                                   reply["error"].get("desc")))
            elif "return" in reply:
                return reply["return"]

    def pending(self):
        """Events already read, then whatever has arrived, without waiting."""
        while True:
            msg = self._read(0)
            if msg is None:
                break
            if "event" in msg:
                self.events.append(msg)
        out, self.events = self.events, []
        return out


def wait_events(monitors, timeout):
    """[(monitor, event)] of the first monitors with events, waiting up to
    ``timeout`` seconds; [] when none came."""
    ready = [(m, e) for m in monitors for e in m.pending()]
    if ready:
        return ready
    by_sock = {m.sock: m for m in monitors}
    readable = select.select(list(by_sock), [], [], timeout)[0]
    return [(by_sock[s], e) for s in readable for e in by_sock[s].pending()]


# ---------------------------------------------------------- guest agent
_AGENT_LOCKS = {}
_AGENT_LOCKS_LOCK = threading.Lock()


class Agent:
    """The QEMU guest agent of a guest, over its virtio-serial socket: one
    connection per call, resynchronised first (guest-sync-delimited)."""

    def __init__(self, path):
        self.path = path
        with _AGENT_LOCKS_LOCK:
            self.lock = _AGENT_LOCKS.setdefault(path, threading.Lock())

    def answers(self, timeout=2):
        """Whether the agent answers a guest-ping within ``timeout`` seconds."""
        try:
            self.call("guest-ping", timeout=timeout)
            return True
        except LabError:
            return False

    def call(self, name, timeout=30, **arguments):
        with self.lock:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(self.path)
                token = int.from_bytes(os.urandom(4), "big") & 0x7fffffff
                sock.sendall(json.dumps({"execute": "guest-sync-delimited",
                                         "arguments": {"id": token}}).encode() + b"\n")
                buf = b""
                while True:             # skip anything before the 0xff marker
                    data = sock.recv(65536)
                    if not data:
                        raise LabError("guest agent %s: closed" % self.path)
                    buf += data
                    if b"\xff" in buf:
                        buf = buf.rsplit(b"\xff", 1)[1]
                    if b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        try:
                            if json.loads(line).get("return") == token:
                                break
                        except ValueError:
                            pass
                msg = {"execute": name}
                if arguments:
                    msg["arguments"] = arguments
                sock.sendall(json.dumps(msg).encode() + b"\n")
                while b"\n" not in buf:
                    data = sock.recv(1 << 20)
                    if not data:
                        raise LabError("guest agent %s: closed" % self.path)
                    buf += data
                reply = json.loads(buf.split(b"\n", 1)[0])
            except (OSError, ValueError) as err:
                raise LabError("guest agent %s: %s: %s" % (self.path, name, err)) from None
            finally:
                sock.close()
        if "error" in reply:
            raise LabError("guest agent: %s: %s" % (name, reply["error"].get("desc")))
        return reply.get("return")


def agent(lab, name):
    vm = lab.state["vms"][name]
    return Agent(qga_path(lab, name, vm["host"]))


def _guest_argv(cmd):
    """A lab command line as the guest runs it: the lab's own Python is the
    guest's python3 (with the lab's modules on its path)."""
    cmd = list(cmd)
    if cmd and (cmd[0] == sys.executable or os.path.basename(cmd[0]).startswith("python")):
        cmd[0] = "python3"
    return cmd


GUEST_ENV = ["PATH=" + GUEST_PATH, "PYTHONPATH=" + GUEST_LAB_DIR, "HOME=/root",
             "LANG=C.UTF-8"]


def _exec_start(lab, name, argv, capture, stdin=None):
    args = {"path": argv[0], "arg": argv[1:], "env": GUEST_ENV,
            "capture-output": capture}
    if stdin is not None:
        args["input-data"] = base64.b64encode(stdin).decode()
    return agent(lab, name).call("guest-exec", **args)["pid"]


def _exec_status(lab, name, pid):
    return agent(lab, name).call("guest-exec-status", pid=pid)


def exec_(lab, name, cmd, capture_output=False, text=False, timeout=None, input=None,
          check=False, stdout=None, stderr=None, **_ignored):
    """``Lab.exec`` for a guest: run ``cmd`` there, wait for it; a
    CompletedProcess (output captured by the agent: printed here unless
    asked for)."""
    argv = _guest_argv(cmd)
    if isinstance(input, str):
        input = input.encode()
    pid = _exec_start(lab, name, argv, True, input)
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.01
    while True:
        st = _exec_status(lab, name, pid)
        if st.get("exited"):
            break
        if deadline is not None and time.monotonic() > deadline:
            _signal(lab, name, pid, "KILL")
            raise subprocess.TimeoutExpired(argv, timeout)
        time.sleep(delay)
        delay = min(0.1, delay * 1.5)
    out = base64.b64decode(st.get("out-data", ""))
    err = base64.b64decode(st.get("err-data", ""))
    code = st["exitcode"] if "exitcode" in st else -st.get("signal", 0)
    capture = capture_output or stdout == subprocess.PIPE
    if not capture:
        sys.stdout.buffer.write(out)
        sys.stdout.flush()
    if not (capture_output or stderr in (subprocess.PIPE, subprocess.STDOUT)):
        sys.stderr.buffer.write(err)
        sys.stderr.flush()
    if text:
        out, err = out.decode(errors="replace"), err.decode(errors="replace")
    proc = subprocess.CompletedProcess(argv, code, out if capture else None,
                                       err if capture_output else None)
    if check:
        proc.check_returncode()
    return proc


def _signal(lab, name, pid, sig):
    try:
        exec_(lab, name, ["/bin/sh", "-c", "kill -%s %d" % (sig, pid)], capture_output=True,
              timeout=30)
    except LabError:
        pass


class GuestProcess:
    """A background process in a guest, with the part of Popen's interface
    the lab's callers use (poll, wait, terminate, kill, returncode).  Its
    ``pid`` is None: it is not a process of this machine (``forget_pid``
    ignores it, ``down`` ends it with its guest); ``guest_pid`` is its
    number inside the guest."""

    def __init__(self, lab, name, guest_pid, argv):
        self.lab, self.name, self.guest_pid, self.args = lab, name, guest_pid, argv
        self.pid = None
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            st = _exec_status(self.lab, self.name, self.guest_pid)
            if st.get("exited"):
                self.returncode = st["exitcode"] if "exitcode" in st else -st.get("signal", 0)
        return self.returncode

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.05)
        return self.returncode

    def terminate(self):
        if self.poll() is None:
            _signal(self.lab, self.name, self.guest_pid, "TERM")

    def kill(self):
        if self.poll() is None:
            _signal(self.lab, self.name, self.guest_pid, "KILL")


def spawn(lab, name, cmd, log_path):
    """``Lab.spawn`` for a guest: ``cmd`` in the background, its output
    appended to ``log_path`` inside the guest (the directory is made)."""
    argv = _guest_argv(cmd)
    script = 'log=$1; shift; mkdir -p "${log%/*}"; exec "$@" >>"$log" 2>&1'
    pid = _exec_start(lab, name, ["/bin/sh", "-c", script, "sh", log_path] + argv, False)
    return GuestProcess(lab, name, pid, argv)


def read(lab, name, path, limit=16 << 20):
    """The bytes of file ``path`` inside the guest, None if it does not exist."""
    ga = agent(lab, name)
    try:
        handle = ga.call("guest-file-open", path=path, mode="r")
    except LabError as err:
        if "No such file" in str(err) or "not found" in str(err).lower():
            return None
        raise
    data = b""
    try:
        while len(data) < limit:
            chunk = ga.call("guest-file-read", handle=handle, count=1 << 20)
            data += base64.b64decode(chunk.get("buf-b64", ""))
            if chunk.get("eof") or not chunk.get("count"):
                break
    finally:
        ga.call("guest-file-close", handle=handle)
    return data


# -------------------------------------------------------------- the guest
def _tap_add(lab, host, vif):
    ns = lab.host_ns(host)
    run(["ip", "tuntap", "add", "dev", vif, "mode", "tap"], netns=ns)
    run(["sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % vif], netns=ns)
    run(["ip", "link", "set", vif, "up"], netns=ns)


def _tap_del(lab, host, vif):
    run(["ip", "link", "del", vif], netns=lab.host_ns(host), check=False)


def _start(lab, name, host, incoming=False):
    """Start the guest's QEMU on ``host``; returns its pid (recorded)."""
    vm = dict(lab.state["vms"][name], name=name)
    files = _files(lab, name, host)
    for stale in (files["qmp"], files["qga"], files["pidfile"]):
        if os.path.exists(stale):
            os.unlink(stale)
    image = guest.image()
    run(qemu_argv(image, vm, files, incoming), netns=lab.host_ns(host), timeout=60)
    with open(files["pidfile"]) as f:
        pid = int(f.read().strip())
    lab._record_pid(incoming_key(name) if incoming else qemu_key(name), pid)
    return pid


def _stop(lab, key):
    pid = lab.state["pids"].pop(key, None)
    lab._save()
    if pid is not None:
        stop_pid(pid)


def boot(lab, name, host, timeout):
    """Everything of ``Lab.vm_add`` after the config DB: the disk, the tap
    (a br-int port, flows programmed, link up), QEMU, then wait until the
    guest agent answers (its init configured eth0 before starting it)."""
    vm = lab.state["vms"][name]
    d = vm_dir(lab, name)
    os.makedirs(d, exist_ok=True)
    image = guest.image()
    disk = os.path.join(d, "disk.qcow2")
    if os.path.exists(disk):
        os.unlink(disk)
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", image["base"], disk])
    payload(os.path.join(d, "lab.tar"))
    t0 = time.monotonic()
    _tap_add(lab, host, vm["vif"])
    epoch = lab._vm_epoch(name)
    lab._plug(host, name)
    lab._wait_programmed(name, host, epoch, timeout)
    _start(lab, name, host)
    ga = Agent(qga_path(lab, name, host))

    def answers():
        if not pid_alive(lab.state["pids"][qemu_key(name)]):
            raise LabError("QEMU of %s exited: %s" % (name, console_tail(lab, name)))
        return ga.answers()
    try:
        wait_until(answers, BOOT_TIMEOUT, interval=0.5,
                   what="guest %s to boot (its agent to answer)" % name)
    except LabError as err:
        raise LabError("%s; console: %s" % (err, console_tail(lab, name)))
    vm["boot_s"] = round(time.monotonic() - t0, 1)
    lab._save()


def remove(lab, name):
    """``Lab.vm_del`` for a guest: its QEMU ended (by PID), tap and port gone."""
    vm = lab.state["vms"][name]
    for key in (incoming_key(name), qemu_key(name)):
        _stop(lab, key)
    lab.vsctl(vm["host"], "--if-exists", "del-port", "br-int", vm["vif"])
    _tap_del(lab, vm["host"], vm["vif"])


# -------------------------------------------------------------- migration
def adapter_config(lab, host, timeout):
    """How the driver sends mbx's steps: the libvirt hook's mbxctl command
    lines (hypervisor.adapter) against the lab's databases, for ``host``."""
    return adapter.Config(host=host, db=lab.nb_remote, sb=lab.sb_remote, mbxctl="mbxctl",
                          stun_wait=float(timeout), timeout=float(timeout))


def mbxctl_runner(argv, timeout=None, **_kwargs):
    """``subprocess.run`` for the adapter's mbxctl command lines, run in
    this process (``ovsdb.ctl.run``, what the mbxctl program runs): the
    same command, without starting a Python for each step (about 1.4 s
    each on this lab's busy cores, most of it while QEMU holds the guest
    at the switchover).  ``timeout``: mbxctl's own --timeout bounds it."""
    from ovsdb import ctl
    if argv[:1] != ["mbxctl"]:
        raise OSError(2, "not an mbxctl command line: %s" % argv[:1])
    out = io.StringIO()
    try:
        ctl.run(argv[1:], out)
    except MbxError as err:
        return subprocess.CompletedProcess(argv, 1, out.getvalue(), "mbxctl: %s\n" % err)
    return subprocess.CompletedProcess(argv, 0, out.getvalue(), "")


class _Failed(Exception):
    pass


def migrate(lab, name, to, notify=True, timeout=MIGRATE_TIMEOUT, log=None):
    """A real QEMU live migration of guest ``name`` to host ``to`` (see the
    module's doc and docs/libvirt.md).  ``notify``: mbx hears of it through
    QEMU's events (the announced path); otherwise no mbx step is sent and
    the controller notices the guest's port at ``to`` (unannounced).  The
    destination's tap is plugged into br-int at the switchover (QEMU stopped
    the guest at ``pre-switchover``), never before: until then the guest
    runs on its source.  Returns the step timings (ms) and QEMU's figures;
    on failure the guest runs on at its source (QEMU resumes it, the lab
    plugs its port back) and LabError says why."""
    vm = lab.state["vms"][name]
    src = vm["host"]
    marks = [("start", time.monotonic())]
    dst_ip = lab.state["hosts"][to]["mgmt_ip"]
    tracker = adapter.QmpTracker(name, src, to) if notify else None
    config = adapter_config(lab, src, min(timeout, 30))
    stage = {"port": "source", "handed_over": False}
    monitors = {}
    log = log or (lambda *_: None)
    result = {}

    def step(role, actions):
        for action in actions:
            if not adapter.run_actions([action], config, mbxctl_runner, log=log)[0]:
                raise _Failed("mbxctl %s %s failed" % (action.verb, name))
            marks.append((action.verb, time.monotonic()))

    try:
        _tap_add(lab, to, vm["vif"])
        stage["tap"] = True
        _start(lab, name, to, incoming=True)
        dq = monitors["destination"] = Monitor(qmp_path(lab, name, to))
        sq = monitors["source"] = Monitor(qmp_path(lab, name, src))
        info = drive(sq, dq, "tcp:%s:%d" % (dst_ip, migration_port(name)), tracker, step,
                     lambda stun: _switchover(lab, name, src, to, stage, marks, timeout,
                                              stun),
                     marks, timeout, log, stage)
        result.update(qemu_total_ms=info.get("total-time"),
                      qemu_downtime_ms=info.get("downtime"))
    except BaseException as err:        # noqa: BLE001 - roll back, then re-raise
        why = str(err) or type(err).__name__
        if stage["handed_over"]:
            for mon in monitors.values():
                mon.close()
            raise LabError("migration of %s to %s failed after the hand-over (%s)"
                           % (name, to, why)) from err
        problems = _roll_back(lab, name, src, to, stage, monitors, tracker, config, why,
                              timeout, log)
        for mon in monitors.values():
            mon.close()
        if isinstance(err, Exception):
            raise LabError("migration of %s to %s failed (%s); rolled back to %s%s"
                           % (name, to, why, src, "" if not problems else
                              ", but: " + "; ".join(problems))) from err
        raise
    # The guest runs at the destination: end its source QEMU, remove the tap.
    for mon in monitors.values():
        mon.close()
    _stop(lab, qemu_key(name))
    lab.state["pids"][qemu_key(name)] = lab.state["pids"].pop(incoming_key(name))
    lab._save()
    _tap_del(lab, src, vm["vif"])
    steps = {}
    for (_, prev), (label, t) in zip(marks, marks[1:]):
        steps[label] = round((t - prev) * 1000, 1)
    steps["total"] = round((marks[-1][1] - marks[0][1]) * 1000, 1)
    steps.update(result)
    return steps


def drive(sq, dq, uri, tracker, run_step, switchover, marks, timeout, log, stage,
          capabilities=(), parameters=None):
    """One QEMU live migration over QMP, from the outgoing QEMU's monitor
    ``sq`` to the incoming one's ``dq`` (started with ``-incoming defer``)
    at ``uri``, until both completed and the guest runs at the destination.
    Both get the capability ``events`` (and ``capabilities``), the source
    also ``pause-before-switchover`` (and ``parameters``).  Each MIGRATION
    event goes through ``tracker`` (a ``hypervisor.adapter.QmpTracker``;
    None: no mbx step) and ``run_step(role, actions)`` runs the steps, except
    at the source's ``pre-switchover``: ``switchover(stun)`` (``stun``: runs
    the stun step, None without one) moves the guest's port, then QEMU
    continues.  ``stage["handed_over"]`` turns true when the source
    completed.  Returns the source's ``query-migrate`` once QEMU filled in
    its figures; LabError when QEMU reports the migration failed or
    cancelled, or after ``timeout`` seconds."""
    events = [{"capability": "events", "state": True}] + [
        {"capability": c, "state": True} for c in capabilities]
    dq.command("migrate-set-capabilities", capabilities=events)
    dq.command("migrate-incoming", uri=uri)
    sq.command("migrate-set-capabilities", capabilities=events + [
        {"capability": "pause-before-switchover", "state": True}])
    if parameters:
        sq.command("migrate-set-parameters", **parameters)
    marks.append(("incoming", time.monotonic()))
    sq.command("migrate", uri=uri)
    roles = {sq: adapter.SOURCE, dq: adapter.DESTINATION}
    done = {adapter.SOURCE: False, adapter.DESTINATION: False}
    info = {}
    deadline = time.monotonic() + timeout
    while not all(done.values()):
        left = deadline - time.monotonic()
        if left <= 0:
            raise LabError("no end of the migration within %ds" % timeout)
        for mon, ev in wait_events(list(roles), min(left, 1.0)):
            if ev["event"] != "MIGRATION":
                continue
            role, status = roles[mon], ev["data"]["status"]
            log("qmp %s: %s" % (role, status))
            actions = tracker.handle(role, status) if tracker is not None else []
            if role == adapter.SOURCE and status == adapter.QMP_PRE_SWITCHOVER:
                marks.append(("paused", time.monotonic()))
                switchover((lambda: run_step(role, actions)) if actions else None)
                sq.command("migrate-continue", state=adapter.QMP_PRE_SWITCHOVER)
                marks.append(("continue", time.monotonic()))
                continue
            run_step(role, actions)
            if status in (adapter.QMP_FAILED, adapter.QMP_CANCELLED):
                raise LabError("QEMU on the %s: migration %s" % (role, status))
            if status == adapter.QMP_COMPLETED:
                if role == adapter.SOURCE:
                    stage["handed_over"] = True
                    info = _figures(sq)
                done[role] = True
                marks.append(("%s-completed" % role, time.monotonic()))
    wait_until(lambda: dq.command("query-status").get("running"), 60, interval=0.02,
               what="the guest to run at the destination")
    marks.append(("running", time.monotonic()))
    return info


def _figures(monitor):
    """The outgoing QEMU's ``query-migrate`` of the migration it completed
    (total time and downtime are filled in just after the "completed"
    event)."""
    info = {}
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        info = monitor.command("query-migrate")
        if info.get("total-time"):
            break
        time.sleep(0.02)
    return info


def _row(lab, name):
    row = lab.migration_row(name)
    return row["uuid"] if row and row.get("status") not in ("done", "aborted",
                                                            "fallback") else None


def _switchover(lab, name, src, to, stage, marks, timeout, stun):
    """QEMU holds the guest at the switchover.  The stun goes out first (on
    the announced path; ``stun`` runs the step, which returns once the
    destination imported), and while its wait runs the port moves; both
    are over before QEMU may continue."""
    if stun is None:
        _switch_port(lab, name, src, to, stage, marks, timeout, None)
        return
    migration = _row(lab, name)
    outcome = {}

    def run_stun():
        try:
            stun()
        except BaseException as err:        # noqa: BLE001 - raised below
            outcome["error"] = err
    thread = threading.Thread(target=run_stun, daemon=True, name="stun-%s" % name)
    thread.start()
    wait_until(lambda: not thread.is_alive() or lab.migration_row(name).get("status")
               in ("stunned", "imported"), timeout, interval=0.005,
               what="the stun of %s to be written" % name)
    if "error" not in outcome:
        _switch_port(lab, name, src, to, stage, marks, timeout, migration)
    thread.join(timeout + adapter.GRACE)
    if thread.is_alive():
        raise _Failed("the stun of %s did not return" % name)
    if "error" in outcome:
        raise outcome["error"]


def _switch_port(lab, name, src, to, stage, marks, timeout, migration):
    """The guest is stopped at the switchover: its port leaves the source
    and is plugged at the destination, and the flows for it there are
    programmed.  ``migration``: the announced row, which must stay active."""
    vm = lab.state["vms"][name]
    old_epoch = lab._vm_epoch(name)
    lab.vsctl(src, "del-port", "br-int", vm["vif"])
    stage["port"] = "unplugged"
    marks.append(("unplug", time.monotonic()))
    vm["host"] = to
    lab._save()
    lab._plug(to, name)
    stage["port"] = "plugged"
    marks.append(("plug", time.monotonic()))
    lab._wait_programmed(name, to, old_epoch, timeout, migration=migration)
    marks.append(("flows", time.monotonic()))


def _roll_back(lab, name, src, to, stage, monitors, tracker, config, why, timeout, log):
    """Undo a migration that failed before the hand-over: QEMU cancels it
    (the source resumes the guest), the announced row is aborted, the port
    goes back to the source, the destination QEMU and tap go away.  Every
    step is tried; returns what failed."""
    vm = lab.state["vms"][name]
    attempt = TryEach()
    problems = attempt.problems
    sq = monitors.get("source")
    if sq is not None:
        def cancel():
            sq.command("migrate_cancel")
            wait_until(lambda: sq.command("query-migrate").get("status") in (
                adapter.QMP_CANCELLED, adapter.QMP_FAILED, None), 30, interval=0.05,
                what="QEMU to cancel the migration")
            if not sq.command("query-status").get("running"):
                sq.command("cont")
        attempt("cancel", cancel)
    if tracker is not None and not tracker.over:
        actions = tracker.handle(adapter.SOURCE, adapter.QMP_CANCELLED)
        for action in actions:
            attempt("abort", lambda a=action: adapter.retry_abort(
                a, config, mbxctl_runner, log=log, delays=(1.0, 2.0)))
    attempt("destination QEMU", lambda: _stop(lab, incoming_key(name)))
    if stage["port"] != "source":
        then = (None, 0)
        try:
            then = lab.sb().snapshot().vm_locations.get(name, (None, 0))
        except Exception as err:        # noqa: BLE001
            problems.append("its location: %s" % err)
        attempt("unplug at %s" % to, lambda: lab.vsctl(
            to, "--if-exists", "del-port", "br-int", vm["vif"]))
        vm["host"] = src
        lab._save()
        attempt("plug at %s" % src, lambda: lab._plug(src, name))
        attempt("placement at %s" % src,
                lambda: lab._wait_placed_again(name, src, then, max(timeout, 30)))
    vm["host"] = src
    lab._save()
    if stage.get("tap"):
        attempt("destination tap", lambda: _tap_del(lab, to, vm["vif"]))
    return problems


def describe(lab, name):
    """One line for ``mbx-lab status``."""
    pid = lab.state["pids"].get(qemu_key(name))
    return "qemu pid %s%s" % (pid, "" if pid and pid_alive(pid) else " (GONE)")

