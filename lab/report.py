"""``make bench``'s report: ``docs/benchmarks.md`` and its plots.

``targets(results)`` checks the results of ``lab.bench`` against the
targets of issue 13 (and the control plane's of issue 14);
``write(results, out_dir, md_path)`` renders everything (machine, the data
path of three systems, migration, control plane, memory, targets) as
Markdown with PNG plots (matplotlib, Agg backend; installed by ``make
bench`` from requirements-bench.txt; without it the page has no plots).
Every figure on the page comes from ``results``: ``--render`` gives the
same page again.
"""

import os
import sys

SYSTEMS = ("plain", "ct-baseline", "mbx")
# The phases of moving a VM's state, in order (lab.migbench).
BEFORE_IMPORT = ("gather", "encode", "transfer", "decode", "verify", "localize")
TARGET_MOVE_MS = 1000
TARGET_CPS = 1.2            # new connections/s, mbx / ct-baseline
TARGET_CONNECT = 1.1        # median connect time, mbx / ct-baseline
TARGET_TO_CT, TARGET_TO_PLAIN = 1.0, 0.95   # established throughput
GAP_LIMITS = (("announced", 10), ("unannounced", 50))


# ------------------------------------------------------------------ helpers
def _k(n):
    n = int(n)
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return "%dM" % (n // 1_000_000)
    return "%dk" % (n // 1000) if n % 1000 == 0 else str(n)


def _r(v):
    return "-" if v is None else "%.2f" % v


def _ms(v):
    return "-" if v is None else "%.2f" % v


def _cps(v):
    return "-" if v is None else "%.0f/s" % v


def _lat(ms):
    """A latency in ms: fine below 10 ms, whole ms below 1 s, then seconds."""
    if ms is None:
        return "-"
    return "%.2f ms" % ms if ms < 10 else "%.0f ms" % ms if ms < 1000 else "%.2f s" % (ms / 1000)


def _s(ms):
    """A duration given in ms, in the unit that reads best."""
    if ms is None:
        return "-"
    return "%.2f s" % (ms / 1000) if ms >= 1000 else "%.0f ms" % ms


def _fmt(v, unit):
    if v is None:
        return "-"
    if unit == "pps":
        return "%.1fk pps" % (v / 1000)
    return "%.3f Gbit/s" % v


def _each_ms(values):
    """"plain / ct-baseline / mbx ms" of a {system: ms} mapping."""
    return " / ".join(_ms(values.get(s)) for s in SYSTEMS) + " ms"


def _x(v, limit):
    """A ratio with two decimals, three where two would round it onto the limit."""
    return ("%.3f" if round(v, 2) == limit and v != limit else "%.2f") % v


def _t(target, measured, met, where=""):
    return {"target": target, "measured": measured, "met": met, "where": where}


# ------------------------------------------------------------------ migration
def summarize_migration(mig):
    """The report's figures of ``lab.migbench.run``'s raw results (any of
    its parts may be missing)."""
    if not mig:
        return None
    out = {"method": mig.get("method", {})}
    if "transfer" in mig:
        out["state_transfer"] = mig["transfer"]
    if "gaps" in mig:
        gaps = {path: {k: ({kk: vv for kk, vv in v.items() if kk != "samples"}
                           if isinstance(v, dict) and "n" in v else v)
                       for k, v in d.items() if k != "migrate_total_ms"}
                for path, d in mig["gaps"].items()}
        for path, d in gaps.items():
            if d["plain"].get("n") and d["mbx_vm_to_vm"].get("n"):
                d["ratio_median_mbx_to_plain"] = round(
                    d["mbx_vm_to_vm"]["median"] / d["plain"]["median"], 3)
            d["migrate_total_ms"] = mig["gaps"][path]["migrate_total_ms"]
        out["reply_gap_ms"] = gaps
    if "survival_mbx" in mig or "conntrack" in mig:
        ct = mig.get("conntrack")
        out["survival"] = {"mbx": mig.get("survival_mbx"), "conntrack": ct}
        if mig.get("survival_mbx") and ct and ct.get("share"):
            out["survival_ratio_mbx_to_conntrack"] = {
                path: round(s["share"] / ct["share"], 3) if s["share"] is not None else None
                for path, s in mig["survival_mbx"].items()}
    return out


def _commits(r):
    """", commit X", or which commit measured which part (``--update``)."""
    at = {k: v for k, v in (r.get("measured_at") or {}).items() if v}
    if len(set(at.values())) > 1:
        by = {}
        for part, commit in at.items():
            by.setdefault(commit, []).append(part.replace("_", " "))
        return "; " + ", ".join("%s at commit %s" % (" and ".join(parts), commit)
                                for commit, parts in by.items())
    return ", commit %s" % r["commit"] if r.get("commit") else ""


def _transfer_row(t):
    """(usable bulk ms, usable lazy ms, usable bulk overlapped ms or None) of
    one transfer result, or None."""
    if not t or "error" in t:
        return None
    return t["usable_bulk_ms"], t["usable_lazy_ms"], t.get("usable_overlapped_ms")


# ------------------------------------------------------------------ targets
def targets(r):
    """Issue 13's targets (and issue 14's for the control plane), each with
    what this run measured and whether it is met."""
    out = []
    d = r.get("dataplane")
    if d:
        for case, row in d["newconn"].items():
            par = row["parallel"]
            mc = par["mbx_to_ct"]
            if mc is not None:
                out.append(_t("new connections/s %s: mbx >= %.1f x ct-baseline" % (
                    case, TARGET_CPS), "%s x (%s vs %s, %d clients)" % (
                        _x(mc, TARGET_CPS), _cps(par["per_second"]["mbx"]),
                        _cps(par["per_second"]["ct-baseline"]),
                        d["method"]["workers"]), mc >= TARGET_CPS, "newconn"))
        for case, row in d["newconn"].items():
            c = row.get("connect_median_mbx_to_ct")
            if c is not None:
                out.append(_t("median connect time %s: mbx <= %.1f x ct-baseline" % (
                    case, TARGET_CONNECT), "%s x (%s vs %s ms)" % (
                        _x(c, TARGET_CONNECT), _ms(row["connect_ms_median"]["mbx"]),
                        _ms(row["connect_ms_median"]["ct-baseline"])),
                    c <= TARGET_CONNECT, "newconn"))
        for case, row in d["throughput"].items():
            mc, mp = row["mbx_to_ct"], row["mbx_to_plain"]
            if mc is not None:
                out.append(_t("throughput %s: mbx >= %.1f x ct-baseline" % (case, TARGET_TO_CT),
                              "%s x" % _x(mc, TARGET_TO_CT), mc >= TARGET_TO_CT, "throughput"))
            if mp is not None:
                out.append(_t("throughput %s: mbx >= %.2f x plain" % (case, TARGET_TO_PLAIN),
                              "%s x" % _x(mp, TARGET_TO_PLAIN), mp >= TARGET_TO_PLAIN,
                              "throughput"))
    m = r.get("migration") or {}
    tr = m.get("state_transfer") or {}
    big = tr.get("100000")
    if big is not None:
        row = _transfer_row(big)
        if row is None:
            out.append(_t("100k connections gathered, moved and usable <= 1 s", "failed: %s"
                          % big.get("error"), False, "transfer"))
        else:
            out.append(_t("100k connections gathered, moved and usable <= 1 s (bulk import: "
                          "committed after `final`, then the barrier)", _s(row[0]),
                          row[0] <= TARGET_MOVE_MS, "transfer"))
            if row[2] is not None:
                out.append(_t("100k connections gathered, moved and usable <= 1 s (bulk import "
                              "of an unannounced move: committed as the parts come, then "
                              "the barrier)", _s(row[2]), row[2] <= TARGET_MOVE_MS, "transfer"))
            out.append(_t("100k connections gathered, moved and usable <= 1 s (lazy import: "
                          "decoded and indexed, committed at the first packet)", _s(row[1]),
                          row[1] <= TARGET_MOVE_MS, "transfer"))
    huge = tr.get("1000000")
    if huge is not None:
        row = _transfer_row(huge)
        out.append(_t("1M connections measured and reported",
                      "bulk %s, overlapped %s, lazy %s" % (
                          _s(row[0]), _s(row[2]) if row[2] is not None else "-", _s(row[1]))
                      if row
                      else "failed: %s" % huge.get("error"), row is not None, "transfer"))
    sv = (m.get("survival") or {}).get("mbx")
    if sv:
        for path, s in sv.items():
            kinds = s.get("kinds", {})
            lost = ["%s %d/%d" % (k, v["survived"], v["total"]) for k, v in sorted(kinds.items())
                    if v["survived"] != v["total"]]
            out.append(_t("100%% of connections survive the %s path (%s)" % (
                path, ", ".join(sorted(kinds))), "%.0f%% over %d moves%s" % (
                    100 * (s["share"] or 0), s["moves"], "; lost: " + ", ".join(lost)
                    if lost else ""), s["share"] == 1.0, "survival"))
    gaps = m.get("reply_gap_ms") or {}
    for path, limit in GAP_LIMITS:
        g = gaps.get(path, {}).get("extra_all_kinds")
        if g:
            out.append(_t("extra reply gap p99, %s: <= %d ms" % (path, limit),
                          "%+.0f ms (median %+.0f ms)" % (g["p99"], g["median"]),
                          g["p99"] <= limit, "gap"))
    mem = r.get("memory")
    if mem:
        mb = mem.get("mbxd", {})
        dp = mem.get("datapath", {})
        if mb:
            out.append(_t("memory per connection reported: mbxd", ", ".join(
                "%.0f B at %s" % (v["rss_bytes_per_connection"], _k(n)) for n, v in mb.items()),
                True, "memory"))
        out.append(_t("memory per connection reported: datapath (ovs-vswitchd)", ", ".join(
            "%.0f B at %s" % (v["rss_bytes_per_connection"], _k(n)) for n, v in dp.items())
            or "not measured", bool(dp), "memory"))
    cp = r.get("control_plane")
    if cp:
        n = "%d hosts x %d VMs" % (cp["hosts"], cp["vms_per_host"])
        if "northd_full" in cp:
            out.append(_t("(issue 14) control plane at %s: logical controller, full "
                          "translation <= 2 s" % n, "%.2f s" % cp["northd_full"]["seconds"],
                          cp["northd_full"]["met"], "control"))
        if "one_host" in cp:
            one = cp["one_host"]["ms"]
            out.append(_t("(issue 14) control plane at %s: physical controller, one host's "
                          "full computation <= 50 ms" % n,
                          "%.1f ms median, %.1f ms max" % (one["median"], one["max"]),
                          cp["one_host"]["met"], "control"))
        mv = cp["move"]["reaction_ms"]
        out.append(_t("(issue 14) control plane at %s: one VM move p99 <= 20 ms" % n,
                      "%.1f ms p99 (median %.1f ms)" % (mv.get("p99", mv["max"]), mv["median"]),
                      cp["move"]["met"], "control"))
    ha = r.get("failover")
    if ha and ha.get("summary"):
        from lab import habench
        for kind, row in ha["summary"].items():
            out.append(_t("(issue 15) %s killed: usable again within 5 s, connection alive"
                          % habench.LABELS[kind],
                          "%.2f s max (median %.2f s, %d rounds); survived %d/%d" % (
                              row["usable_max_s"], row["usable_median_s"], row["n"],
                              ha["survived"], ha["total"]),
                          row["usable_max_s"] <= 5.0 and ha["survived"] == ha["total"],
                          "failover"))
    noisy = r.get("noisy")
    if noisy:
        lim = noisy["phases"]["flood-limited"]
        out.append(_t("noisy neighbour: another tenant's new connections while one VM floods: "
                      "no failure, p99 <= 2x quiet",
                      "%d failed of %d; p99 %s x quiet" % (
                          lim["failed"], lim["ok"] + lim["failed"],
                          _r(noisy["p99_to_quiet"]["flood-limited"])),
                      noisy["target_met"], "noisy"))
    return out


def targets_markdown(targets):
    lines = ["| target | measured | met |", "|---|---|---|"]
    for t in targets:
        lines.append("| %s | %s | %s |" % (t["target"], t["measured"],
                                          {True: "yes", False: "**no**", None: "-"}[t["met"]]))
    return lines


def _missed(r, where):
    return [t for t in r.get("targets", []) if t.get("where") == where and t["met"] is False]


# ------------------------------------------------------------------ data path
def dataplane_markdown(d, plots):
    m = d["method"]
    lines = [
        "## Data path: plain, ct-baseline, mbx (`lab/perfbench.py`)",
        "",
    ]
    cs = d.get("conntrack_settings") or {}
    if cs:
        seen = sorted({v for per in cs.values() for v in per.values()})
        lines += ["Conntrack settings, the same in both labs: every host's ovs-vswitchd "
                  "reports \"%s\" (mbxd switches TCP sequence checking off on its host: "
                  "imported connections carry no window state; the conntrack lab's hosts "
                  "get the same switch)." % "\", \"".join(seen), ""]
    algos = d.get("lb_algorithms") or {}
    if algos.get("mbx"):
        lines += ["Load-balancer VIPs: mbx %s; ct-baseline %s. The new-connection test "
                  "uses the port-80 VIP in both (a select group hashing the 5-tuple: "
                  "decided by the switch); the throughput test's port-5201 VIP is mbx's "
                  "`source-hash` (its backend picked by mbxd at the first packet, then "
                  "conntrack) against ct-baseline's select group on `ip_src`; the "
                  "round-robin VIP is mbx's only (below)." % (
                      ", ".join("%s `%s`" % kv for kv in sorted(algos["mbx"].items())),
                      ", ".join("%s: %s" % kv for kv in sorted(algos["ct-baseline"].items()))),
                  ""]
    lines += [
        "![established throughput](%s)" % plots.get("throughput", ""),
        "",
        "### Established connections",
        "",
        "| traffic | plain | ct-baseline | mbx | mbx / plain | mbx / ct-baseline | "
        "ct-baseline / plain | plain in the ct lab / plain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case, row in d["throughput"].items():
        med, unit = row["median"], row["unit"]
        lines.append("| %s | %s | %s | %s | **%s** | **%s** | %s | %s |" % (
            row["what"], _fmt(med["plain"], unit), _fmt(med["ct-baseline"], unit),
            _fmt(med["mbx"], unit), _r(row["mbx_to_plain"]), _r(row["mbx_to_ct"]),
            _r(row["ct-baseline_to_plain"]), _r(row["plain-ct_to_plain"])))
    lines += [
        "",
        "What the client host's datapath did per packet during those runs (medians): "
        "datapath passes (1 + recirculations after `ct()`), megaflow subtables probed "
        "per hit, upcalls per 1000 packets; plain / ct-baseline / mbx: %s." % "; ".join(
            "%s %s" % (case, " / ".join(_pp(row.get("datapath_per_packet", {}).get(s))
                                       for s in SYSTEMS))
            for case, row in d["throughput"].items()),
        "",
        "Medians of %d rounds; iperf3 %d s a run (TCP: one stream; UDP: 64-byte "
        "datagrams at full rate, datagrams received per second). Through SNAT there is "
        "no plain path (the plain switch has no gateway), so only the ct-baseline "
        "ratio. The last column compares the plain twin in the "
        "conntrack lab with the one in the mbx lab: the same physical path, so it "
        "shows how much the two labs differ by noise alone."
        % (m["rounds"], m["iperf_seconds"]),
        "",
        "### New connections",
        "",
        "![new connections](%s)" % plots.get("newconn", ""),
        "",
        "| connections | plain | ct-baseline | mbx | mbx / plain | mbx / ct-baseline | "
        "connect time plain / ct / mbx, median | p99 | connect, mbx / ct |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case, row in d["newconn"].items():
        for mode, label in (("parallel", "%d clients" % m["workers"]), ("serial", "1 client")):
            ps = row[mode]["per_second"]
            cm, cp = row["connect_ms_median"], row["connect_ms_p99"]
            extra = (_each_ms(cm), _each_ms(cp), "**%s**" % _r(row.get(
                "connect_median_mbx_to_ct"))) if mode == "serial" else ("", "", "")
            lines.append("| %s, %s | %s | %s | %s | %s | **%s** | %s | %s | %s |" % (
                row["what"], label, _cps(ps["plain"]), _cps(ps["ct-baseline"]), _cps(ps["mbx"]),
                _r(row[mode]["mbx_to_plain"]), _r(row[mode]["mbx_to_ct"]), *extra))
    lines += [
        "",
        "Short TCP connections (connect, one echoed line, close; `lab.probe rate`), "
        "%d from one client thread and %d from %d threads, per round; new connections "
        "per second are per host pair (one client VM). The first packet's latency is "
        "the client's connect time (SYN to SYN-ACK through the whole pipeline, both "
        "hosts' stages). Failed connections over the run: %s."
        % (m["connections"], 2 * m["connections"], m["workers"],
           "; ".join("%s: %s" % (case, ", ".join("%s %d" % (s, n)
                                                 for s, n in row["failed"].items()))
                     for case, row in d["newconn"].items())),
        "",
    ]
    cpu = d.get("cpu_split")
    if cpu:
        lines += [
            "Where a new connection's time goes, on the host of both ends of the "
            "same-host case (h3), %d clients: CPU per connection, and what "
            "ovs-vswitchd's userspace datapath did per connection (packets received, "
            "recirculations, upcalls: packets that missed the datapath's flow cache "
            "and went through the OpenFlow tables in the slow path):" % m["workers"],
            "",
            "| system | new connections/s | ovs-vswitchd CPU | mbxd CPU | packets | "
            "recirculations | megaflow hits | subtables probed per hit | upcalls |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        rows = [(s, v) for s, v in cpu.items()]
        if d.get("cpu_split_rr"):
            rows.append(("mbx, round-robin VIP (h1)", d["cpu_split_rr"]))
        for s, v in rows:
            c = v["cpu_ms_per_connection"]
            dp = v.get("datapath_per_connection") or {}
            lines.append("| %s | %s | %.3f ms | %s | %s | %s | %s | %s | %s |" % (
                s, _cps(v["per_second"]), c.get("ovs-vswitchd", 0),
                "%.3f ms" % c["mbxd"] if "mbxd" in c and s.startswith("mbx") else "-",
                "%.1f" % dp.get("packets received", 0) if dp else "-",
                "%.1f" % dp.get("packet recirculations", 0) if dp else "-",
                "%.1f" % dp.get("megaflow hits", 0) if dp else "-",
                _r(v.get("subtables_per_megaflow_hit")), "%.2f" % _upcalls(dp) if dp else "-"))
        lines += ["", "CPU from /proc (all threads; 10 ms ticks over %d connections). The "
                  "round-robin row is mv's connections to mbx's round-robin VIP %s, on "
                  "mv's host h1, where mbxd picks each connection's backend and commits it "
                  "(no ct-baseline counterpart: OVN has no round-robin)." % (
                      (next(iter(cpu.values())) or {}).get("connections", 0),
                      "10.0.0.101:80"), ""]
    prof = d.get("mbxd_profile")
    if prof:
        lines += [
            "mbxd's own profile (cProfile, `mbxd --profile` on %s, from its start to its "
            "end) over %d connections to the round-robin VIP (%s; counters: %s); %.0f of "
            "%.0f ms were spent waiting for input; profiling slows Python about twofold, "
            "so read the shares:" % (
                prof.get("host", "h1"), prof["connections"], _cps(prof.get("per_second")),
                ", ".join("%s %d" % kv for kv in sorted((prof.get("counters") or {}).items()))
                or "-", prof.get("waiting_ms", 0), prof["profiled_ms"]),
            "",
            "| function | calls | own ms | cumulative ms |",
            "|---|---|---|---|",
        ] + ["| `%s` | %d | %.1f | %.1f |" % (r["function"], r["calls"], r["own_ms"],
                                            r["cumulative_ms"]) for r in prof["top_own"][:12]]
        if prof.get("daemon_loop"):
            lines += ["", "The daemon loop's parts: " + ", ".join(
                "`%s` %.0f ms" % (r["function"].split("(")[-1].rstrip(")"), r["cumulative_ms"])
                for r in prof["daemon_loop"][:8]) + "."]
        lines.append("")
    flows = d.get("flows_per_host")
    if flows:
        lines += ["OpenFlow flows per host at the end (mbx lab / conntrack lab): %s; "
                  "neither grows with connections." % "; ".join(
                      "%s %s / %s" % (h, flows["mbx"].get(h), flows["ct"].get(h))
                      for h in sorted(flows["mbx"])), ""]
    conv = d.get("shared_state_ms")
    if conv:
        lines += [
            "Shared state: a host publishes a change (a backend's health flips as its "
            "service stops and starts) and every other host serving the slice has it "
            "after **%.1f ms** (median of %d, max %.1f ms; the receiving daemon's "
            "arrival time minus the publisher's stamp)." % (
                conv["median"], conv["samples"], conv["max"]), ""]
    return lines


def _pp(x):
    """passes, subtables per hit, upcalls per 1000 packets of one system."""
    if not x or x.get("passes") is None:
        return "-"
    return "%.1f, %.2f, %.1f" % (x["passes"], x["subtables_per_hit"] or 0,
                                 x["upcalls_per_1000"] or 0)


def _upcalls(dp):
    return dp.get("miss with success upcall", 0) + dp.get("miss with failed upcall", 0)


def dataplane_analysis(r):
    d = r["dataplane"]
    tp = d["throughput"]
    lines = []
    missed = _missed(r, "throughput")
    if missed:
        noise = [abs(1 - row["plain-ct_to_plain"]) for row in tp.values()
                 if row.get("plain-ct_to_plain") is not None]
        lines += [
            "### Established throughput: the misses",
            "",
            "Missed in this run: %s. An established connection is forwarded by the "
            "switch alone in both pipelines (mbxd is not on the path in check mode "
            "`offload`): cached megaflows, with a conntrack lookup per zone on the way "
            "(mbx: the sending VM's zone, the receiving VM's zone, the SNAT zone; "
            "ct-baseline: the sending and receiving ports' zones, the SNAT zone). The "
            "plain twin in the conntrack lab differs from the one in the mbx lab by up "
            "to %.0f%% on the same physical path in the same rounds (the last column of "
            "the table): shortfalls within that are the noise of this shared 2-CPU "
            "machine." % (", ".join("%s (%s)" % (t["target"], t["measured"]) for t in missed),
                          100 * max(noise or [0])),
            "",
        ]
        worse = []
        for t in missed:
            case = t["target"].split(":")[0].split()[-1]
            dp = tp.get(case, {}).get("datapath_per_packet") or {}
            mb, cb = dp.get("mbx") or {}, dp.get("ct-baseline") or {}
            if mb.get("subtables_per_hit") and cb.get("subtables_per_hit") and \
                    mb["subtables_per_hit"] > 1.1 * cb["subtables_per_hit"]:
                worse.append("%s: %.2f against %.2f subtables probed per megaflow hit, "
                             "%.1f against %.1f passes per packet" % (
                                 case, mb["subtables_per_hit"], cb["subtables_per_hit"],
                                 mb.get("passes") or 0, cb.get("passes") or 0))
        if worse:
            lines += ["The per-packet profile shows a real cost beyond the noise where mbx's "
                      "packets probe more megaflow subtables than ct-baseline's (%s): the "
                      "service-stage tables match more distinct field combinations "
                      "(registers, zone, ct_mark bits), each a subtable the datapath "
                      "classifier tries in turn for every packet. Fewer distinct masks on "
                      "the established path (`+est` packets matched on ct_state alone "
                      "before the stage-specific tables) would close it."
                      % "; ".join(sorted(set(worse))), ""]
    missed = _missed(r, "newconn")
    cpu = d.get("cpu_split") or {}
    if missed and cpu:
        mbx, ct = cpu.get("mbx", {}), cpu.get("ct-baseline", {})
        mc, cc = mbx.get("cpu_ms_per_connection", {}), ct.get("cpu_ms_per_connection", {})
        md, cd = mbx.get("datapath_per_connection", {}), ct.get("datapath_per_connection", {})
        ms_, cs_ = mbx.get("subtables_per_megaflow_hit"), ct.get("subtables_per_megaflow_hit")
        causes = []
        if _upcalls(md) > _upcalls(cd) + 0.02:
            causes.append(
                "mbx's packets miss the datapath's megaflow cache more often (%.2f against "
                "%.2f upcalls per connection): each miss is translated through the whole "
                "OpenFlow pipeline in ovs-vswitchd's slow path, the costliest step; its "
                "flows match fields that vary per connection or per VM (stage registers, "
                "the zone register, ct_mark and ct_label bits), so fewer connections share "
                "a cached megaflow" % (_upcalls(md), _upcalls(cd)))
        if ms_ and cs_ and ms_ > cs_ * 1.1:
            causes.append(
                "each datapath pass of mbx's packets probes more megaflow subtables (%.2f "
                "against %.2f per hit): its service-stage tables match more distinct field "
                "combinations, and every combination is a subtable the classifier tries in "
                "turn" % (ms_, cs_))
        if md.get("megaflow hits", 0) > cd.get("megaflow hits", 0) * 1.1:
            causes.append("mbx's packets take more datapath passes (%.1f against %.1f "
                          "megaflow lookups per connection)" % (md.get("megaflow hits", 0),
                                                                cd.get("megaflow hits", 0)))
        if (mc.get("ovs-vswitchd") or 0) > (cc.get("ovs-vswitchd") or 0) * 1.15:
            causes.append("ovs-vswitchd spends more CPU per mbx connection (%s against %s "
                          "ms)" % (_ms(mc.get("ovs-vswitchd")), _ms(cc.get("ovs-vswitchd"))))
        lines += [
            "### New connections: the misses, and their profile",
            "",
            "Missed in this run: %s." % "; ".join(
                "%s (%s)" % (t["target"], t["measured"]) for t in missed),
            "",
            "A new connection costs the switch alike in both pipelines: conntrack lookups "
            "and a commit in the client's zone and in the server's, the rules in between "
            "(mbx's compiled rule tables, ct-baseline's ACL tables), a select group for a "
            "VIP; neither needs more than the switch (mbxd's CPU per connection in the "
            "same-host case: %s). The same-host case's profile per connection on h3 "
            "(table above): ovs-vswitchd CPU %s ms (mbx) against %s ms (ct-baseline), "
            "%.1f against %.1f recirculations, %.1f against %.1f megaflow hits, %s "
            "against %s subtables probed per hit, %.2f against %.2f upcalls." % (
                "%.3f ms" % mc["mbxd"] if "mbxd" in mc else "-",
                _ms(mc.get("ovs-vswitchd")), _ms(cc.get("ovs-vswitchd")),
                md.get("packet recirculations", 0), cd.get("packet recirculations", 0),
                md.get("megaflow hits", 0), cd.get("megaflow hits", 0), _r(ms_), _r(cs_),
                _upcalls(md), _upcalls(cd)),
            "",
            ("Where mbx's time goes beyond ct-baseline's: %s. What would close it: fewer "
             "distinct match-field combinations in the service stages' flows (each "
             "combination of masked fields is a datapath subtable, probed for every "
             "packet until one matches), so that a new connection's packets hit fewer, "
             "wider megaflows." % "; ".join(causes))
            if causes else
            "The datapath counters do not separate the two pipelines here (the same "
            "passes, hits, subtables and upcalls per connection, CPU within the 10 ms "
            "tick's resolution): on this shared 2-CPU machine the gap is within what "
            "the rounds' spread allows; more rounds (`--rounds`) and connections "
            "(`--connections`) narrow it.",
            "",
        ]
        ceiling = []
        for case, row in d["newconn"].items():
            ps = row["parallel"]["per_second"]
            if ps.get("plain") and ps.get("ct-baseline"):
                ceiling.append("%s: plain %.2f x ct-baseline, mbx %.2f x plain" % (
                    case, ps["plain"] / ps["ct-baseline"], (ps.get("mbx") or 0) / ps["plain"]))
        if ceiling:
            lines += [
                "The ceiling: the bare overlay, with no conntrack at all, is the most any "
                "pipeline can reach with these clients (`lab.probe rate` in the VMs' "
                "namespaces, on the same 2 CPUs as the switches). In this run, 4 clients: "
                "%s. Where plain itself is below 1.2 x ct-baseline, the target asks for more "
                "than the lab's clients make of a switch that does nothing." % "; ".join(
                    ceiling), ""]
        rr = d.get("cpu_split_rr")
        if rr:
            c = rr["cpu_ms_per_connection"]
            lines += ["A VIP whose backend mbxd picks (round-robin, least-connections, "
                      "source-hash) costs more: %s from one client VM with %d workers, "
                      "ovs-vswitchd %s ms and mbxd %s ms CPU per "
                      "connection on the client's host; the first packet goes to mbxd and "
                      "back. The default algorithm `hash` never involves mbxd." % (
                          _cps(rr["per_second"]), d["method"]["workers"],
                          _ms(c.get("ovs-vswitchd")), _ms(c.get("mbxd"))), ""]
    return lines


# ------------------------------------------------------------------ migration
def migration_markdown(m, plots):
    lines = ["## Migration (`lab/migbench.py`)", ""]
    tr = m.get("state_transfer")
    if tr:
        lines += transfer_markdown(tr, m, plots)
    if m.get("reply_gap_ms"):
        lines += gap_markdown(m)
    if m.get("survival"):
        lines += survival_markdown(m)
    return lines


def transfer_markdown(tr, m, plots):
    lines = [
        "### Moving the state of N connections of one VM",
        "",
        "![migration](%s)" % plots.get("migration", ""),
        "",
        "| connections (records) | gather | encode | transfer | decode | verify | localize "
        "| commit | **usable, bulk** | decode to barrier, overlapped | **usable, bulk "
        "overlapped** | index | **usable, lazy** | on the wire |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, t in tr.items():
        if "error" in t:
            lines.append("| %s | failed: %s |%s" % (_k(n), t["error"], "  |" * 12))
            continue
        ms = t["ms"]
        lines.append("| %s (%s) | %s | %s | %s | %s | %s | %s | %s | **%s** | %s | **%s** | %s "
                     "| **%s** | %.1f MB |" % (
                         _k(n), "{:,}".format(sum(t["entries"].values())),
                         *(_s(ms[p]) for p in BEFORE_IMPORT), _s(ms["commit"]),
                         _s(t["usable_bulk_ms"]),
                         _s(ms["overlapped"]) if "overlapped" in ms else "-",
                         _s(t["usable_overlapped_ms"]) if "usable_overlapped_ms" in t else "-",
                         _s(ms["index"]), _s(t["usable_lazy_ms"]), t["wire_bytes"] / 1e6))
    lines += [
        "",
        "| connections | gather: dump / parse / records | encode: parts / digest | commit: "
        "build / switch (packet-outs) | lazy: background commit | first packet during "
        "it, median / max | first packet after it | checked |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, t in tr.items():
        if "error" in t:
            continue
        ms, lz = t["ms"], t["lazy"]
        dur, idle = lz["first_packet_during_ms"], lz["first_packet_idle_ms"]
        lines.append("| %s | %s / %s / %s | %s / %s | %s / %s (%s, %.0fk/s) | %s | %s | %s "
                     "| %s |" % (
                         _k(n), _s(ms["dump"]), _s(ms["parse"]), _s(ms["records"]),
                         _s(ms["encode_parts"]), _s(ms["digest"]), _s(ms["build"]),
                         _s(ms["switch"]), "{:,}".format(t["packet_outs"]),
                         t["packet_outs"] / max(ms["switch"], 0.1),
                         _s(ms["background"]),
                         "%s / %s (%d)" % (_lat(dur.get("median")), _lat(dur.get("max")),
                                           dur["n"]) if dur.get("n") else "-",
                         _lat(idle.get("median")) if idle.get("n") else "-",
                         ", ".join("%s %s" % (k, "{:,}".format(v))
                                   for k, v in t["checked"].items()) + " entries"))
    lines += [
        "",
        "How measured (`lab.migbench.transfer`): two throwaway Open vSwitch instances "
        "(each its own ovsdb-server and ovs-vswitchd, userspace datapath, TCP sequence "
        "checking off as mbxd sets it) are the source and the destination host. The "
        "source's zones are seeded with N established TCP connections of one VM as "
        "real conntrack entries (`middlebox.ctcommit` packet-outs): a third firewalled "
        "VM-to-VM (half opened by the VM, half by a peer), a third to load-balancer "
        "VIPs (DNAT in the VM's zone), a third to the internet through SNAT (an entry "
        "in the VM's zone and a translated one in the SNAT rule's zone), with the "
        "ct_mark and ct_label the dataplane commits. Then mbxd's own code, phase by "
        "phase: **gather** = `dpctl/dump-conntrack` of the VM's zone and the SNAT zone "
        "(`middlebox.vswitch`), `conn.parse_dump`, `vmstate.gather`; **encode** = "
        "`conn.encode_parts` and the `final` digest; **transfer** = hello, the record "
        "parts and `final` through a real `migchan.Channel` pair (TLS, certificates "
        "from `pki`, 127.0.0.1) until the destination has `final`; **decode** = "
        "`conn.decode` of each part, staged by key; **verify** = count and digest; "
        "**localize** = `vmstate.localize`; **commit** (bulk import) = "
        "`ctcommit.packet_outs`, `OfConn.send_packet_outs` to the destination switch, "
        "then a barrier: the connections are usable; **overlapped** (the bulk import "
        "of an unannounced move) = the same received parts again, each decoded and its "
        "VM zone's records localized and sent to the switch as it comes, then at "
        "`final` the check, the SNAT zone's records and the barrier (wall time from the "
        "first part to the barrier reply: the switch works while Python decodes); "
        "**index** (lazy import) = "
        "`ctcommit.LazyCommits`, the per-5-tuple index mbxd gives its hold buffer: a "
        "connection is committed when its first packet comes, the rest in the "
        "background, %s records at a time (`LAZY_CHUNK`), the next once the switch "
        "answered the barrier behind the last, as `MigrationManager._lazy_run` paces "
        "them. A first packet's latency is its "
        "record's packet-outs and a barrier (what mbxd sends before it gives the held "
        "packet back), sampled every %.0f ms during the background commit and %s "
        "times after it; the trip of the packet to mbxd and back is not in it. The "
        "phases run one after the other (mbxd decodes each part as it arrives, so it "
        "overlaps decode with transfer). After each import the destination's zones "
        "are dumped and compared with the localized records: the same tuples, "
        "translations, mark and label (the checked column counts them). Usable = the "
        "sum of the phases before it." % (
            "{:,}".format(next((t["lazy"]["chunk"] for t in tr.values() if "lazy" in t), 0)),
            next((t["lazy"].get("sample_interval_ms", 25) for t in tr.values() if "lazy" in t),
                 25), next((t["lazy"]["first_packet_idle_ms"]["n"] for t in tr.values()
                            if "lazy" in t), 0)),
        "",
    ]
    big = tr.get(str(m.get("method", {}).get("profile_at", 100000)))
    if big and big.get("profile_top"):
        lines += ["Profile of a second bulk move at %s (cProfile, main thread: the "
                  "channel's threads show as waiting):" % _k(big["connections"]), "",
                  "| function | cumulative ms |", "|---|---|"] + [
            "| `%s` | %.0f |" % (f, ms_) for f, ms_ in big["profile_top"][:14]] + [""]
    return lines


def transfer_analysis(r):
    m = r.get("migration") or {}
    tr = m.get("state_transfer") or {}
    big = tr.get("100000")
    if not big or "error" in big or not _missed(r, "transfer"):
        return []
    ms = big["ms"]
    parts = sorted(((ms[p], p) for p in BEFORE_IMPORT + ("commit",)), reverse=True)
    lz = big["lazy"]
    return [
        "### Where the 100k move's time goes, and what would close the gap",
        "",
        "Usable after %s with the bulk import (%s overlapped, on the unannounced path), "
        "%s with the lazy one (target 1 s). The phases, largest first: %s." % (
            _s(big["usable_bulk_ms"]), _s(big["usable_overlapped_ms"])
            if "usable_overlapped_ms" in big else "-", _s(big["usable_lazy_ms"]),
            ", ".join("%s %s" % (p, _s(v)) for v, p in parts)),
        "",
        "* **commit** (%s): %s of Python building %s packet-outs (`ctcommit.packet_outs`: "
        "three synthesized ACKs per established entry, each a PACKET_OUT with its ct "
        "action, packed into a template by an encoder per action shape), then %s for "
        "the switch to take them (ovs-vswitchd executes each packet-out in its main "
        "thread: %.0fk/s). The switch's share is the floor of a bulk import: one "
        "packet-out carrying the three packets (ct, set_field to the reply tuple, ct "
        "again) re-creates a plain entry but leaves a translated one in SYN_SENT, so "
        "each packet stays its own message." % (
            _s(ms["commit"]), _s(ms["build"]), "{:,}".format(big["packet_outs"]),
            _s(ms["switch"]), big["packet_outs"] / max(ms["switch"], 0.1)),
        "* **gather** (%s): the two `dpctl/dump-conntrack` calls (%s: each walks every "
        "entry of the datapath, whatever the zone filter) and parsing the text (%s, "
        "about %.1f us a line). The unannounced path gathers once; the announced one "
        "gathers again for the changes after the VM stopped." % (
            _s(ms["gather"]), _s(ms["dump"]), _s(ms["parse"]),
            ms["parse"] * 1000 / max(big["entries"]["vm_zone"]
                                     + big["entries"].get("snat_zone", 0), 1)),
        "* **decode + verify + localize** (%s + %s + %s): per-record Python (a tuple "
        "per record, a dict entry per record for the staging, the digest sorts a row "
        "per record)." % (_s(ms["decode"]), _s(ms["verify"]), _s(ms["localize"])),
        "* **overlap**: on the unannounced path the destination commits the VM zone's "
        "records of each part as it comes (a transfer that then fails its check is taken "
        "back by flushing the VM's zone); decode to barrier takes %s against %s one "
        "after the other. The announced path commits after `final` (the source streams "
        "changes while the VM runs). mbxd's source also sends each part as it parses "
        "it, which overlaps its %s of parsing with the destination's work; this bench "
        "runs source and destination in one process one after the other, so it counts "
        "the parse in full. What stays is about the switch's %s." % (
            _s(ms.get("overlapped", 0)),
            _s(ms["decode"] + ms["verify"] + ms["localize"] + ms["commit"]),
            _s(ms["parse"]), _s(ms["switch"])),
        "* **lazy**: usable after the index (%s); the background commit (%s) goes a "
        "chunk per barrier, so a first packet's commit waits behind one chunk at most: "
        "%s median, %s at most during the background commit, %s with the switch idle." % (
            _s(ms["index"]), _s(ms["background"]),
            _lat(lz["first_packet_during_ms"].get("median")),
            _lat(lz["first_packet_during_ms"].get("max")),
            _lat(lz["first_packet_idle_ms"].get("median"))),
        "",
    ]


def gap_markdown(m):
    moves = m.get("method", {}).get("moves_per_path", 0)
    lines = [
        "### Reply gap of a migration",
        "",
        "| path | plain re-plumb, median / p99 | mbx (VM-to-VM kinds), median / p99 | "
        "extra, median / p99 | mbx (all kinds), median / p99 | extra |",
        "|---|---|---|---|---|---|",
    ]
    for path, d in m["reply_gap_ms"].items():
        p, v, a = d["plain"], d["mbx_vm_to_vm"], d["mbx_all_kinds"]
        if not (p.get("n") and v.get("n") and a.get("n")):
            continue
        ev, ea = d.get("extra_vm_to_vm", {}), d.get("extra_all_kinds", {})
        lines.append("| %s (%d moves each) | %.0f / %.0f ms | %.0f / %.0f ms | %+.0f / %+.0f ms "
                     "| %.0f / %.0f ms | %+.0f / %+.0f ms |" % (
                         path, v["n"], p["median"], p["p99"], v["median"], v["p99"],
                         ev.get("median", 0), ev.get("p99", 0), a["median"], a["p99"],
                         ea.get("median", 0), ea.get("p99", 0)))
    lines += [
        "",
        "How measured: a 3-host lab with the migration scenario (`lab.migscenario`: mv "
        "behind firewall -> LB -> SNAT, DNAT from the internet to mv; connections of "
        "each kind) and, on a switch without any steering policy, its plain twin (same "
        "addresses, the VM-to-VM kinds fw-in and fw-out). mv and its twin move h1 <-> "
        "h2 in turn with `Lab.migrate` (announced: `notify=True`; unannounced: "
        "`notify=False`), fresh connections (`lab.probe conns`, a request every 20 ms) "
        "for every move; a move's gap is the largest gap between two replies of any "
        "surviving connection. Extra = mbx - plain. p99 of %d samples is their "
        "maximum. TCP's retransmission timer (200 ms minimum, doubling) sets the floor "
        "of every gap: a segment lost while the port is unplugged is resent after it, "
        "and one lost again after the port is back waits twice as long." % moves,
        "",
    ]
    for path, d in m["reply_gap_ms"].items():
        by = d.get("mbx_by_kind") or {}
        if by:
            lines.append("mbx's largest reply gap per move by kind, %s (median / max): %s; "
                         "packets held at the destination per move: median %s, max %s." % (
                             path, ", ".join("%s %.0f / %.0f ms" % (k, v["median"], v["max"])
                                             for k, v in sorted(by.items()) if v.get("n")),
                             (d.get("mbx_buffered") or {}).get("median", "-"),
                             (d.get("mbx_buffered") or {}).get("max", "-")))
    lines.append("")
    tot = ["%s mbx %s, plain %s" % (path, _s(d["migrate_total_ms"]["mbx"].get("median")),
                                    _s(d["migrate_total_ms"]["plain"].get("median")))
           for path, d in m["reply_gap_ms"].items() if d["migrate_total_ms"]["mbx"].get("n")]
    if tot:
        lines += ["`Lab.migrate` itself (announced: begin to link up, waiting for the "
                  "snapshot and the import; unannounced: unplug until the migration is "
                  "done), median: %s." % "; ".join(tot), ""]
    missed = [t for t in _missed({"targets": m.get("_targets", [])}, "gap")]
    limits = dict(GAP_LIMITS)
    for t in missed:
        path = next(p for p in limits if ", %s:" % p in t["target"])
        d = m["reply_gap_ms"][path]
        floor = d["plain"]["p99"] + limits[path]
        late = {k: v for k, v in (d.get("mbx_by_kind") or {}).items()
                if v.get("n") and v["max"] > floor}
        lines += ["Missed: %s. %s" % ("%s (%s)" % (t["target"], t["measured"]), (
            "The kinds over the limit: %s, while the VM-to-VM kinds' extra p99 is %+.0f ms. "
            "A gap near 500 ms is TCP's retransmission timer doubled once: one "
            "retransmission of such a connection was lost after the port came back. "
            "Where to look: the path of those connections' packets between the port "
            "moving and the state landing (for SNAT, the replies come to the port "
            "block's owner, the source host, which forwards them to the new host only "
            "once `MigrationManager._cleanup` ran after the acknowledgement); a packet "
            "trace of such a move (`ovs-appctl ofproto/trace`, `dpctl/dump-conntrack` "
            "on both hosts at that moment) was not made in this run." % (
                ", ".join("%s (largest %.0f ms, median %.0f ms)" % (k, v["max"], v["median"])
                          for k, v in sorted(late.items())),
                (d.get("extra_vm_to_vm") or {}).get("p99", 0))) if late else ""), ""]
    return lines


def survival_markdown(m):
    sv, ct = m["survival"].get("mbx") or {}, m["survival"].get("conntrack") or {}

    def cell(k):
        return "%d/%d (%.0f%%)" % (k["survived"], k["total"], 100 * k["survived"] / k["total"]) \
            if k and k["total"] else "-"

    def total(kinds):
        return {"survived": sum(k["survived"] for k in kinds.values()),
                "total": sum(k["total"] for k in kinds.values())}
    paths = list(sv)
    kinds = sorted({k for s in sv.values() for k in s.get("kinds", {})}
                   | set(ct.get("kinds", {})))
    lines = [
        "### Connections that survive a migration",
        "",
        "| kind | %s | OVS conntrack, no state transfer |" % " | ".join(
            "mbx, %s" % p for p in paths),
        "|---|%s---|" % ("---|" * len(paths)),
    ]
    for kind in kinds:
        lines.append("| %s | %s | %s |" % (kind, " | ".join(
            cell(sv[p]["kinds"].get(kind)) for p in paths), cell(ct.get("kinds", {}).get(kind))))
    lines.append("| all | %s | %s |" % (" | ".join(cell(total(sv[p]["kinds"])) for p in paths),
                                        cell(total(ct.get("kinds", {})))))
    errs = sorted({e for s in sv.values() for e in s.get("errors", [])})
    lines += [
        "",
        "How measured: mbx: the moves above (every connection of each move; it survived if "
        "it has no error and got replies after the move)%s; conntrack: "
        "`lab.ctbaseline.run()` (its OVN-like `ct(commit)`/`ct(nat)` pipeline on the same "
        "VMs and traffic, mv moved h1 -> h2 once per run, nothing copies conntrack "
        "entries; it has no DNAT), %d runs.%s" % (
            "; errors seen: %s" % "; ".join(errs[:3]) if errs else "",
            m.get("method", {}).get("conntrack_runs", 0) if ct else 0,
            " Ratio of the shares, mbx / conntrack: %s." % ", ".join(
                "%s %s" % (p, _r(x)) for p, x in m["survival_ratio_mbx_to_conntrack"].items())
            if m.get("survival_ratio_mbx_to_conntrack") else ""),
        "",
    ]
    return lines


# ------------------------------------------------------------------ memory
def memory_markdown(mem):
    lines = ["## Memory (`lab/membench.py`)", ""]
    mb, dp = mem.get("mbxd") or {}, mem.get("datapath") or {}
    if mb:
        lines += [
            "| connections mbxd holds (records) | bytes per connection (RSS) | per record | "
            "allocated (tracemalloc) | on the wire, per record |",
            "|---|---|---|---|---|",
        ]
        for n, v in mb.items():
            lines.append("| %s (%s) | **%.0f B** | %.0f B | %s | %.0f B |" % (
                _k(n), "{:,}".format(v["records"]), v["rss_bytes_per_connection"],
                v["rss_bytes_per_record"],
                "%.0f B" % v["traced_bytes_per_connection"]
                if v.get("traced_bytes_per_connection") else "-", v["wire_bytes_per_record"]))
        lines.append("")
    if dp:
        lines += [
            "| connections in the datapath (conntrack entries) | ovs-vswitchd bytes per "
            "connection (RSS) | per entry | committed at |",
            "|---|---|---|---|",
        ]
        for n, v in dp.items():
            lines.append("| %s (%s) | **%.0f B** | %.0f B | %s entries/s |" % (
                _k(n), "{:,}".format(v["entries"]), v["rss_bytes_per_connection"],
                v["rss_bytes_per_entry"], "{:,}".format(v["committed_per_second"] or 0)))
        lines.append("")
    lines += [
        "How measured: connections live in the switch's conntrack; mbxd holds records "
        "of a VM's connections only while the VM migrates (the destination stages what "
        "it receives, the source keeps the same mirror of what it sent). **mbxd**: a "
        "fresh Python process makes the wire parts of N connections of the migration "
        "benchmark's mix (a third firewalled, a third through a VIP, a third through "
        "SNAT, which adds the SNAT zone's record), then decodes and stages them as "
        "`MigrationManager._state_in` does; bytes = the growth of the process's "
        "resident memory over the staging / N (tracemalloc in a separate run). "
        "**datapath**: a throwaway switch (its own ovsdb-server and ovs-vswitchd, "
        "userspace datapath), the same connections committed as conntrack entries by "
        "packet-outs; bytes = the growth of ovs-vswitchd's resident memory / N (and / "
        "the entries, `dpctl/ct-stats-show`). No OpenFlow flow is added per connection "
        "in either system.",
        "",
    ]
    return lines


# ------------------------------------------------------------------ plots
PLOT_FILES = {"throughput": "throughput.png", "newconn": "newconn.png",
              "migration": "migration.png", "control_plane": "control-plane.png"}


def plots(results, out_dir):
    """PNG plots next to the results; returns {name: path relative to docs/}."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        # No matplotlib (``--render`` outside ``make bench``): link the
        # plots the run drew, if they are there.
        print("report: matplotlib is not installed (requirements-bench.txt): the plots "
              "are not drawn again", file=sys.stderr)
        return {name: "benchmarks/" + f for name, f in PLOT_FILES.items()
                if os.path.exists(os.path.join(out_dir, f))}
    made = {}
    colors = {"plain": "#999999", "ct-baseline": "#d98c2b", "mbx": "#2b6fd9"}
    d = results.get("dataplane")
    if d:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, unit in zip(axes, ("Gbit/s", "pps")):
            cases = [c for c, r in d["throughput"].items() if r["unit"] == unit]
            for i, s in enumerate(SYSTEMS):
                vals = [d["throughput"][c]["median"][s] or 0 for c in cases]
                if unit == "pps":
                    vals = [v / 1000 for v in vals]
                ax.bar([x + (i - 1) * 0.27 for x in range(len(cases))], vals, 0.27,
                       label=s, color=colors[s])
            ax.set_xticks(range(len(cases)))
            ax.set_xticklabels(cases)
            ax.set_ylabel("Gbit/s" if unit == "Gbit/s" else "thousand datagrams/s")
            ax.set_title("TCP throughput" if unit == "Gbit/s" else "64-byte UDP")
        axes[0].legend()
        fig.tight_layout()
        made["throughput"] = _save(fig, out_dir, PLOT_FILES["throughput"], plt)
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        cases = list(d["newconn"])
        for i, s in enumerate(SYSTEMS):
            vals = [d["newconn"][c]["parallel"]["per_second"][s] or 0 for c in cases]
            axes[0].bar([x + (i - 1) * 0.27 for x in range(len(cases))], vals, 0.27, label=s,
                        color=colors[s])
            lat = [d["newconn"][c]["connect_ms_median"][s] or 0 for c in cases]
            axes[1].bar([x + (i - 1) * 0.27 for x in range(len(cases))], lat, 0.27, label=s,
                        color=colors[s])
        for ax, title, ylabel in ((axes[0], "new connections per second (%d clients)"
                                   % d["method"]["workers"], "connections/s"),
                                  (axes[1], "first packet: connect time, 1 client", "ms")):
            ax.set_xticks(range(len(cases)))
            ax.set_xticklabels(cases)
            ax.set_title(title)
            ax.set_ylabel(ylabel)
        axes[0].legend()
        fig.tight_layout()
        made["newconn"] = _save(fig, out_dir, PLOT_FILES["newconn"], plt)
    mig = results.get("migration") or {}
    tr = {n: t for n, t in (mig.get("state_transfer") or {}).items()
          if "error" not in t and int(n) <= 100000}
    if tr:
        sizes = list(tr)
        fig, ax = plt.subplots(figsize=(8, 4))
        bottom = [0.0] * len(sizes)
        palette = ("#9ec1f0", "#7aa6e6", "#2b6fd9", "#1d4f9e", "#8c6bb1", "#d98c2b",
                   "#6b9e3a")
        for phase, color in zip(BEFORE_IMPORT + ("commit",), palette):
            vals = [tr[n]["ms"][phase] / 1000 for n in sizes]
            ax.bar([_k(n) for n in sizes], vals, bottom=bottom, label=phase, color=color)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.axhline(1.0, color="red", linestyle="--", linewidth=1, label="target at 100k: 1 s")
        for x, n in enumerate(sizes):
            ax.text(x, bottom[x], "bulk %.2f s\nlazy %.2f s" % (
                tr[n]["usable_bulk_ms"] / 1000, tr[n]["usable_lazy_ms"] / 1000),
                ha="center", va="bottom", fontsize=8)
        ax.set_ylabel("seconds")
        ax.set_title("moving one VM's connections until usable (bulk import)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        made["migration"] = _save(fig, out_dir, PLOT_FILES["migration"], plt)
    cp = results.get("control_plane")
    if cp and cp.get("scales"):
        sc = cp["scales"]
        fig, ax = plt.subplots(figsize=(7, 4))
        xs = [x["hosts"] for x in sc]
        ax.plot(xs, [x["median_flows"] for x in sc], "o-", label="flows per host, median")
        ax.plot(xs, [x["max_flows"] for x in sc], "s--", label="flows per host, max")
        ax.set_xlabel("hosts in the cloud (%d VMs each)" % cp["vms_per_host"])
        ax.set_ylabel("OpenFlow flows")
        ax.set_ylim(bottom=0)
        ax.set_title("flows per host do not grow with the cloud")
        ax.legend()
        fig.tight_layout()
        made["control_plane"] = _save(fig, out_dir, PLOT_FILES["control_plane"], plt)
    return made


def _save(fig, out_dir, name, plt):
    fig.savefig(os.path.join(out_dir, name), dpi=90)
    plt.close(fig)
    return "benchmarks/" + name


# ------------------------------------------------------------------ the page
def _headline(r):
    d = r.get("dataplane")
    lines = []
    if d:
        tp, nc = d["throughput"], d["newconn"]
        lines.append("- **Established throughput**: mbx / plain %s; mbx / ct-baseline %s." % (
            ", ".join("%s %s" % (c, _r(tp[c]["mbx_to_plain"])) for c in tp
                      if tp[c]["mbx_to_plain"] is not None),
            ", ".join("%s %s" % (c, _r(tp[c]["mbx_to_ct"])) for c in tp)))
        lines.append("- **New connections per second** (%d clients): mbx / ct-baseline %s; "
                     "median connect time mbx / ct-baseline %s." % (
                         d["method"]["workers"],
                         ", ".join("%s %s" % (c, _r(nc[c]["parallel"]["mbx_to_ct"]))
                                   for c in nc),
                         ", ".join("%s %s" % (c, _r(nc[c].get("connect_median_mbx_to_ct")))
                                   for c in nc)))
    m = r.get("migration") or {}
    tr = m.get("state_transfer")
    if tr:
        lines.append("- **Moving one VM's connections** (usable at the destination, bulk / "
                     "bulk overlapped (unannounced) / lazy import): %s." % ", ".join(
                         "%s %s / %s / %s" % (_k(n), _s(t["usable_bulk_ms"]),
                                              _s(t["usable_overlapped_ms"])
                                              if "usable_overlapped_ms" in t else "-",
                                              _s(t["usable_lazy_ms"]))
                         if "error" not in t else "%s failed" % _k(n) for n, t in tr.items()))
    sv = (m.get("survival") or {}).get("mbx")
    if sv:
        ct = m["survival"].get("conntrack") or {}
        gaps = m.get("reply_gap_ms") or {}
        lines.append("- **Connections surviving a live migration**: mbx %s; ct-baseline %s. "
                     "Extra reply gap p99: %s." % (
                         ", ".join("%s %.0f%%" % (p, 100 * (s["share"] or 0))
                                   for p, s in sv.items()),
                         "%.0f%%" % (100 * ct["share"]) if ct.get("share") is not None
                         else "-", ", ".join(
                             "%s %+.0f ms" % (p, g["extra_all_kinds"]["p99"])
                             for p, g in gaps.items() if g.get("extra_all_kinds"))))
    mem = r.get("memory")
    if mem:
        lines.append("- **Memory per connection**: mbxd (records held while migrating) %s; "
                     "datapath (ovs-vswitchd) %s." % (
                         ", ".join("%.0f B at %s" % (v["rss_bytes_per_connection"], _k(n))
                                   for n, v in (mem.get("mbxd") or {}).items()) or "-",
                         ", ".join("%.0f B at %s" % (v["rss_bytes_per_connection"], _k(n))
                                   for n, v in (mem.get("datapath") or {}).items()) or "-"))
    noisy = r.get("noisy")
    if noisy:
        ph = noisy["phases"]
        lines.append("- **Noisy neighbour**: another tenant's new connections while one VM "
                     "floods %d SYN/s: %d failed, connect p99 %s x quiet with the limits "
                     "on (%s x with them off)." % (
                         noisy["method"]["flood_rate"], ph["flood-limited"]["failed"],
                         _r(noisy["p99_to_quiet"]["flood-limited"]),
                         _r(noisy["p99_to_quiet"]["flood-unlimited"])))
    cp = r.get("control_plane")
    if cp:
        mv = cp["move"]["reaction_ms"]
        lines.append("- **Control plane at %d hosts x %d VMs** (issue 14): logical controller's "
                     "full translation %s, full computation of every host %.2f s, one VM move "
                     "%.1f ms median, %.1f ms p99, %g flows per host (median)." % (
                         cp["hosts"], cp["vms_per_host"],
                         "%.2f s" % cp["northd_full"]["seconds"] if "northd_full" in cp else "-",
                         cp["full"]["seconds"], mv["median"], mv.get("p99", mv["max"]),
                         cp["flows_per_host"]["median"]))
    return lines


def markdown(r, made):
    mc = r["machine"]
    ts = r.get("targets", [])
    missed = [t for t in ts if t["met"] is False]
    lines = [
        "# Benchmarks (`make bench`)",
        "",
        "mbx against the stateful pipeline OVN and Neutron's OVS firewall build from OVS "
        "conntrack, and against the bare overlay, on the same lab, the same policy and "
        "the same traffic, in one run. mbx is the design of issue 13: the switch's "
        "conntrack is the connection cache, mbxd the service ([middlebox.md](middlebox.md)). "
        "Generated by `lab/bench.py` (%s, %.0f minutes%s); the figures are in "
        "[benchmarks/results.json](benchmarks/results.json)."
        % (r.get("started", "?"), r.get("seconds", 0) / 60, _commits(r)),
        "",
        "**Machine**: %d CPUs (%s), %.0f GB, kernel %s; %s, %s datapath; Python %s, "
        "os-ken %s; %s. The machine is shared and noisy: compare ratios measured in the "
        "same run, never absolute figures across runs." % (
            mc["cpus"], mc["cpu"], mc["memory_gb"], mc["kernel"], mc["ovs"], mc["datapath"],
            mc["python"], mc["os_ken"], mc["iperf3"]),
        "",
        "## Headlines",
        "",
    ] + _headline(r) + [
        "",
        "## Targets",
        "",
    ] + targets_markdown(ts) + [
        "",
        "%d of %d targets met. Each miss has its profile and what would close it in its "
        "section below." % (len(ts) - len(missed), len(ts)) if missed else
        "Every target is met.",
        "",
        "## The three systems",
        "",
        "* **plain**: a logical switch without any middlebox (mbx's classification, L2 and "
        "overlay flows only): the physical limit of this lab.",
        "* **ct-baseline** (`lab/ctbaseline.py`): the pipeline OVN builds, written out "
        "table by table as OVN's logical stages: port security, ARP answered locally, "
        "`ct(zone=port,nat)` before the ACLs, ACLs with `ct(commit)` (allow-related), the "
        "VIPs as select groups whose buckets do `ct(commit,nat(dst=backend))` (OVS's "
        "default hash for the echo VIP; `selection_method=hash,fields(ip_src)` for the "
        "throughput VIP, as OVN's `selection_fields`), distributed SNAT with "
        "`ct(commit,zone=snat,nat(src=IP:block))` and per-host port blocks, un-SNAT "
        "`ct(nat)` on the designated host. Nothing moves on migration.",
        "* **mbx**: the same policy as mbx's northbound config: firewall `fw-red` (default "
        "deny; new connections from every VM, into the servers' ports), load balancer "
        "`lb-red` (the same VIPs and backends), NAT `nat-red` (the same SNAT address, and "
        "a DNAT address), chained by one steering policy each for TCP and UDP. Each "
        "host's mbxd compiles them into the switch: a conntrack zone per VM, the rules "
        "as flows on `+new` packets, a select group per `hash` VIP, `ct(nat)` for SNAT "
        "and DNAT; mbxd itself sees only what the switch cannot decide (rejects, the "
        "other LB algorithms, arriving VMs).",
        "",
        "Both labs are up at once (each lab lives in its own namespaces: 3 hosts, each "
        "with its own ovsdb-server and ovs-vswitchd, VMs as namespaces, VXLAN overlay); "
        "every round measures plain, mbx, plain in the conntrack lab and ct-baseline in "
        "turn, the order reversed every other round.",
        "",
    ]
    if r.get("dataplane"):
        lines += dataplane_markdown(r["dataplane"], made) + dataplane_analysis(r)
    m = r.get("migration")
    if m:
        m = dict(m, _targets=ts)
        lines += migration_markdown(m, made) + transfer_analysis(r)
    cp = r.get("control_plane")
    if cp:
        try:
            from lab import cpbench
            lines += cpbench.markdown(cp)
        except Exception as err:     # noqa: BLE001 - the rest of the report still counts
            lines += ["## Control plane", "", "(cannot render: %s)" % err]
        if made.get("control_plane"):
            lines += ["", "![control plane](%s)" % made["control_plane"], ""]
    if r.get("memory"):
        lines += [""] + memory_markdown(r["memory"])
    if r.get("failover"):
        from lab import habench
        lines += [""] + habench.markdown(r["failover"])
    if r.get("noisy"):
        from lab import noisybench
        lines += [""] + noisybench.markdown(r["noisy"])
    return "\n".join(lines) + "\n"


def write(results, out_dir, md_path):
    os.makedirs(out_dir, exist_ok=True)
    made = plots(results, out_dir)
    text = markdown(results, made)
    with open(md_path, "w") as f:
        f.write(text)
    return text
