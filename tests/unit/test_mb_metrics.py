"""The Prometheus endpoint of mbxd: rendered from the service, served on loopback."""

import urllib.request

from middlebox import metrics
from mbxmodel.services import RuleInfo
from middlebox.config import HostConfig, SliceConfig, VmSpec
from middlebox.service import Service


def core_with_slice():
    core = Service("h1")
    core.configure(HostConfig("h1", {7: SliceConfig(
        tag=7, middlebox="fw-a", type="firewall", tenant="a", switch="ls-a", vni=1001,
        rules=(RuleInfo(100, "from-vm", "any", "allow", uuid="r1"),),
        vms=(VmSpec("a1", "02:00:00:00:00:01", "10.0.0.1", "h1"),))}))
    return core


def test_metrics_page_has_per_slice_and_per_verdict_series():
    core = core_with_slice()
    core.handle_frame(b"\x00" * 10, 7, 1.0)          # a truncated frame
    text = metrics.render(core).decode()
    assert 'mbxd_connections{slice="7",middlebox="fw-a"} 0' in text
    assert "mbxd_malformed_frames_total 1" in text
    assert "# TYPE mbxd_decisions_total counter" in text
    for line in text.splitlines():
        assert line.startswith("#") or line.startswith("mbxd_"), line


def test_metrics_are_served_over_http():
    core = core_with_slice()
    metrics.publish(core, interval=0.0)
    server = metrics.serve(("127.0.0.1", 0))
    try:
        url = "http://127.0.0.1:%d/metrics" % server.server_address[1]
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = resp.read().decode()
            assert resp.headers["Content-Type"].startswith("text/plain")
        assert 'mbxd_connections{slice="7",middlebox="fw-a"} 0' in body
    finally:
        server.shutdown()
        server.server_close()
