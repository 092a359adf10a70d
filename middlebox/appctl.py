"""``ovs-appctl -t mbxd ...``: the daemon's runtime inspection commands.

The unixctl server runs in the daemon's one thread, so each command reads
the core directly.  Replies are plain text, one item per line, in
``key=value`` form where a line describes one thing (easy to grep, like
ovs-appctl's own commands).
"""

import json
import time

import ovs.unixctl

from ovsdb.match import PROTOCOL_NAMES


def register(daemon):
    core = daemon.core

    def reply(fn):
        def handler(conn, argv, _aux):
            try:
                conn.reply(fn(*argv))
            except (KeyError, ValueError) as err:
                conn.reply_error("%s\n" % err)
        return handler

    def slice_list():
        lines = []
        for s in core.slice_list():
            lines.append("tag=%(tag)d id=%(id)d middlebox=%(middlebox)s tenant=%(tenant)s "
                         "switch=%(switch)s vni=%(vni)d local_vms=%(local_vms)d "
                         "connections=%(entries)d" % s)
        return _text(lines, "no slices on this host")

    def lb_list():
        lines = []
        for v in core.lb_list():
            lines.append("%s %s (slice %d) %s" % (v["middlebox"], v["vip"], v["tag"],
                                                 v["algorithm"]))
            for b in v["backends"]:
                lines.append("  %-21s %-4s connections=%d%s" % (
                    b["backend"], b["health"], b["connections"],
                    " probed here" if b["probed_here"] else ""))
        return _text(lines, "no load balancer on this host")

    def conn_list(vm=None):
        now = time.time()
        lines = [_conn_line(c, now) for c in core.conn_list(vm)]
        return _text(lines, "no connections" + (" of %s" % vm if vm else ""))

    def conn_count():
        count = core.conn_count()
        lines = ["total %d" % count["total"]]
        lines += ["slice %d (%s) %d" % (s["tag"], s["middlebox"], s["entries"])
                  for s in count["slices"]]
        return _text(lines)

    def conn_flush(vm=None):
        flows = core.flush(vm)
        if flows:
            daemon.of.send_flows([], flows)
        daemon.dirty = True
        return "flushed%s; %d cache flows removed\n" % (" " + vm if vm else "", len(flows))

    def rules_show(mb=None):
        lines = []
        for item in core.rules_show(mb):
            lines.append("middlebox %s (slice %d): default %s, %s, check=%s, same-host=%s"
                         % (item["middlebox"], item["tag"], item["default_action"],
                            item["tier_order"], item["check"], item["same_host"]))
            for direction in ("from-vm", "to-vm"):
                for r in item.get(direction, []):
                    lines.append("  %-7s %-8s %5d  %-6s %s" % (
                        direction, r["tier"], r["priority"], r["action"], r["match"]))
            lines.append("  timeouts: " + " ".join(
                "%s=%s" % kv for kv in sorted(item["timeouts"].items())))
            for err in item["errors"]:
                lines.append("  error: %s" % err)
        return _text(lines, "no middleboxes on this host" if mb is None
                     else "no middlebox %s on this host" % mb)

    def stats():
        st = core.stats()
        lines = []
        for key, value in sorted(st.items()):
            if isinstance(value, int):
                lines.append("%s %d" % (key, value))
        for verdict, n in sorted(st.get("decisions", {}).items()):
            lines.append("decisions_%s %d" % (verdict, n))
        for s in st.get("slices", []):
            lines.append("slice_%d_packets %d" % (s["tag"], s["packets"]))
            lines.append("slice_%d_connections %d" % (s["tag"], s["entries"]))
        port = daemon.port.counters() if daemon.port else {}
        for key, value in sorted(port.items()):
            lines.append("port_%s %d" % (key, value))
        if st.get("last_error"):
            lines.append("last_error %s" % st["last_error"])
        return _text(lines)

    def config_show():
        held = daemon.conf.held_rows()
        lines = ["%s: %s" % (table, " ".join(names) if names else "-")
                 for table, names in sorted(held.items())]
        return _text(lines)

    def stats_json():
        return json.dumps(core.stats(), sort_keys=True) + "\n"

    def shared_rows(tag):
        try:
            return daemon.shared.listing(_tag(tag) if tag is not None else None)
        except KeyError as err:         # no such slice
            raise ValueError(err.args[0]) from None

    def shared_list(tag=None):
        return _shared_table(shared_rows(tag), time.time())

    def shared_json(tag=None):
        rows = shared_rows(tag)
        return json.dumps({"host": daemon.shared.host, "now": int(time.time() * 1000),
                           "rows": rows, "stats": daemon.shared.stats()},
                          sort_keys=True) + "\n"

    def alert_rows():
        get = getattr(core, "ids_alerts", None)
        return get() if callable(get) else daemon.shared.alerts()

    def ids_alerts():
        return _text([_alert_line(a) for a in alert_rows()], "no IDS alerts")

    def ids_json():
        return json.dumps(alert_rows(), sort_keys=True, default=str) + "\n"

    def lb_json():
        return json.dumps(core.lb_list(), sort_keys=True, default=str) + "\n"

    def conn_json(vm=None):
        return json.dumps(core.conn_list(vm), sort_keys=True, default=str) + "\n"

    def migration_state():
        if daemon.migrations is None:
            raise ValueError("state migration is off on this daemon (--no-migration, "
                             "or no --pki-dir)")
        return daemon.migrations.listing()

    def migration_list():
        st = migration_state()
        lines = []
        for t in st["transfers"]:
            lines.append("%s %s %s %s peer=%s state=%s entries=%d seq=%d%s" % (
                (t["migration"] or "?")[:8], t["vm"] or "?", t["role"], t.get("path", ""),
                t["peer"], t["state"], t["entries"], t["seq"],
                " gather=%s" % t["mode"] if "mode" in t else ""))
        for h in st["holds"]:
            lines.append("hold %s %s held=%d total=%d" % (h["vm"], h["state"], h["held"],
                                                          h["count"]))
        for f in st["forwarders"]:
            lines.append("forwarder %s proto=%d %s" % (f["vm"], f["proto"], f["wire"]))
        for h in st["history"][-10:]:
            lines.append("past %s %s: %s" % (h["vm"], h["role"], h["what"]))
        return _text(lines, "no migrations")

    def migration_json():
        return json.dumps(migration_state(), sort_keys=True, default=str) + "\n"

    def exit_():
        daemon.exiting = True
        return ""

    commands = [
        ("slice/list", "", 0, 0, slice_list),
        ("conn/list", "[VM]", 0, 1, conn_list),
        ("conn/count", "", 0, 0, conn_count),
        ("conn/flush", "[VM]", 0, 1, conn_flush),
        ("rules/show", "[MIDDLEBOX]", 0, 1, rules_show),
        ("stats", "", 0, 0, stats),
        ("stats/json", "", 0, 0, stats_json),
        ("config/show", "", 0, 0, config_show),
        ("shared/list", "[TAG]", 0, 1, shared_list),
        ("shared/json", "[TAG]", 0, 1, shared_json),
        ("ids/alerts", "", 0, 0, ids_alerts),
        ("ids/json", "", 0, 0, ids_json),
        ("lb/list", "", 0, 0, lb_list),
        ("lb/json", "", 0, 0, lb_json),
        ("conn/json", "[VM]", 0, 1, conn_json),
        ("migration/list", "", 0, 0, migration_list),
        ("migration/json", "", 0, 0, migration_json),
        ("exit", "", 0, 0, exit_),
    ]
    for name, usage, lo, hi, fn in commands:
        ovs.unixctl.command_register(name, usage, lo, hi, reply(fn), None)


def _text(lines, empty=None):
    if not lines and empty:
        return empty + "\n"
    return "".join(line + "\n" for line in lines)


def _conn_line(c, now):
    proto = PROTOCOL_NAMES.get(c["proto"], str(c["proto"]))
    return ("vm=%s slice=%d %s %s:%d -> %s:%d origin=%s state=%s verdict=%s "
            "offloaded=%s packets=%d/%d bytes=%d/%d age=%.0fs idle=%.0fs expires=%.0fs rule=%s"
            % (c["vm"], c["tag"], proto, c["vm_ip"], c["vm_port"], c["peer_ip"],
               c["peer_port"], c["origin"], c["state"], c["verdict"],
               "yes" if c["offloaded"] else "no", c["packets_orig"], c["packets_reply"],
               c["bytes_orig"], c["bytes_reply"], now - c["created"], now - c["last_seen"],
               max(0.0, c["expires"] - now), c["rule"] or "default")
            + ("" if not c.get("xlate") else " %s=%s/%s" % (
                c["xlate"]["kind"], c["xlate"]["wire_vm"], c["xlate"]["wire_peer"])))


def _tag(text):
    try:
        return int(text)
    except ValueError:
        raise ValueError("%r is not a slice tag" % (text,)) from None


def _shared_table(rows, now):
    """``shared/list``: one line per row: middlebox service key host value
    age (seconds since the publisher's stamp)."""
    if not rows:
        return "no shared state\n"
    table = [("MIDDLEBOX", "SERVICE", "KEY", "HOST", "VALUE", "AGE")]
    for r in rows:
        value = json.dumps(r["value"], sort_keys=True, separators=(",", ":"))
        if len(value) > 60:
            value = value[:57] + "..."
        table.append((r["middlebox"], r["service"], r["key"], r["host"], value,
                      "%.1fs" % max(0.0, now - r["stamp"] / 1000.0)))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  "
                   + row[-1] + "\n" for row in table)


def _ms_time(value):
    """An alert time (ms, or s from a core that keeps seconds) as text."""
    if not isinstance(value, (int, float)):
        return str(value)
    seconds = value / 1000.0 if value > 1e11 else value
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(seconds)) + \
        ".%03d" % (int(seconds * 1000) % 1000)


def _alert_line(a):
    """One alert: the core's (``time``) or SharedState's (``first_seen``,
    ``last_seen``)."""
    hosts = a.get("hosts") or ()
    if "first_seen" in a or "last_seen" in a:
        when = "first_seen=%s last_seen=%s" % (_ms_time(a.get("first_seen")),
                                               _ms_time(a.get("last_seen")))
    else:
        when = "time=%s" % _ms_time(a.get("time"))
    return ("kind=%s middlebox=%s source=%s target=%s count=%s hosts=%s %s reported_by=%s"
            % (a.get("kind"), a.get("middlebox"), a.get("source"), a.get("target") or "-",
               a.get("count"), ",".join(hosts) if not isinstance(hosts, str) else hosts,
               when, a.get("reported_by", "-")))
