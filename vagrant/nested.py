"""A QEMU guest on a hypervisor VM of the Vagrant lab, and its real live
migration to another hypervisor VM (``vagrant/run.py``).

Sockets cannot move between two kernels, so the VM that migrates is a real
guest: the lab's guest image (``lab.guest``: stock kernel, small initramfs,
python3, the QEMU guest agent), shipped in the box under ``GUEST_DIR``,
booted by QEMU (TCG inside the TCG hypervisor) with its virtio-net tap on
the hypervisor's br-int, exactly as ``lab.qemu`` boots it in the namespace
lab (``lab.qemu.qemu_argv``).

The machine running vagrant drives it as an operator would: over ssh, with
the guest's QMP monitor and agent sockets forwarded from the hypervisor to
local unix sockets, so ``lab.qemu``'s ``Monitor``, ``Agent``, ``drive`` and
``exec_``/``spawn``/``read`` work unchanged.  The migration is the lab's
(``lab.qemu.drive``, the one QMP driver): the destination QEMU waits with ``-incoming``, the
source sends the guest over mbx's management network, and QEMU's own
MIGRATION events drive mbx (``hypervisor.adapter.QmpTracker``): the mbxctl
steps run ON the hypervisors, with each host's own certificate over TLS
(what the southbound RBAC lets a host do).  The hypervisors share no
storage, so the guest's disk overlay moves too (QEMU block migration,
incremental over the base image every box has).
"""

import os
import shlex
import subprocess
import time
import types

from hypervisor import adapter
from lab import qemu as labqemu
from lab.sh import LabError, wait_until

GUEST_DIR = "/var/lib/mbx/guest"          # in the box: vmlinuz, initrd.img, base.qcow2
VM_DIR = "/var/lib/mbx/vms"               # on a hypervisor: one directory per guest
MIGRATION_PORT = 47001
BOOT_TIMEOUT = 900                        # nested TCG: minutes, not seconds
MIGRATE_TIMEOUT = 600


class Guest:
    """One guest: where it runs, its files there, the local ends of its
    forwarded sockets."""

    def __init__(self, nodes, name, host, ip_cidr, mac, gateway, fwd_dir, track):
        self.nodes, self.name, self.host = nodes, name, host
        self.vm = {"name": name, "ip": ip_cidr, "mac": mac, "mtu": 1450,
                   "gateway": gateway, "vif": "vif-" + name}
        self.fwd_dir = fwd_dir
        self.track = track          # track(key, pid): record a local process (ssh)
        # What lab.qemu's agent helpers need of a lab: its run directory (the
        # forwarded sockets are where they look: RUNDIR/vms/NAME/qga-HOST.sock)
        # and the guest's host.
        self.shim = types.SimpleNamespace(
            rundir=fwd_dir, state={"vms": {name: {"host": host}}})
        self.forwards = {}

    # --------------------------------------------------------- files
    def files(self, host):
        d = "%s/%s" % (VM_DIR, self.name)
        return {"disk": d + "/disk.qcow2", "payload": d + "/lab.tar",
                "qmp": "%s/qmp-%s.sock" % (d, host), "qga": "%s/qga-%s.sock" % (d, host),
                "console": "%s/console-%s.log" % (d, host),
                "pidfile": "%s/qemu-%s.pid" % (d, host)}

    def local(self, kind, host):
        path = os.path.join(self.fwd_dir, "vms", self.name, "%s-%s.sock" % (kind, host))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def prepare(self, host, payload):
        """The guest's directory on ``host``: the payload (the lab's Python
        modules, the same file on every host), an empty overlay of the
        box's base image, the tap (up, not yet a br-int port)."""
        f = self.files(host)
        self.nodes.run(host, "mkdir -p %s/%s" % (VM_DIR, self.name))
        self.nodes.copy(host, payload, f["payload"])
        self.nodes.run(host, " && ".join([
            "qemu-img create -q -f qcow2 -F qcow2 -b %s/base.qcow2 %s" % (GUEST_DIR,
                                                                         f["disk"]),
            "ip tuntap add dev %s mode tap" % self.vm["vif"],
            "sysctl -qw net.ipv6.conf.%s.disable_ipv6=1" % self.vm["vif"],
            "ip link set %s up" % self.vm["vif"]]))

    def plug(self, host):
        vif = self.vm["vif"]
        self.nodes.run(host, "ovs-vsctl add-port br-int %s -- set interface %s "
                       "external_ids:iface-id=%s external_ids:attached-mac=%s"
                       % (vif, vif, self.name, self.vm["mac"]))

    def unplug(self, host):
        self.nodes.run(host, "ovs-vsctl --if-exists del-port br-int %s" % self.vm["vif"])

    def start(self, host, incoming=False):
        """QEMU on ``host`` (daemonized; ``-incoming defer`` for a
        destination), its QMP and agent sockets forwarded here."""
        image = {"kernel": GUEST_DIR + "/vmlinuz", "initrd": GUEST_DIR + "/initrd.img"}
        f = self.files(host)
        argv = labqemu.qemu_argv(image, self.vm, f, incoming)
        self.nodes.run(host, "rm -f %s %s && %s && chmod 666 %s %s" % (
            f["qmp"], f["qga"], " ".join(shlex.quote(a) for a in argv), f["qmp"], f["qga"]))
        for kind in ("qmp", "qga"):
            self.forward(host, kind, f[kind])

    def forward(self, host, kind, remote):
        local = self.local(kind, host)
        if os.path.exists(local):
            os.unlink(local)
        # ssh's options go before the destination (the last argument).
        ssh = self.nodes.ssh_argv(host)
        proc = subprocess.Popen(
            ssh[:-1] + ["-N", "-o", "ExitOnForwardFailure=yes", "-o",
                        "StreamLocalBindUnlink=yes", "-L", "%s:%s" % (local, remote),
                        ssh[-1]],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        self.track("ssh-%s-%s-%s" % (self.name, kind, host), proc.pid)
        self.forwards[(host, kind)] = proc
        wait_until(lambda: os.path.exists(local) or proc.poll() is not None, 60,
                   interval=0.1, what="the %s socket of %s on %s" % (kind, self.name, host))
        if proc.poll() is not None:
            raise LabError("ssh forwarding of %s's %s on %s exited" % (self.name, kind, host))

    def stop_forwards(self, host):
        for (h, kind), proc in list(self.forwards.items()):
            if h == host:
                proc.terminate()
                proc.wait(10)
                self.track("ssh-%s-%s-%s" % (self.name, kind, h), None)
                del self.forwards[(h, kind)]

    def console(self, host, lines=15):
        return self.nodes.run(host, "tail -n %d %s 2>/dev/null" % (
            lines, self.files(host)["console"]), check=False).strip()

    # --------------------------------------------------------- guest
    def agent(self):
        return labqemu.Agent(self.local("qga", self.host))

    def boot(self, payload):
        """Prepare, plug, start on its host; returns once its agent answers."""
        t0 = time.monotonic()
        self.prepare(self.host, payload)
        self.plug(self.host)
        self.start(self.host)
        ga = self.agent()

        def answers():
            try:
                ga.call("guest-ping", timeout=5)
                return True
            except LabError:
                return False
        try:
            wait_until(answers, BOOT_TIMEOUT, interval=5,
                       what="guest %s to boot on %s (its agent to answer)"
                       % (self.name, self.host))
        except LabError as err:
            raise LabError("%s; console: %s" % (err, self.console(self.host)))
        return time.monotonic() - t0

    def exec(self, cmd, timeout=120):
        return labqemu.exec_(self.shim, self.name, cmd, capture_output=True, text=True,
                             timeout=timeout)

    def spawn(self, cmd, log_path):
        return labqemu.spawn(self.shim, self.name, cmd, log_path)

    def read(self, path):
        return labqemu.read(self.shim, self.name, path)

    # ----------------------------------------------------- migration
    def migrate(self, to, mgmt_ip, payload, placed, log):
        """A real live migration of the guest to hypervisor ``to`` (whose
        management address is ``mgmt_ip``) by ``lab.qemu.drive``, announced
        to mbx by QEMU's events; ``placed()`` is true once mbx placed the VM
        at ``to``.  Returns the step timings (s) and QEMU's own figures."""
        src = self.host
        marks = [("start", time.monotonic())]
        uri = "tcp:%s:%d" % (mgmt_ip, MIGRATION_PORT)
        tracker = adapter.QmpTracker(self.name, src, to)
        configs = {adapter.SOURCE: self.nodes.adapter_config(src),
                   adapter.DESTINATION: self.nodes.adapter_config(to)}
        nodes_of = {adapter.SOURCE: src, adapter.DESTINATION: to}
        self.prepare(to, payload)
        self.start(to, incoming=True)
        dq = labqemu.Monitor(self.local("qmp", to), timeout=60)
        sq = labqemu.Monitor(self.local("qmp", src), timeout=60)

        def run_step(role, actions):
            for action in actions:
                ok = adapter.run_actions(
                    [action], configs[role], runner=self.nodes.runner(nodes_of[role]),
                    log=lambda m: log("  " + m))[0]
                if not ok:
                    raise LabError("mbxctl %s %s failed" % (action.verb, self.name))
                marks.append((action.verb, time.monotonic()))

        def switchover(stun):
            # The guest is stopped: stun, its port moves, and QEMU goes on
            # once mbx placed the VM at the destination.
            if stun is not None:
                stun()
            self.unplug(src)
            self.plug(to)
            wait_until(placed, 120, interval=0.5,
                       what="mbx to place %s on %s" % (self.name, to))
            marks.append(("placed", time.monotonic()))
        try:
            info = labqemu.drive(
                sq, dq, uri, tracker, run_step, switchover, marks, MIGRATE_TIMEOUT,
                lambda m: log("  %s (%s)" % (m, src + "->" + to)), {"handed_over": False},
                capabilities=("block",), parameters={"block-incremental": True})
        except BaseException:
            # The run fails and its VMs are destroyed; end the announced
            # migration first.
            if not tracker.over:
                run_step(adapter.SOURCE, tracker.handle(adapter.SOURCE, adapter.QMP_CANCELLED))
            raise
        finally:
            dq.close()
            sq.close()
        # The guest runs at the destination: its source QEMU and tap go.
        try:
            labqemu.Monitor(self.local("qmp", src), timeout=30).command("quit")
        except LabError:
            pass
        self.stop_forwards(src)
        self.nodes.run(src, "ip link del %s" % self.vm["vif"], check=False)
        self.host = self.shim.state["vms"][self.name]["host"] = to
        steps = {}
        for (_, prev), (label, t) in zip(marks, marks[1:]):
            steps[label] = round(t - prev, 2)
        steps["total"] = round(marks[-1][1] - marks[0][1], 2)
        steps.update({"qemu_total_ms": info.get("total-time"),
                      "qemu_downtime_ms": info.get("downtime"),
                      "ram_mb": round(info.get("ram", {}).get("transferred", 0) / 1e6, 1),
                      "disk_mb": round(info.get("disk", {}).get("transferred", 0) / 1e6, 1)})
        return steps
