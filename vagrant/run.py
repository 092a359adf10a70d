"""``make vagrant-test``: mbx on four Vagrant VMs, checked end to end.

    python vagrant/run.py test      up, checks, destroy (also on failure)
    python vagrant/run.py test --keep   the same, but leave it all up (to look)
    python vagrant/run.py down      tear down what an interrupted run left

Everything runs inside the network namespace ``mbxvag`` (MBX_VAGRANT_NETNS)
that this script creates: its own ``virtlogd`` and ``libvirtd`` (started by
hand, their PIDs recorded in WORK/state.json, ended by PID), so libvirt's
bridges, DHCP server and NAT rules never touch this machine's network, and
``vagrant`` itself.  WORK (MBX_VAGRANT_DIR, default /var/tmp/mbx-vagrant)
holds the run's certificates, what each node gets uploaded, vagrant's
machine state and ssh configuration.

The test: ``vagrant up`` (controller node and three hypervisors provisioned
by deploy/install.sh and the systemd units), the hosts registered, a
cross-host TCP connection between VMs on two hypervisors, a default-deny
firewall (an allowed port connects, one without a rule times out, a reject
rule is refused), then ``vagrant destroy``.  It prints each step's time, the
whole run's time and the host memory of the VMs (the resident memory of
every process in the namespace at its peak).
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hypervisor import adapter                      # noqa: E402
from lab.sh import LabError, wait_until            # noqa: E402
from middlebox import pki                           # noqa: E402

NETNS = os.environ.get("MBX_VAGRANT_NETNS", "mbxvag")
WORK = os.environ.get("MBX_VAGRANT_DIR", "/var/tmp/mbx-vagrant")
VAGRANT_DIR = os.path.join(ROOT, "vagrant")
STATE = os.path.join(WORK, "state.json")
HYPERVISORS = ("hv1", "hv2", "hv3")
CONTROLLER_IP = "10.210.0.2"                       # as in the Vagrantfile
MGMT_IP = {"hv1": "10.210.0.11", "hv2": "10.210.0.12", "hv3": "10.210.0.13"}
NODES = ("ctl",) + HYPERVISORS
CONTROLLER_CERT = "controller"
DB_CERT = "db1"
UP_TIMEOUT = 3600
SSH_TIMEOUT = 300

# The tenant network of the checks: two VMs on two hypervisors.
SWITCH = ("ls-red", "red", "1001", "10.0.0.0/24")
VMS = {"vm1": ("hv1", "10.0.0.11", "02:00:0a:00:00:0b"),
       "vm2": ("hv2", "10.0.0.12", "02:00:0a:00:00:0c")}
FIREWALL = [
    ["mb-add", "fw-red", "ls-red", "--default", "deny"],
    ["fw-add", "fw-red", "100", "from-vm", "any", "allow"],
    ["fw-add", "fw-red", "100", "to-vm", "proto=tcp dport=7000", "allow"],
    ["fw-add", "fw-red", "110", "to-vm", "proto=tcp dport=7002", "reject"],
    ["steer-add", "ls-red", "100", "any", "fw-red"],
]
SERVE_PORTS = "7000,7001,7002"
# The guest that migrates: a QEMU guest on hv1 (vagrant/nested.py).
GUEST = "gst"
GUEST_VM = ("hv1", "10.0.0.13", "02:00:0a:00:00:0d")
GATEWAY = "10.0.0.1"                                # the switch's default gateway

# libvirtd's QEMU settings (bind-mounted over /etc/libvirt/qemu.conf in
# libvirtd's own mount namespace; the machine's file is untouched).  QEMU
# runs as root: where /dev/kvm exists but only root may open it, libvirt
# otherwise finds KVM "enabled when probing but not available now" and
# probes QEMU's capabilities again at every call (6-12 s each, measured).
QEMU_CONF = """user = "root"
group = "root"
"""

# Lines of vagrant's output kept out of the printed log (all are in the log file).
VAGRANT_NOISE = ("Progress:", ":  -- ", "No version detected", "generating a local metadata",
                 "boxes/format#box-metadata", "Warning: Connection refused",
                 "Warning: Remote connection disconnect", "SSH address:", "SSH username:",
                 "SSH auth method:")

T0 = time.monotonic()


def say(msg):
    print("[%6.1fs] %s" % (time.monotonic() - T0, msg), flush=True)


# ------------------------------------------------------------ state file
def load_state():
    try:
        with open(STATE) as f:
            return json.load(f)
    except FileNotFoundError:
        return {"netns": False, "pids": {}}


def save_state(state):
    os.makedirs(WORK, exist_ok=True)
    tmp = STATE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
    os.replace(tmp, STATE)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def sh(cmd, netns=False, check=True, timeout=600, env=None, capture=True):
    """Run ``cmd`` (in the namespace with ``netns``); its stdout."""
    if netns:
        cmd = ["ip", "netns", "exec", NETNS] + list(cmd)
    proc = subprocess.run(cmd, capture_output=capture, text=True, timeout=timeout,
                          env=env)
    if check and proc.returncode != 0:
        tail = ((proc.stderr or "") + (proc.stdout or "")).strip().splitlines()[-5:]
        raise LabError("%s: exit %d: %s" % (" ".join(cmd), proc.returncode,
                                           " | ".join(tail)))
    return proc.stdout


# ------------------------------------------------- namespace and libvirtd
def daemons_up(state):
    """The namespace, then virtlogd and libvirtd inside it."""
    if not state["netns"]:
        sh(["ip", "netns", "add", NETNS])
        state["netns"] = True
        save_state(state)
        sh(["ip", "link", "set", "lo", "up"], netns=True)
    conf = os.path.join(WORK, "qemu.conf")
    with open(conf, "w") as f:
        f.write(QEMU_CONF)
    for name in ("virtlogd", "libvirtd"):
        pidfile = os.path.join(WORK, name + ".pid")
        if os.path.exists(pidfile):
            os.unlink(pidfile)
        start = "exec %s --daemon --pid-file %s" % (name, shlex.quote(pidfile))
        if name == "libvirtd":
            # Its own mount namespace, where its QEMU settings are ours.
            start = "mount --bind %s /etc/libvirt/qemu.conf && %s" % (
                shlex.quote(conf), start)
        sh(["unshare", "--mount", "--propagation", "private", "sh", "-c", start],
           netns=True)
        pid = wait_until(lambda: _read_pid(pidfile), 30, interval=0.1,
                         what="%s's pid file" % name)
        state["pids"][name] = pid
        save_state(state)
    wait_until(lambda: subprocess.run(
        ["ip", "netns", "exec", NETNS, "virsh", "-c", "qemu:///system", "version"],
        capture_output=True).returncode == 0, 60, interval=0.5, what="libvirtd to answer")
    say("libvirtd %d and virtlogd %d up in namespace %s"
        % (state["pids"]["libvirtd"], state["pids"]["virtlogd"], NETNS))


def _read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (FileNotFoundError, ValueError):
        return None


def vagrant_env():
    env = dict(os.environ, VAGRANT_CWD=VAGRANT_DIR,
               VAGRANT_DOTFILE_PATH=os.path.join(WORK, "dot-vagrant"),
               MBX_VAGRANT_STAGE=os.path.join(WORK, "stage"),
               VAGRANT_DEFAULT_PROVIDER="libvirt")
    return env


def vagrant(*args, timeout=UP_TIMEOUT, check=True, log=None):
    """``vagrant ARGS`` in the namespace; its output goes to ``log`` (and
    stdout, each line stamped) when given."""
    cmd = ["ip", "netns", "exec", NETNS, "vagrant"] + list(args)
    if log is None:
        return sh(cmd, check=check, timeout=timeout, env=vagrant_env())
    with open(log, "a") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=vagrant_env())
        deadline = time.monotonic() + timeout
        for line in proc.stdout:
            out.write(line)
            line = line.rstrip()
            if line and not any(n in line for n in VAGRANT_NOISE):
                say("  " + line)
            if time.monotonic() > deadline:
                proc.kill()
                break
        code = proc.wait()
    if check and code != 0:
        raise LabError("vagrant %s: exit %d (log %s)" % (" ".join(args), code, log))
    return code


def down(state=None):
    """Destroy the VMs, end the daemons (by PID), delete the namespace."""
    state = state or load_state()
    problems = []
    # The ssh processes forwarding a guest's sockets.
    for key, pid in list(state["pids"].items()):
        if key.startswith("ssh-"):
            if pid_alive(pid):
                os.kill(pid, signal.SIGTERM)
            state["pids"].pop(key)
    save_state(state)
    if state["pids"].get("libvirtd") and pid_alive(state["pids"]["libvirtd"]):
        say("vagrant destroy")
        try:
            vagrant("destroy", "-f", timeout=900, log=os.path.join(WORK, "destroy.log"))
        except (LabError, subprocess.TimeoutExpired) as err:
            problems.append(str(err))
        # Whatever vagrant left of this project (a failed up): its domains.
        try:
            for dom in sh(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                          netns=True, check=False).split():
                if dom.startswith("vagrant_"):
                    sh(["virsh", "-c", "qemu:///system", "destroy", dom], netns=True,
                       check=False)
                    sh(["virsh", "-c", "qemu:///system", "undefine", dom,
                        "--remove-all-storage"], netns=True, check=False)
                    problems.append("domain %s was left; removed" % dom)
            for net in sh(["virsh", "-c", "qemu:///system", "net-list", "--all", "--name"],
                          netns=True, check=False).split():
                if net.startswith("mbx-vagrant-"):
                    sh(["virsh", "-c", "qemu:///system", "net-destroy", net], netns=True,
                       check=False)
                    sh(["virsh", "-c", "qemu:///system", "net-undefine", net], netns=True,
                       check=False)
        except subprocess.TimeoutExpired as err:
            problems.append(str(err))
    for name in ("libvirtd", "virtlogd"):
        pid = state["pids"].get(name)
        if pid and pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            try:
                wait_until(lambda: not pid_alive(pid), 30, interval=0.1,
                           what="%s %d to exit" % (name, pid))
            except LabError:
                os.kill(pid, signal.SIGKILL)
        state["pids"].pop(name, None)
        save_state(state)
    if state["netns"]:
        left = sh(["ip", "netns", "pids", NETNS], check=False).split()
        if left:
            problems.append("processes still in %s: %s" % (NETNS, " ".join(left)))
        else:
            sh(["ip", "netns", "del", NETNS], check=False)
            state["netns"] = False
            save_state(state)
    for p in problems:
        say("teardown: " + p)
    say("torn down (namespace %s %s)" % (NETNS, "kept" if state["netns"] else "deleted"))
    return not problems


# ------------------------------------------------------------- staging
def stage():
    """What each node gets (the Vagrantfile uploads WORK/stage/NAME): the
    checkout's files as src.tar, mbx's wheel, its certificates."""
    base = os.path.join(WORK, "stage")
    sh(["rm", "-rf", base, os.path.join(WORK, "pki")])
    pki_dir = os.path.join(WORK, "pki")
    pki.init_ca(pki_dir, name="mbx vagrant CA")
    for host in HYPERVISORS:
        pki.issue_host(pki_dir, host)
    pki.issue(pki_dir, DB_CERT, "server")
    pki.issue(pki_dir, CONTROLLER_CERT, "controller")
    wheels = os.path.join(WORK, "wheels")
    sh(["rm", "-rf", wheels])
    pip = os.environ.get("MBX_PIP") or os.path.join(ROOT, ".venv", "bin", "pip")
    sh([pip, "wheel", "-q", "--disable-pip-version-check", "--no-deps", "-w", wheels, ROOT],
       timeout=600)
    files = sh(["git", "-C", ROOT, "ls-files", "-z"])
    for node in NODES:
        d = os.path.join(base, node)
        os.makedirs(os.path.join(d, "pki"))
        subprocess.run(["tar", "-C", ROOT, "--null", "-T", "-", "-cf",
                        os.path.join(d, "src.tar")], input=files, text=True, check=True)
        sh(["cp", "-r", wheels, os.path.join(d, "wheels")])
        names = [DB_CERT, CONTROLLER_CERT] if node == "ctl" else [node]
        for name in names:
            for ext in ("pem", "key"):
                sh(["cp", os.path.join(pki_dir, "%s.%s" % (name, ext)),
                    os.path.join(d, "pki")])
        sh(["cp", os.path.join(pki_dir, "ca.pem"), os.path.join(d, "pki")])
    say("staged: CA and certificates (%s), mbx wheel, source tarball" % pki_dir)


# ----------------------------------------------------------------- nodes
class Nodes:
    """Commands on the VMs over ssh (vagrant's ssh configuration)."""

    def __init__(self):
        self.cfg = os.path.join(WORK, "ssh.cfg")
        with open(self.cfg, "w") as f:
            f.write(vagrant("ssh-config", timeout=300))

    def run(self, node, script, check=True, timeout=SSH_TIMEOUT):
        """``script`` (shell) as root on ``node``; its stdout."""
        return sh(["ssh", "-F", self.cfg, node, "sudo sh -c %s" % shlex.quote(script)],
                  netns=True, check=check, timeout=timeout)

    def ssh_argv(self, node):
        return ["ip", "netns", "exec", NETNS, "ssh", "-F", self.cfg, node]

    def copy(self, node, local, remote):
        """The local file ``local`` as root's ``remote`` on ``node``."""
        with open(local, "rb") as f:
            proc = subprocess.run(self.ssh_argv(node) + [
                "sudo sh -c %s" % shlex.quote("cat > %s" % shlex.quote(remote))],
                stdin=f, capture_output=True, timeout=SSH_TIMEOUT)
        if proc.returncode != 0:
            raise LabError("copy of %s to %s:%s: %s" % (local, node, remote,
                                                       proc.stderr.decode().strip()))

    def runner(self, node):
        """``subprocess.run`` for ``hypervisor.adapter.run_actions``: each
        mbxctl command line runs as root on ``node``."""
        def run(argv, **kwargs):
            return subprocess.run(self.ssh_argv(node) + [
                "sudo " + " ".join(shlex.quote(a) for a in argv)], **kwargs)
        return run

    @staticmethod
    def adapter_config(host):
        """How a hypervisor sends mbx's migration steps: mbxctl over TLS to
        the controller node's databases, with the host's own certificate."""
        pki_dir = "/etc/mbx/pki"
        return adapter.Config(host=host, db="ssl:%s:6641" % CONTROLLER_IP,
                              sb="ssl:%s:6642" % CONTROLLER_IP, mbxctl="/opt/mbx/bin/mbxctl",
                              stun_wait=60.0, timeout=30.0,
                              private_key="%s/%s.key" % (pki_dir, host),
                              certificate="%s/%s.pem" % (pki_dir, host),
                              ca_cert="%s/ca.pem" % pki_dir)

    def mbxctl(self, *args, check=True):
        return self.run("ctl", "mbxctl --db unix:/run/mbx/nb.sock --sb unix:/run/mbx/sb.sock "
                        + " ".join(shlex.quote(a) for a in args), check=check)


def namespace_vm(nodes, name):
    """A VM as mbx-lab makes one: a network namespace on its hypervisor with
    a veth whose other end is a port of br-int carrying the VM's iface-id
    and MAC."""
    host, ip, mac = VMS[name]
    vif = "vif-" + name
    nodes.run(host, " && ".join([
        "ip netns add %s" % name, "ip -n %s link set lo up" % name,
        "ip link add %s type veth peer name eth0 netns %s" % (vif, name),
        "ip -n %s link set eth0 address %s mtu 1450" % (name, mac),
        "ip -n %s addr add %s/24 dev eth0" % (name, ip),
        "ip netns exec %s ethtool -K eth0 tx off tso off gso off >/dev/null" % name,
        "ethtool -K %s tx off tso off gso off >/dev/null" % vif,
        "ip -n %s link set eth0 up" % name,
        "ovs-vsctl add-port br-int %s -- set interface %s external_ids:iface-id=%s "
        "external_ids:attached-mac=%s" % (vif, vif, name, mac),
        "ip link set %s up" % vif]))


def vm_exec(nodes, name, cmd, timeout=SSH_TIMEOUT, check=True):
    host = VMS[name][0]
    return nodes.run(host, "ip netns exec %s %s" % (name, cmd), timeout=timeout, check=check)


def tcp_try(nodes, src, dst_ip, port, timeout=2.0):
    out = vm_exec(nodes, src, "/opt/mbx/bin/python -m lab.probe try --to %s --port %d "
                  "--timeout %s" % (dst_ip, port, timeout))
    res = json.loads(out)
    return next((k for k in ("ok", "refused", "timeout") if res.get(k)), "error")


def memory_mb():
    """Resident memory (MB) of every process in the namespace: the VMs'
    QEMUs, libvirtd, virtlogd, dnsmasq."""
    total = 0
    for pid in sh(["ip", "netns", "pids", NETNS], check=False).split():
        try:
            with open("/proc/%s/status" % pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total // 1024


# ------------------------------------------------------------------ test
def checks(nodes, peak):
    def hosts_up():
        out = nodes.mbxctl("host-list", check=False)
        return all(h in out for h in HYPERVISORS) and out
    out = wait_until(hosts_up, 300, interval=3, what="the three hypervisors to register")
    say("hosts registered (mbxctl host-list):\n" + out.rstrip())
    nodes.mbxctl("ls-add", SWITCH[0], "--tenant", SWITCH[1], "--vni", SWITCH[2],
                 "--subnet", SWITCH[3])
    for name, (host, ip, mac) in VMS.items():
        nodes.mbxctl("vm-add", name, "--switch", SWITCH[0], "--ip", ip, "--mac", mac)
        namespace_vm(nodes, name)
    placed = lambda: all(l.split()[0] in VMS and VMS[l.split()[0]][0] in l
                         for l in nodes.mbxctl("vm-list").splitlines()[1:] if l.strip()) \
        and nodes.mbxctl("vm-list")
    out = wait_until(placed, 120, interval=2, what="the VMs to be placed")
    say("VMs placed (mbxctl vm-list):\n" + out.rstrip())
    peak[0] = max(peak[0], memory_mb())

    # The servers in vm1 (on hv1).
    vm_exec(nodes, "vm1", "sh -c 'nohup /opt/mbx/bin/python -m lab.probe serve --port %s "
            ">/tmp/serve-vm1.log 2>&1 &'" % SERVE_PORTS)
    wait_until(lambda: tcp_try(nodes, "vm2", VMS["vm1"][1], 7001) == "ok", 120, interval=2,
               what="a connection from vm2 (hv2) to vm1 (hv1)")
    say("cross-host: vm2 on hv2 -> vm1 on hv1 tcp 7001: ok (no firewall yet)")
    ping = vm_exec(nodes, "vm2", "ping -c 3 -i 0.3 %s" % VMS["vm1"][1])
    say("cross-host ping: " + ping.strip().splitlines()[-1])

    chained = []
    for args in FIREWALL:
        say("  mbxctl " + " ".join(shlex.quote(a) for a in args))
        chained += (["--"] if chained else []) + args
    nodes.mbxctl("--wait=hv", "--timeout", "120", *chained)
    cases = [(7000, "ok", "to-vm allow tcp 7000"),
             (7001, "timeout", "no rule: default deny drops"),
             (7002, "refused", "reject: the firewall answers with a RST")]
    bad = []
    say("firewall, vm2 (hv2) -> vm1 (hv1):")
    for port, expect, why in cases:
        seen = tcp_try(nodes, "vm2", VMS["vm1"][1], port)
        say("  tcp %d: expect %-8s observed %-8s %s%s" % (port, expect, seen, why,
                                                         "" if seen == expect else "  WRONG"))
        if seen != expect:
            bad.append(port)
    peak[0] = max(peak[0], memory_mb())
    if bad:
        raise LabError("firewall check failed for ports %s" % bad)


def migration(nodes, state, peak):
    """A QEMU guest on hv1 keeps a TCP stream to vm2 (hv2) open while it
    live-migrates to hv3; mbx hears of it through QEMU's events."""
    import nested
    from lab import qemu as labqemu
    name, (host, ip, mac) = GUEST, GUEST_VM
    nodes.mbxctl("vm-add", name, "--switch", SWITCH[0], "--ip", ip, "--mac", mac)
    payload = os.path.join(WORK, "lab.tar")
    labqemu.payload(payload)

    def track(key, pid):
        if pid is None:
            state["pids"].pop(key, None)
        else:
            state["pids"][key] = pid
        save_state(state)
    guest = nested.Guest(nodes, name, host, ip + "/24", mac, GATEWAY,
                         os.path.join(WORK, "fwd"), track)
    say("guest %s: booting QEMU on %s (TCG inside the TCG hypervisor)" % (name, host))
    boot_s = guest.boot(payload)
    say("guest %s: its agent answers after %.0f s; %s" % (
        name, boot_s, guest.exec(["uname", "-r"]).stdout.strip()))
    peak[0] = max(peak[0], memory_mb())
    where = lambda: {l.split()[0]: l for l in nodes.mbxctl("vm-list").splitlines()[1:]
                     if l.strip()}
    wait_until(lambda: host in where().get(name, ""), 120, interval=2,
               what="mbx to place %s on %s" % (name, host))
    vm_exec(nodes, "vm2", "sh -c 'nohup /opt/mbx/bin/python -m lab.probe serve --port 7000 "
            ">/tmp/serve-vm2.log 2>&1 &'")
    out = "/tmp/probe.json"
    client = guest.spawn(["python3", "-m", "lab.probe", "client", "--to", VMS["vm2"][1],
                          "--port", "7000", "--interval-ms", "100", "--duration", "590",
                          "--reply-timeout", "30", "--out", out], "/tmp/probe.log")

    def report():
        data = guest.read(out)
        return json.loads(data) if data else None
    wait_until(lambda: (report() or {}).get("received", 0) >= 30, 300, interval=2,
               what="the guest's stream to vm2 to get going")
    before = report()
    say("stream %s (hv1) -> vm2 (hv2) tcp 7000: %d replies before the migration"
        % (name, before["received"]))
    to = "hv3"
    say("live migration of %s: %s -> %s (QMP, block migration of its disk overlay)"
        % (name, host, to))
    steps = guest.migrate(to, MGMT_IP[to], payload,
                          placed=lambda: to in where().get(name, ""), log=say)
    say("migrated: " + ", ".join("%s %s" % kv for kv in steps.items()))
    peak[0] = max(peak[0], memory_mb())
    at = report()["received"]
    wait_until(lambda: (report() or {}).get("received", 0) >= at + 30, 300, interval=2,
               what="30 more replies on the guest's stream after the migration")
    client.terminate()
    client.wait(60)
    final = report()
    say("stream after the migration: %d replies in all, error %s, largest gap %.0f ms "
        "(guest clock)" % (final["received"], final["error"], final["max_gap_ms"]))
    say("mbxctl migration-show %s:\n%s" % (name, nodes.mbxctl("migration-show", name).rstrip()))
    placed_now = where().get(name, "")
    if final["error"] or to not in placed_now:
        raise LabError("the migration broke the stream or left %s misplaced: %s; %s"
                       % (name, final["error"], placed_now))


def test(keep=False):
    state = load_state()
    if state["netns"] or state["pids"]:
        say("a previous run left things behind: tearing them down first")
        down(state)
        state = load_state()
    os.makedirs(WORK, exist_ok=True)
    ok = False
    peak = [0]
    try:
        daemons_up(state)
        stage()
        t_up = time.monotonic()
        say("vagrant up (controller node + 3 hypervisors, TCG)")
        vagrant("up", "--provider", "libvirt", log=os.path.join(WORK, "up.log"))
        say("vagrant up: done in %.0f s" % (time.monotonic() - t_up))
        peak[0] = max(peak[0], memory_mb())
        nodes = Nodes()
        checks(nodes, peak)
        migration(nodes, state, peak)
        ok = True
    finally:
        peak[0] = max(peak[0], memory_mb())
        if keep:
            say("kept up (--keep): 'python vagrant/run.py down' tears it down")
            clean = True
        else:
            clean = down(state)
        say("%s in %.0f s; host memory of the VMs at peak: %d MB (resident, every "
            "process in %s)" % ("PASSED" if ok and clean else "FAILED",
                                time.monotonic() - T0, peak[0], NETNS))
    return 0 if ok and clean else 1


def main(argv):
    if os.geteuid() != 0:
        print("run.py: needs root (namespaces, libvirtd)", file=sys.stderr)
        return 2
    if argv[1:2] == ["test"] and argv[2:] in ([], ["--keep"]):
        try:
            return test(keep=argv[2:] == ["--keep"])
        except (LabError, subprocess.TimeoutExpired) as err:
            print("vagrant-test: %s" % err, file=sys.stderr)
            return 1
    if argv[1:] == ["down"]:
        return 0 if down() else 1
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
