"""``ovs-appctl -t mbxd ...``: the daemon's runtime inspection commands.

The unixctl server runs in the daemon's one thread, so each command reads
the service directly; connections are read from conntrack at the time of
the command, decision counters fresh from the switch's flows.  Replies are plain text, one item per line, in
``key=value`` form where a line describes one thing (easy to grep, like
ovs-appctl's own commands).
"""

import json
import time

import ovs.unixctl

from ovsdb.errors import MbxError
from ovsdb.match import PROTOCOL_NAMES


def register(daemon):
    service = daemon.service

    def reply(fn):
        def handler(conn, argv, _aux):
            try:
                conn.reply(fn(*argv))
            except (KeyError, ValueError) as err:
                conn.reply_error("%s\n" % err)
            except MbxError as err:
                conn.reply_error("%s\n" % err)
        return handler

    def fresh(fn):
        """A command whose answer waits for fresh counters from the switch."""
        def handler(conn, argv, _aux):
            def answer():
                try:
                    conn.reply(fn(*argv))
                except (KeyError, ValueError, MbxError) as err:
                    conn.reply_error("%s\n" % err)
            daemon.fresh_stats(answer)
        return handler

    def slice_list():
        lines = []
        for tag in sorted(service.slices):
            cfg = service.slices[tag].config
            local = [vm.name for vm in cfg.vms if daemon.zones.vm(vm.name) is not None]
            lines.append("tag=%d middlebox=%s tenant=%s switch=%s vni=%d local_vms=%d "
                         "check=%s" % (tag, cfg.middlebox, cfg.tenant, cfg.switch, cfg.vni,
                                       len(local),
                                       dict(cfg.options or {}).get("check", "offload")))
        return _text(lines, "no slices on this host")

    def zone_list():
        lines = ["%s %s zone=%d" % (kind, name, zone)
                 for (kind, name), zone in sorted(daemon.zones.owners().items())]
        return _text(lines, "no conntrack zones")

    def lb_list():
        lines = []
        for v in service.lb_list():
            lines.append("%s %s (slice %d) %s" % (v["middlebox"], v["vip"], v["tag"],
                                                 v["algorithm"]))
            for b in v["backends"]:
                lines.append("  %-21s %-4s connections=%d%s" % (
                    b["backend"], b["health"], b["connections"],
                    " probed here" if b["probed_here"] else ""))
        return _text(lines, "no load balancer on this host")

    def conns(vm=None):
        offload = {tag: dict(s.config.options or {}).get("check", "offload") == "offload"
                   for tag, s in service.slices.items()}
        out = daemon.conns.all(service, vm)
        for c in out:
            c["offloaded"] = offload.get(c["tag"], True)
        return out

    def conn_list(vm=None):
        lines = [_conn_line(c) for c in conns(vm)]
        return _text(lines, "no connections" + (" of %s" % vm if vm else ""))

    def conn_json(vm=None):
        return json.dumps(conns(vm), sort_keys=True, default=str) + "\n"

    def conn_count():
        counts = {}
        for c in conns():
            counts[c["tag"]] = counts.get(c["tag"], 0) + 1
        lines = ["total %d" % sum(counts.values())]
        lines += ["slice %d (%s) %d" % (tag, service.slices[tag].config.middlebox
                                        if tag in service.slices else "?", n)
                  for tag, n in sorted(counts.items())]
        return _text(lines)

    def conn_flush(vm=None):
        owners = daemon.zones.owners()
        zones = [z for (kind, name), z in owners.items()
                 if kind == "vm" and (vm is None or name == vm)]
        if vm is not None and not zones:
            raise ValueError("no VM %s on this host" % vm)
        for zone in zones:
            daemon.vswitch.flush_zone(zone)
        return "flushed %d zone%s\n" % (len(zones), "" if len(zones) == 1 else "s")

    def rules_show(mb=None):
        lines = []
        for item in service.rules_show(mb):
            lines.append("middlebox %s (slice %d): default %s (hits %d), %s, check=%s, "
                         "same-host=%s" % (item["middlebox"], item["tag"],
                                           item["default_action"], item["hits"]["default"],
                                           item["tier_order"], item["check"],
                                           item["same_host"]))
            for direction in ("from-vm", "to-vm"):
                for r in item.get(direction, []):
                    lines.append("  %-7s %-8s %5d  %-6s hits=%-6d %s" % (
                        direction, r["tier"], r["priority"], r["action"], r["hits"],
                        r["match"]))
            for err in item["errors"]:
                lines.append("  error: %s" % err)
        return _text(lines, "no middleboxes on this host" if mb is None
                     else "no middlebox %s on this host" % mb)

    def stats_dict():
        st = service.stats()
        st.update({"arrivals_" + k: v for k, v in daemon.arrivals.counters.items()})
        st["held"] = st["held"] + daemon.arrivals.counters["held"]
        # Held packets of an arrival whose state never came: they could not
        # open a connection, so they were invalid.
        st["invalid"] = daemon.arrivals.counters["fallback_dropped"]
        st["hold_dropped"] = st["hold_dropped"] + daemon.arrivals.counters["hold_dropped"]
        st["flows"] = len(daemon.installed)
        st["groups"] = len(daemon.groups)
        st["zones"] = len(daemon.zones.owners())
        # Recovery (docs/middlebox.md, "Restart"): switch connections lost,
        # connections given back to a restarted switch, censuses taken.
        st["switch_losses"] = daemon.switch_losses
        st["conns_restored"] = daemon.conns_restored
        st["checkpoints"] = daemon.conns.checkpoints if daemon.conns else 0
        return st

    def stats():
        st = stats_dict()
        lines = []
        for key, value in sorted(st.items()):
            if isinstance(value, int) and not isinstance(value, bool):
                lines.append("%s %d" % (key, value))
        for verdict, n in sorted(st.get("decisions", {}).items()):
            lines.append("decisions_%s %d" % (verdict, n))
        for s in st.get("slices", []):
            lines.append("slice_%d_packets %d" % (s["tag"], s["packets"]))
        port = daemon.port.counters() if daemon.port else {}
        for key, value in sorted(port.items()):
            lines.append("port_%s %d" % (key, value))
        if st.get("last_error"):
            lines.append("last_error %s" % st["last_error"])
        return _text(lines)

    def stats_json():
        return json.dumps(stats_dict(), sort_keys=True) + "\n"

    def config_show():
        held = daemon.conf.held_rows()
        lines = ["%s: %s" % (table, " ".join(names) if names else "-")
                 for table, names in sorted(held.items())]
        return _text(lines)

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

    def ids_alerts():
        return _text([_alert_line(a) for a in service.alerts], "no IDS alerts")

    def ids_json():
        return json.dumps(service.alerts, sort_keys=True, default=str) + "\n"

    def lb_json():
        return json.dumps(service.lb_list(), sort_keys=True, default=str) + "\n"

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

    def limits():
        daemon.refresh_limits()
        return service.limits

    def limits_show():
        return _limits_text(limits())

    def limits_json():
        return json.dumps(limits(), sort_keys=True)

    def exit_():
        daemon.exiting = True
        return ""

    commands = [
        ("slice/list", "", 0, 0, reply(slice_list)),
        ("ct-zone/list", "", 0, 0, reply(zone_list)),
        ("conn/list", "[VM]", 0, 1, reply(conn_list)),
        ("conn/json", "[VM]", 0, 1, reply(conn_json)),
        ("conn/count", "", 0, 0, reply(conn_count)),
        ("conn/flush", "[VM]", 0, 1, reply(conn_flush)),
        ("rules/show", "[MIDDLEBOX]", 0, 1, fresh(rules_show)),
        ("stats", "", 0, 0, fresh(stats)),
        ("stats/json", "", 0, 0, fresh(stats_json)),
        ("config/show", "", 0, 0, reply(config_show)),
        ("shared/list", "[TAG]", 0, 1, reply(shared_list)),
        ("shared/json", "[TAG]", 0, 1, reply(shared_json)),
        ("ids/alerts", "", 0, 0, reply(ids_alerts)),
        ("ids/json", "", 0, 0, reply(ids_json)),
        ("lb/list", "", 0, 0, reply(lb_list)),
        ("lb/json", "", 0, 0, reply(lb_json)),
        ("migration/list", "", 0, 0, reply(migration_list)),
        ("migration/json", "", 0, 0, reply(migration_json)),
        ("limits/show", "", 0, 0, reply(limits_show)),
        ("limits/json", "", 0, 0, reply(limits_json)),
        ("exit", "", 0, 0, reply(exit_)),
    ]
    for name, usage, lo, hi, handler in commands:
        ovs.unixctl.command_register(name, usage, lo, hi, handler, None)


def _text(lines, empty=None):
    if not lines and empty:
        return empty + "\n"
    return "".join(line + "\n" for line in lines)


def _limits_text(rep):
    """``limits/show``: the host's line, then one line per VM zone."""
    def num(value):
        return "-" if value is None else str(value)
    lines = ["host conn-limit-host=%s connections=%s new-conn-rate-vm=%s" % (
        num(rep.get("conn_limit_host")), num(rep.get("host_count")),
        num(rep.get("new_conn_rate_vm")))]
    for v in rep.get("vms", ()):
        lines.append("vm=%s zone=%d conn-limit-vm=%s connections=%s new-conn-rate-vm=%s "
                     "new-conns-passed=%s new-conns-dropped=%s timeout-tcp-syn=%s" % (
                         v["vm"], v["zone"], num(v["limit"]), num(v["count"]),
                         num(v["new_conn_rate"]), num(v["new_conn_in"]),
                         num(v["new_conn_dropped"]), num(v["timeout_tcp_syn"])))
    return _text(lines)


def _conn_line(c):
    proto = PROTOCOL_NAMES.get(c["proto"], str(c["proto"]))
    return ("vm=%s slice=%d zone=%d %s %s:%d -> %s:%d origin=%s state=%s verdict=%s "
            "offloaded=%s expires=%s rule=%s"
            % (c["vm"], c["tag"], c["zone"], proto, c["vm_ip"], c["vm_port"], c["peer_ip"],
               c["peer_port"], c["origin"], c["state"], c["verdict"],
               "yes" if c["offloaded"] else "no",
               "%ds" % c["timeout"] if c["timeout"] is not None else "-", c["rule"])
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
