"""The raw-row fuzzer: random invalid rows written straight into a live
lab's config databases, while another tenant's traffic is checked.

``mbxctl`` and the schema's own constraints are the only things between a
privileged writer (or a broken tool) and the rows mbx-northd, the
controllers and mbxd read.  The fuzzer writes over the databases'
privileged unix sockets (``Lab.nb_remote`` / ``sb_remote``) with plain
OVSDB ``transact`` requests: rows the schema accepts (the server refuses
the rest: counted, not a finding) whose values are what mbx must refuse
itself: bad MACs, addresses and CIDRs, garbage matches, out-of-range and
non-numeric options, references across tenants, chains naming another
tenant's middlebox, southbound rows for hosts, slices, VMs and migrations
that do not exist.

It plays one tenant (``attacker``): every row it writes belongs to that
tenant or to nobody (a ``tenant`` column never names another tenant, a VM
row never sits on another tenant's switch, no row is named after another
tenant's VM, switch or middlebox), but rows may point at other tenants'
rows.  Each step inserts rows (with their child rules, NAT rules and VIPs),
changes a column of a row it wrote, deletes one, or sets global options to
invalid values; at the end it deletes every row it wrote and restores the
global options.

``run(lab, traffic, seconds)`` fuzzes and checks, continuously:

* no daemon dies: the PID of every ovsdb-server (members and hosts),
  mbx-northd, physical controller, mbx-chassis, mbxd and ovs-vswitchd is
  alive throughout;
* the other tenant sees no failure (``lab.workload.Traffic``: its
  long-lived connections keep answering, its new connections succeed);
* the system keeps applying configuration: ``mbxctl --wait=hv sync``
  returns (the issue this guards: one bad row froze ``hv_cfg`` for all);
* after the cleanup, the attacker's own good rows still work.

It reports the tracebacks the daemons logged meanwhile (a handled error
should be one line), the warnings they repeated more than ``REPEAT_LIMIT``
times (a bad row should be logged once, not at every event) and the rows
the schema refused.

    python -m lab.rowfuzz [--seconds 60] [--seed N]

builds its own two-host lab (``MBX_LAB_PREFIX`` + "w", ``MBX_LAB_DIR`` +
"-rowfuzz"), runs, prints the report as JSON and tears the lab down.
"""

import argparse
import glob
import json
import os
import random
import re
import socket
import sys
import time

from lab.sh import LabError
from lab.workload import Tenant, Traffic, add_tenant

MARK = "mbx-rowfuzz"            # external_ids key of every row the fuzzer writes
WAIT_EVERY = 10.0               # s between two `mbxctl --wait=hv sync` checks
WAIT_TIMEOUT = 20               # s such a sync may take
REPEAT_LIMIT = 25               # the same warning more often than this: logged per event

NB_TABLES = ("Logical_Switch", "VM", "Middlebox", "Address_Set", "Steering_Policy",
             "External_Network")
SB_TABLES = ("Chassis", "Port_Binding", "Chassis_Private", "Slice", "VM_Location",
             "Datapath", "Shared_State", "IDS_Alert", "Migration")
CHILDREN = {"rules": "Firewall_Rule", "provider_rules": "Firewall_Rule",
            "nat_rules": "NAT_Rule", "vips": "LB_VIP"}
# Columns whose value names a tenant, a VM, a switch or a middlebox: never
# another tenant's.
OWN_NAME_COLUMNS = ("tenant", "name", "vm", "logical_port", "middlebox")
SKIP_COLUMNS = ("external_ids", "nb_cfg", "hv_cfg", "northd_cfg", "hv_cfg_timestamp",
                "sb_cfg", "connections")

# --------------------------------------------------------------- values

MACS = ["zz:zz:zz:00:11", "02:00:00:00:00", "02:00:00:00:00:0g", "ff:ff:ff:ff:ff:ff",
        "00:00:00:00:00:00", "01:00:5e:00:00:01", "02:00:00:00:99:01", "02-00-00-00-99-02",
        "02:00:00:00:99:01:ff", ""]
IPS = ["not-an-ip", "10.0.0.999", "10.99.0.5", "0.0.0.0", "255.255.255.255", "224.0.0.1",
       "127.0.0.1", "10.200.0.11", "::1", "10.0.0.5/24", "", "1.2.3", "10.0.0.01",
       "203.0.113.5", "10.0.0.1"]
CIDRS = ["10.0.0.0/33", "10.0.0.1/24", "0.0.0.0/0", "10.9.0.0/16", "10.0.0.0/32",
         "10.0.0.0/-1", "garbage", "10.0.0.0/24", "10.0.0.0/", "/24", "::/0"]
MATCHES = ["proto=tcp dport=99999", "proto=udp sport=5-1", "src=$nope", "src=$", "proto=\u00b2",
           "dport=80", "garbage garbage", "proto=tcp,dst=10.0.0.0/33", "any", "",
           "proto=icmp sport=1", "proto=tcp src=0.0.0.0/0 dst=0.0.0.0/0", "proto=tcp proto=udp",
           "src=10.0.0.0/24,,", "proto=256"]
ENDPOINTS = ["10.0.0.1:0", "10.0.0.1:99999", "x:y", "10.0.0.1:80", "10.0.0.1", ":80",
             "10.0.0.1:-1", "[::1]:80"]
PORT_RANGES = ["1-0", "0-65535", "70000-80000", "1024-65535", "abc", "5", "-5--1", "1024-"]
NUMBERS = ["-1", "0", "1e308", "nan", "inf", "99999999999999999999", "abc", "", "1.5", " 5",
           "0x10", "1_000", "\u00b2", "-0", "65536", "4294967296"]
OPTION_KEYS = ["conn-limit-vm", "conn-limit-host", "new-conn-rate-vm", "timeout-tcp-syn",
               "timeout-tcp-established", "timeout-udp", "timeout-icmp", "check",
               "check-interval", "same-host", "tier-order", "migration-gather",
               "migration-import", "ports-per-host", "scan-threshold", "synflood-threshold",
               "scan-window", "synflood-window", "health-check", "health-interval",
               "health-timeout", "health-rise", "health-fall", "migration-wait-ms",
               "shared-state-lease", "migration-retention", "unknown-option"]
GLOBAL_KEYS = ["migration-wait-ms", "shared-state-lease", "migration-retention",
               "conn-limit-vm", "conn-limit-host", "new-conn-rate-vm", "timeout-tcp-syn"]
JSON_TEXTS = ["{", "{}", "[]", "null", '{"switch": 1}', "1e999", '"x"', '{"vms": [null]}']
WORDS = ["", " ", "x" * 3000, "\u00b2", "\u0661\u0662", "a\nb", "\U0001f4a5", "%s%n",
         "'; --", "-", "..", "a,b", "$web"]

# Column name -> the pool its values come from.
POOLS = {"mac": MACS, "gateway_mac": MACS, "uplink_mac": MACS,
         "ip": IPS, "gateway": IPS, "gateway_ip": IPS, "encap_ip": IPS, "vip": IPS,
         "subnet": CIDRS, "cidr": CIDRS, "addresses": CIDRS + IPS, "logical_ip": CIDRS + IPS,
         "external_ips": IPS, "backends": ENDPOINTS, "match": MATCHES,
         "port_range": PORT_RANGES, "migration_address": ENDPOINTS + ["ssl:10.0.0.1:6650"],
         "config": JSON_TEXTS, "value": JSON_TEXTS + NUMBERS, "datapath_id": NUMBERS,
         "token": WORDS}


class RawDb:
    """Plain OVSDB JSON-RPC over a cluster's unix sockets (any member: a
    follower forwards a transaction to the leader), every call bounded."""

    def __init__(self, remote, name, timeout=10.0):
        self.paths = [r[len("unix:"):] for r in remote.split(",")]
        self.name = name
        self.timeout = timeout
        self._id = 0

    def call(self, method, params):
        last = None
        for path in self.paths:
            try:
                return self._call(path, method, params)
            except OSError as err:
                last = err
        raise LabError("no member of %s answers: %s" % (self.name, last))

    def _call(self, path, method, params):
        self._id += 1
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            s.connect(path)
            s.sendall(json.dumps({"method": method, "params": params, "id": self._id})
                      .encode())
            buf, decoder = "", json.JSONDecoder()
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                chunk = s.recv(1 << 20)
                if not chunk:
                    raise OSError("connection closed")
                buf += chunk.decode("utf-8", "replace")
                while buf:
                    try:
                        msg, end = decoder.raw_decode(buf)
                    except ValueError:
                        break
                    buf = buf[end:].lstrip()
                    if msg.get("method") == "echo":
                        s.sendall(json.dumps({"result": msg["params"], "error": None,
                                              "id": msg["id"]}).encode())
                    elif msg.get("id") == self._id:
                        if msg.get("error"):
                            raise LabError("%s %s: %s" % (self.name, method, msg["error"]))
                        return msg["result"]
            raise OSError("no reply within %.0f s" % self.timeout)

    def schema(self):
        return self.call("get_schema", [self.name])

    def transact(self, ops):
        """The per-operation results; an operation's error is in its result."""
        return self.call("transact", [self.name] + ops)

    def select(self, table, columns):
        got = self.transact([{"op": "select", "table": table, "where": [],
                              "columns": ["_uuid"] + columns}])
        return got[0].get("rows", [])


def _atom_type(t):
    return t if isinstance(t, dict) else {"type": t}


def _column_types(schema, table):
    out = {}
    for col, spec in schema["tables"][table]["columns"].items():
        t = spec["type"]
        if not isinstance(t, dict):
            t = {"key": t}
        key = _atom_type(t["key"])
        value = _atom_type(t["value"]) if "value" in t else None
        out[col] = (key, value, t.get("min", 1), t.get("max", 1))
    return out


class RowFuzzer:
    """Random invalid rows for one tenant (module docstring)."""

    def __init__(self, nb, sb, attacker, others, seed=0):
        """``nb``/``sb``: ``RawDb``; ``attacker``: the tenant name its rows
        carry; ``others``: names (tenants, switches, VMs, middleboxes) of
        the other tenants, which its own rows never take."""
        self.db = {"nb": nb, "sb": sb}
        self.schema = {"nb": nb.schema(), "sb": sb.schema()}
        self.types = {k: {t: _column_types(s, t) for t in s["tables"]}
                      for k, s in self.schema.items()}
        self.attacker = attacker
        self.others = set(others)
        self.rnd = random.Random(seed)
        self.written = {"nb": {}, "sb": {}}     # kind -> {table: [uuid]}
        self.counts = {"steps": 0, "committed": 0, "refused": 0, "errors": []}
        self._uuids = {}                        # (kind, table) -> [uuid] of existing rows
        self._names = []                        # names of existing rows, for chains
        self._globals = None
        self._n = 0
        self.attacker_switches = []             # uuids of the attacker's own switches
        self.attacker_vms = []                  # names of its VMs

    # ------------------------------------------------------------ values
    def refresh(self):
        """The rows that exist now, to point at."""
        self._uuids = {}
        names = set()
        for kind, tables in (("nb", ("Logical_Switch", "Middlebox", "Address_Set",
                                     "Firewall_Rule", "NAT_Rule", "LB_VIP")), ("sb", ())):
            for table in tables:
                cols = ["name"] if "name" in self.types[kind][table] else []
                rows = self.db[kind].select(table, cols)
                self._uuids[(kind, table)] = [r["_uuid"][1] for r in rows]
                names.update(r["name"] for r in rows if "name" in r)
        self._names = sorted(names)

    def _string(self, col):
        r = self.rnd.random()
        if col in ("chassis", "host", "source", "destination", "reported_by"):
            return self.rnd.choice(["h1", "h2", "h3", "ghost", "", "h1 "])
        if col in OWN_NAME_COLUMNS:
            if col == "tenant":
                return self.rnd.choice([self.attacker] * 4 + ["\u00b2", "t" * 300])
            if col in ("vm", "logical_port") and self.attacker_vms and r < 0.5:
                return self.rnd.choice(self.attacker_vms)
            self._n += 1
            return self.rnd.choice(["rf-%d" % self._n, "rf-%d-\u00b2" % self._n,
                                    "rf %d" % self._n, "rf-%d" % self._n + "x" * 200])
        pool = POOLS.get(col)
        if pool is not None and r < 0.7:
            return self.rnd.choice(pool)
        if r < 0.9:
            return self.rnd.choice(WORDS + MATCHES + IPS + NUMBERS)
        n = self.rnd.randrange(0, 40)
        return "".join(chr(self.rnd.choice([self.rnd.randrange(32, 127),
                                            self.rnd.randrange(0xA0, 0x3000)]))
                       for _ in range(n))

    def _atom(self, kind, col, atom, is_value=False):
        t = atom["type"]
        if "enum" in atom:
            enum = atom["enum"]
            return self.rnd.choice(enum[1] if isinstance(enum, list) and enum[0] == "set"
                                   else [enum])
        if t == "string":
            if col == "options":
                return (self.rnd.choice(NUMBERS + WORDS) if is_value
                        else self.rnd.choice(OPTION_KEYS))
            if col == "chain" and is_value:
                return self.rnd.choice(self._names + ["", "nope", "rf-0"])
            return self._string(col)
        if t == "integer":
            lo, hi = atom.get("minInteger", -2 ** 63), atom.get("maxInteger", 2 ** 63 - 1)
            return self.rnd.choice([lo, hi, lo + 1, max(lo, min(hi, 0)),
                                    self.rnd.randint(lo, min(hi, lo + 70000)),
                                    self.rnd.randint(lo, hi)])
        if t == "real":
            return self.rnd.choice([0.0, -1.0, 1e308, 3.5])
        if t == "boolean":
            return self.rnd.random() < 0.5
        if t == "uuid":
            ref = (kind, atom.get("refTable"))
            existing = self._uuids.get(ref) or []
            if not existing:
                return None
            return ["uuid", self.rnd.choice(existing)]
        raise ValueError("atom type %r" % t)

    def _datum(self, kind, table, col):
        key, value, lo, hi = self.types[kind][table][col]
        hi = 3 if hi == "unlimited" else hi
        n = self.rnd.randint(lo, max(lo, hi)) if (lo, hi) != (1, 1) else 1
        if value is not None:
            pairs = {}
            for _ in range(n):
                k = self._atom(kind, col, key)
                if k is None or isinstance(k, list):
                    continue
                pairs[k] = self._atom(kind, col, value, is_value=True)
            return ["map", [[k, v] for k, v in pairs.items() if v is not None]]
        atoms = [self._atom(kind, col, key) for _ in range(n)]
        atoms = [a for a in atoms if a is not None]
        if len(atoms) < lo:
            return None
        if (lo, hi) == (1, 1):
            return atoms[0]
        unique = []
        for a in atoms:
            if a not in unique:
                unique.append(a)
        return ["set", unique]

    def _row(self, kind, table):
        row = {}
        for col in self.types[kind][table]:
            if col in SKIP_COLUMNS or col.startswith("_") or col in CHILDREN:
                continue
            value = self._datum(kind, table, col)
            if value is None:
                return None         # a required reference with nothing to point at
            row[col] = value
        if table == "VM" and row.get("logical_switch", [None, None])[1] not in \
                self.written["nb"].get("Logical_Switch", []) + self.attacker_switches:
            return None             # a VM row sits on the attacker's switches only
        if "external_ids" in self.types[kind][table]:
            row["external_ids"] = ["map", [[MARK, "1"]]]
        return row

    # ------------------------------------------------------------ steps
    def step(self):
        """One random change; returns a short description of what it did."""
        self.counts["steps"] += 1
        r = self.rnd.random()
        mine = [(k, t, u) for k, tables in self.written.items()
                for t, us in tables.items() for u in us]
        if r < 0.1:
            return self._global_options()
        if r < 0.3 and mine:
            return self._update(*self.rnd.choice(mine))
        if r < 0.4 and mine:
            return self._delete(*self.rnd.choice(mine))
        kind = "nb" if self.rnd.random() < 0.6 else "sb"
        table = self.rnd.choice(NB_TABLES if kind == "nb" else SB_TABLES)
        return self._insert(kind, table)

    def _commit(self, kind, ops, what):
        try:
            results = self.db[kind].transact(ops)
        except LabError as err:
            self.counts["errors"].append("%s: %s" % (what, err))
            return None
        failed = [r for r in results if isinstance(r, dict) and r.get("error")]
        if failed or len(results) < len(ops):
            self.counts["refused"] += 1
            why = failed[0] if failed else {"error": "incomplete"}
            return None, "%s refused: %s" % (what, why.get("details") or why.get("error"))
        self.counts["committed"] += 1
        return results, what

    def _insert(self, kind, table):
        row = self._row(kind, table)
        if row is None:
            return "%s: nothing to point at" % table
        ops = [{"op": "insert", "table": table, "row": row, "uuid-name": "new"}]
        children = []
        if table == "Middlebox":
            for col, child in CHILDREN.items():
                names = []
                for i in range(self.rnd.randint(0, 2)):
                    crow = self._row(kind, child)
                    if crow is None:
                        continue
                    name = "%s%d" % (col.replace("_", ""), i)
                    ops.append({"op": "insert", "table": child, "row": crow,
                                "uuid-name": name})
                    names.append(["named-uuid", name])
                    children.append(child)
                row[col] = ["set", names]
        got = self._commit(kind, ops, "insert %s" % table)
        if not got or got[0] is None:
            return got[1] if got else "insert %s: no answer" % table
        uuid = got[0][0]["uuid"][1]
        self.written[kind].setdefault(table, []).append(uuid)
        for res, child in zip(got[0][1:], children):
            self.written[kind].setdefault(child, []).append(res["uuid"][1])
        return got[1]

    def _update(self, kind, table, uuid):
        cols = [c for c in self.types[kind][table]
                if c not in SKIP_COLUMNS and c not in CHILDREN and not c.startswith("_")]
        col = self.rnd.choice(cols)
        value = self._datum(kind, table, col)
        if value is None:
            return "update %s.%s: nothing to point at" % (table, col)
        if table == "VM" and col == "logical_switch":
            return "update VM.logical_switch: the attacker's switches only"
        ops = [{"op": "update", "table": table, "where": [["_uuid", "==", ["uuid", uuid]]],
                "row": {col: value}}]
        got = self._commit(kind, ops, "update %s.%s" % (table, col))
        return got[1] if got else "update: no answer"

    def _delete(self, kind, table, uuid):
        ops = [{"op": "delete", "table": table, "where": [["_uuid", "==", ["uuid", uuid]]]}]
        got = self._commit(kind, ops, "delete %s" % table)
        if got and got[0] is not None:
            self.written[kind][table].remove(uuid)
        return got[1] if got else "delete: no answer"

    def _global_options(self):
        if self._globals is None:
            rows = self.db["nb"].select("NB_Global", ["options"])
            self._globals = rows[0]["options"] if rows else ["map", []]
        pairs = [[self.rnd.choice(GLOBAL_KEYS), self.rnd.choice(NUMBERS)]
                 for _ in range(self.rnd.randint(1, 3))]
        keys = sorted({k for k, _ in pairs})
        pairs = [[k, v] for k, v in dict(pairs).items()]
        ops = [{"op": "mutate", "table": "NB_Global", "where": [],
                "mutations": [["options", "delete", ["set", keys]],
                              ["options", "insert", ["map", pairs]]]}]
        got = self._commit("nb", ops, "NB_Global options %s" % dict(pairs))
        return got[1] if got else "global options: no answer"

    def cleanup(self):
        """Delete every row written (one transaction per database) and
        restore the global options."""
        for kind, tables in self.written.items():
            ops = [{"op": "delete", "table": t, "where": [["_uuid", "==", ["uuid", u]]]}
                   for t, us in tables.items() for u in us]
            if ops:
                results = self.db[kind].transact(ops)
                failed = [r for r in results if isinstance(r, dict) and r.get("error")]
                if failed:
                    raise LabError("cleanup of %s failed: %s" % (kind, failed[0]))
            self.written[kind] = {}
        if self._globals is not None:
            self.db["nb"].transact([{"op": "update", "table": "NB_Global", "where": [],
                                     "row": {"options": self._globals}}])


# --------------------------------------------------------------- checks

def daemon_pids(lab):
    """{key: pid} of the lab's daemons: every process it started but the
    ones in VMs and external namespaces (probes, servers)."""
    return {k: p for k, p in lab.state["pids"].items() if not k.startswith("vm/")}


def dead(pids):
    return sorted(k for k, p in pids.items() if not _alive(p))


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def log_sizes(rundir):
    """{log file: its size now}: where the lines of a run start."""
    return {path: os.path.getsize(path)
            for path in glob.glob(os.path.join(rundir, "**", "*.log*"), recursive=True)}


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d[.,]\d+\s+")


def _tracebacks(lines, keep=3):
    """The tracebacks among ``lines``: the first ``keep`` of them, each as
    the line before it (what was being done), its last frame and the
    exception line, so a report names the failure, not only a count."""
    found = []
    for i, line in enumerate(lines):
        if not line.startswith("Traceback"):
            continue
        end = i + 1
        while end < len(lines) and lines[end].startswith((" ", "\t")):
            end += 1
        body = lines[max(i - 1, 0):i] + lines[max(i + 1, end - 2):end] + lines[end:end + 1]
        found.append("\n".join(x[:300] for x in body))
    return found[:keep] + (["... %d more" % (len(found) - keep)] if len(found) > keep else [])


def log_findings(rundir, since):
    """What the daemons logged after ``since`` (``log_sizes``): ({log file:
    its tracebacks, excerpted}, {warning or error line: count} of the lines said
    more than ``REPEAT_LIMIT`` times; a bad row is to be logged once)."""
    tracebacks, said = {}, {}
    for path in glob.glob(os.path.join(rundir, "**", "*.log*"), recursive=True):
        try:
            with open(path, errors="replace") as f:
                f.seek(since.get(path, 0))
                lines = f.read().splitlines()
        except OSError:
            continue
        name = os.path.relpath(path, rundir)
        found = _tracebacks(lines)
        if found:
            tracebacks[name] = found
        for line in lines:
            text = _STAMP.sub("", line)
            if text.startswith(("WARNING", "ERROR")) or " WARNING " in text[:60] \
                    or " ERROR " in text[:60]:
                key = (name, text)      # the whole line: two rows' warnings that
                said[key] = said.get(key, 0) + 1    # share a long prefix are two
    repeated = {}
    for (name, text), n in said.items():
        if n > REPEAT_LIMIT:
            shown = "%s: %s" % (name, text if len(text) <= 300 else text[:300] + "...")
            repeated[shown] = max(n, repeated.get(shown, 0))
    return tracebacks, repeated


def wait_hv(lab, timeout=WAIT_TIMEOUT):
    """None if `mbxctl --wait=hv sync` returns in time, else why not."""
    try:
        proc = lab.mbxctl("--wait=hv", "--timeout", str(timeout), "sync", timeout=timeout + 15)
    except Exception as err:        # noqa: BLE001 - a hung mbxctl is the finding
        return "mbxctl --wait=hv sync: %s" % err
    if proc.returncode != 0:
        return "mbxctl --wait=hv sync: %s" % (proc.stderr.strip() or proc.stdout.strip())
    return None


def run(lab, traffic, seconds, seed=0, attacker="rf-red", attacker_switches=(),
        attacker_vms=(), log=lambda *_: None):
    """Fuzz for ``seconds`` with every check (module docstring); returns the
    report (a dict).  ``traffic``: the other tenants' ``Traffic``, started."""
    pids = daemon_pids(lab)
    others = set()
    for t in traffic:
        others |= {t.tenant.name, t.tenant.switch, t.tenant.firewall} | set(t.tenant.vms)
    since = log_sizes(lab.rundir)
    fuzzer = RowFuzzer(RawDb(lab.nb_remote, "MBX_Northbound"),
                       RawDb(lab.sb_remote, "MBX_Southbound"), attacker, others, seed)
    fuzzer.attacker_switches = _uuids_of(fuzzer, "Logical_Switch", attacker_switches)
    fuzzer.attacker_vms = list(attacker_vms)
    report = {"seed": seed, "seconds": seconds, "daemons": len(pids), "died": [],
              "wait_hv_failures": [], "outcomes": {}}
    t0 = time.monotonic()
    next_wait = t0 + WAIT_EVERY
    try:
        while time.monotonic() - t0 < seconds:
            if fuzzer.counts["steps"] % 20 == 0:
                fuzzer.refresh()
            what = fuzzer.step()
            key = what.split(":")[0].split(" refused")[0]
            report["outcomes"][key] = report["outcomes"].get(key, 0) + 1
            log(what[:200])
            gone = dead(pids)
            if gone:
                report["died"] = gone
                break
            if time.monotonic() >= next_wait:
                why = wait_hv(lab)
                if why:
                    report["wait_hv_failures"].append(why)
                next_wait = time.monotonic() + WAIT_EVERY
    finally:
        fuzzer.cleanup()
    report["died"] = report["died"] or dead(pids)
    why = wait_hv(lab)
    if why:
        report["wait_hv_failures"].append("after the cleanup: " + why)
    report.update(steps=fuzzer.counts["steps"], committed=fuzzer.counts["committed"],
                  refused_by_schema=fuzzer.counts["refused"],
                  db_errors=fuzzer.counts["errors"][:10])
    report["new_tracebacks"], report["repeated_warnings"] = log_findings(lab.rundir, since)
    report["traffic"] = [t.summary() for t in traffic]
    return report


def _uuids_of(fuzzer, table, names):
    rows = fuzzer.db["nb"].select(table, ["name"])
    return [r["_uuid"][1] for r in rows if r.get("name") in names]


# --------------------------------------------------------------- the lab

VICTIM = Tenant("rf-blue", "ls-rf-blue", 3102, "10.62.0.0/24", 7002,
                {"rfb1": ("10.62.0.11", "h1"), "rfb2": ("10.62.0.12", "h2")})
ATTACKER = Tenant("rf-red", "ls-rf-red", 3101, "10.61.0.0/24", 7001,
                  {"rfr1": ("10.61.0.11", "h1"), "rfr2": ("10.61.0.12", "h2")})


def setup(lab, rundir):
    """Both tenants on a lab that is up; the victim's traffic started."""
    for tenant in (ATTACKER, VICTIM):
        add_tenant(lab, tenant)
    traffic = Traffic(lab, VICTIM, rundir)
    traffic.start()
    return traffic


def attacker_still_works(lab):
    """None if the attacker's own good config works again after the
    cleanup (a new connection between its VMs), else why not."""
    traffic = Traffic(lab, ATTACKER, lab.rundir)
    try:
        traffic.start()
        got = lab.tcp_try("rfr1", ATTACKER.vms["rfr2"][0], ATTACKER.port, timeout=3)
        return None if got.get("ok") == 1 else "rfr1 -> rfr2: %s" % got
    finally:
        traffic.stop()


def main(argv=None):
    from lab.lab import Lab
    p = argparse.ArgumentParser(prog="python -m lab.rowfuzz", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--seed", type=int, default=None)
    a = p.parse_args(argv)
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    prefix = os.environ.get("MBX_LAB_PREFIX", "mbx") + "w"
    rundir = os.environ.get("MBX_LAB_DIR", "/run/mbx") + "-rowfuzz"
    Lab(prefix=prefix, rundir=rundir).down(log=lambda *_: None)
    lab = Lab(prefix=prefix, rundir=rundir)
    traffic = None
    try:
        lab.up(["h1", "h2"], log=lambda *_: None)
        traffic = setup(lab, rundir)
        report = run(lab, [traffic], a.seconds, seed, ATTACKER.name, [ATTACKER.switch],
                     list(ATTACKER.vms), log=lambda line: print(line, file=sys.stderr))
        traffic.stop()
        report["traffic"] = [traffic.summary()]
        report["attacker_after_cleanup"] = attacker_still_works(lab)
        print(json.dumps(report, indent=1))
        return 0 if ok(report) else 1
    finally:
        if traffic is not None:
            traffic.stop()
        lab.down(log=lambda *_: None)


def ok(report):
    t = report["traffic"]
    return not (report["died"] or report["wait_hv_failures"]
                or any(x["lost"] or x["new_failures"] for x in t)
                or report.get("attacker_after_cleanup"))


if __name__ == "__main__":
    sys.exit(main())
