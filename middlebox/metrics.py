"""Prometheus metrics for mbxd over HTTP (text exposition format 0.0.4).

The daemon's thread renders the page from the service at most once a
second (``publish``); the HTTP server thread only serves the last rendered
text, so it never touches the service's tables.  Connections per slice are
counted in conntrack by the daemon (``Service.connections``, refreshed every
few seconds); decisions come from the switch's rule flows.
"""

import http.server
import threading
import time

_page = {"text": b"", "at": 0.0}

# Unlabelled series: (metric name, type, help, key of core.stats()).
_SCALARS = (
    ("frames_total", "counter", "Frames read from the middlebox port.", "frames"),
    ("drops_total", "counter", "Frames dropped by the daemon.", "dropped"),
    ("malformed_frames_total", "counter", "Malformed or truncated frames.", "malformed"),
    ("unknown_tag_frames_total", "counter", "Frames with no slice for their tag.",
     "unknown_tag"),
    ("non_ip_frames_total", "counter", "Frames that are not IPv4.", "non_ip"),
    ("rejects_total", "counter", "Rejects answered (RST or ICMP).", "rejects_sent"),
    ("lb_picks_total", "counter",
     "Backends the daemon picked (round-robin, least-connections, source-hash).",
     "lb_picks"),
    ("checked_packets_total", "counter", "Packets of check modes the daemon checked.",
     "checked"),
    ("cut_connections_total", "counter", "Connections a check cut.", "cut"),
    ("health_probes_total", "counter", "Load-balancer health probes sent.", "probes_sent"),
)


def render(service):
    st = service.stats()
    out = []

    def metric(name, kind, help_, samples):
        out.append("# HELP mbxd_%s %s" % (name, help_))
        out.append("# TYPE mbxd_%s %s" % (name, kind))
        for labels, value in samples:
            lab = ",".join('%s="%s"' % kv for kv in labels)
            out.append("mbxd_%s%s %s" % (name, "{%s}" % lab if lab else "", value))

    metric("connections", "gauge", "Connections per slice (conntrack).",
           [((("slice", s["tag"]), ("middlebox", s["middlebox"])), s["connections"])
            for s in st.get("slices", [])])
    metric("slice_packets_total", "counter", "Frames the daemon handled per slice.",
           [((("slice", s["tag"]), ("middlebox", s["middlebox"])), s["packets"])
            for s in st.get("slices", [])])
    metric("decisions_total", "counter", "Connections decided, by verdict.",
           [((("verdict", v),), n) for v, n in sorted(st.get("decisions", {}).items())])
    metric("ids_alerts_total", "counter", "IDS alerts raised by this host, by kind.",
           [((("kind", k),), n) for k, n in sorted(st.get("ids_alerts_by_kind", {}).items())])
    for name, kind, help_, key in _SCALARS:
        metric(name, kind, help_, [((), st.get(key, 0))])
    _limit_metrics(metric, getattr(service, "limits", None) or {})
    return ("\n".join(out) + "\n").encode()


def _limit_metrics(metric, rep):
    """Limits and fairness (``limits/show``): the host's and each VM zone's
    limit and count, and the new connections each VM's meter dropped."""
    vms = rep.get("vms", ())

    def per_vm(key):
        return [((("vm", v["vm"]), ("zone", v["zone"])), v[key])
                for v in vms if v.get(key) is not None]
    if rep.get("conn_limit_host") is not None:
        metric("conn_limit_host", "gauge", "Connections all zones of this host may hold.",
               [((), rep["conn_limit_host"])])
    if rep.get("host_count") is not None:
        metric("host_connections", "gauge", "Connections in all zones of this host.",
               [((), rep["host_count"])])
    metric("conn_limit_vm", "gauge", "Connections a VM's zone may hold.", per_vm("limit"))
    metric("vm_connections", "gauge", "Connections in a VM's zone.", per_vm("count"))
    metric("new_conn_rate_vm", "gauge", "New connections a second a VM may open.",
           per_vm("new_conn_rate"))
    metric("new_conns_dropped_total", "counter",
           "New connections a VM opened over its rate: first packets its meter dropped.",
           per_vm("new_conn_dropped"))


def publish(service, interval=1.0):
    now = time.monotonic()
    if now - _page["at"] >= interval:
        _page["text"] = render(service)
        _page["at"] = now


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path not in ("/metrics", "/"):
            self.send_error(404)
            return
        body = _page["text"]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args):
        pass


def serve(address):
    server = http.server.ThreadingHTTPServer(address, _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="metrics").start()
    return server
