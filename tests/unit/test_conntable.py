"""middlebox.conntable: this host's connections read from conntrack (a fake
vswitch that answers ``dpctl/dump-conntrack`` with dump text) and shown from
the VM's side, as ``conn/list`` prints them."""

from middlebox import conn as C
from middlebox import dataplane as D
from mbxmodel.services import NatRuleInfo, RuleInfo, VipInfo
from middlebox.config import HostConfig, ServiceSpec, SliceConfig, VmSpec
from middlebox.conntable import ConnTable, vm_view
from middlebox.packet import ip_int
from middlebox.service import Service
from middlebox.zones import ZoneMap

TAG = 5
SNAT_UUID = "5a7e0000-0000-4000-8000-000000000001"
SNAT_IP, DNAT_IP, OUTSIDE, VIP = "203.0.113.5", "203.0.113.6", "198.51.100.10", "10.0.0.100"
VIP_SID = D.service_id("%s:80/tcp" % VIP)
C1 = VmSpec("c1", "02:00:00:00:01:11", "10.0.0.11", "h1")
A1 = VmSpec("a1", "02:00:00:00:01:12", "10.0.0.12", "h1")
B1 = VmSpec("b1", "02:00:00:00:01:21", "10.0.0.21", "h3")
B2 = VmSpec("b2", "02:00:00:00:01:22", "10.0.0.22", "h3")
P1 = VmSpec("p1", "02:00:00:00:01:31", "10.0.0.31", "h3")
WEB = RuleInfo(100, "from-vm", "proto=tcp dport=80", "allow", uuid="r-web")
APP = RuleInfo(100, "to-vm", "proto=tcp dport=8080", "allow", uuid="r-app")


def service():
    fw = ServiceSpec("fw-a", "firewall", "deny", rules=(WEB, APP))
    lb = ServiceSpec("lb-a", "lb", "allow", vips=(
        VipInfo("v1", "lb-a", VIP, 80, "tcp", "round-robin", ((B1.ip, 8080), (B2.ip, 8080))),))
    nat = ServiceSpec("nat-a", "nat", "allow", nat_rules=(
        NatRuleInfo(SNAT_UUID, "nat-a", "snat", (SNAT_IP,), "10.0.0.0/24"),))
    cfg = SliceConfig(tag=TAG, middlebox="fw-a", type="firewall", tenant="t", switch="ls-a",
                      vni=1001, rules=fw.rules, vms=(C1, A1, B1, B2, P1),
                      services=(fw, lb, nat), subnet="10.0.0.0/24", gateway="10.0.0.254")
    svc = Service("h1")
    svc.configure(HostConfig("h1", {TAG: cfg}))
    return svc


def entry(src, sport, dst, dport, reply=None, mark=TAG, label=0, state="ESTABLISHED",
          proto=6, timeout=86000):
    rsrc, rsport, rdst, rdport = reply or (dst, dport, src, sport)
    return C.Conn(proto, ip_int(src), sport, ip_int(dst), dport, ip_int(rsrc), rsport,
                  ip_int(rdst), rdport, 0, mark, label, state if proto == 6 else "", timeout)


class Vswitch:
    """ovs-vswitchd's dpctl/dump-conntrack, from entries per zone."""

    def __init__(self, zones, extra=""):
        self.zones = zones
        self.extra = extra
        self.dumps = []

    def dump_zone(self, zone, stats=False):
        self.dumps.append((zone, stats))
        lines = [C.dump_line(c._replace(zone=zone), stats) for c in self.zones.get(zone, ())]
        return "\n".join(lines + [self.extra]) + "\n"


OUT = entry(C1.ip, 40001, OUTSIDE, 80, label=D.rule_id(WEB))
OUT_SNAT = entry(C1.ip, 40001, OUTSIDE, 80, (OUTSIDE, 80, SNAT_IP, 4100),
                 label=D.service_id(SNAT_UUID) << D.LABEL_SERVICE_OFS)
LB = entry(C1.ip, 40000, VIP, 80, (B1.ip, 8080, C1.ip, 40000), mark=TAG | D.MARK_SERVICE,
           label=D.rule_id(WEB) | VIP_SID << D.LABEL_SERVICE_OFS)
LB2 = entry(C1.ip, 40003, VIP, 80, (B2.ip, 8080, C1.ip, 40003), mark=TAG | D.MARK_SERVICE,
            label=D.rule_id(WEB) | VIP_SID << D.LABEL_SERVICE_OFS)
IN = entry(P1.ip, 50000, C1.ip, 8080, mark=TAG | D.MARK_IN, label=D.rule_id(APP))
DNAT = entry(OUTSIDE, 41000, DNAT_IP, 80, (C1.ip, 8080, OUTSIDE, 41000),
             mark=TAG | D.MARK_IN, state="TIME_WAIT")
CUT = entry(C1.ip, 40002, P1.ip, 22, mark=TAG | D.MARK_BLOCKED)
DNS = entry(C1.ip, 5353, P1.ip, 53, proto=17, timeout=25)
A1_OUT = entry(A1.ip, 40000, VIP, 80, (B1.ip, 8080, A1.ip, 40000), mark=TAG | D.MARK_SERVICE,
               label=VIP_SID << D.LABEL_SERVICE_OFS)


def table(extra=""):
    zones = ZoneMap()
    zones.update([("vm", "c1"), ("vm", "a1"), ("snat", SNAT_UUID)])
    ct = {zones.vm("c1"): [OUT, LB, LB2, IN, DNAT, CUT, DNS], zones.vm("a1"): [A1_OUT],
          zones.get(("snat", SNAT_UUID)): [OUT_SNAT]}
    return ConnTable(Vswitch(ct, extra), zones), zones


def by_peer(views):
    """The views by (peer address, peer port), each once (c1 has two
    connections to the VIP: those by its own port)."""
    out = {}
    for v in views:
        key = (v["peer_ip"], v["peer_port"])
        out[key if key not in out else key + (v["vm_port"],)] = v
    return out


def test_a_vms_connections_are_shown_from_its_side():
    conns, zones = table()
    views = by_peer(conns.vm("c1", service()))
    assert len(views) == 7 and {v["vm"] for v in views.values()} == {"c1"}
    out = views[(OUTSIDE, 80)]
    assert (out["vm_ip"], out["vm_port"], out["origin"], out["state"], out["verdict"]) == \
        (C1.ip, 40001, "out", "established", "allow")
    assert (out["tag"], out["middlebox"], out["zone"], out["rule"], out["timeout"]) == \
        (TAG, "fw-a", zones.vm("c1"), "r-web", 86000)
    inbound = views[(P1.ip, 50000)]
    assert (inbound["vm_ip"], inbound["vm_port"], inbound["origin"], inbound["rule"],
            inbound["xlate"]) == (C1.ip, 8080, "in", "r-app", None)


def test_translations_are_shown_with_the_wire_addresses():
    conns, _ = table()
    views = by_peer(conns.vm("c1", service()))
    # Load balancer: c1 talks to the VIP, the wire carries the backend.
    assert views[(VIP, 80)]["xlate"] == {"kind": "lb", "wire_vm": "%s:40000" % C1.ip,
                                         "wire_peer": "%s:8080" % B1.ip}
    # SNAT: joined from the SNAT rule's zone.
    assert views[(OUTSIDE, 80)]["xlate"] == {"kind": "snat", "wire_vm": "%s:4100" % SNAT_IP,
                                             "wire_peer": "%s:80" % OUTSIDE}
    # DNAT from outside: the peer reached the external address, c1 sees 8080.
    dnat = views[(OUTSIDE, 41000)]
    assert (dnat["vm_ip"], dnat["vm_port"], dnat["origin"], dnat["state"]) == \
        (C1.ip, 8080, "in", "time_wait")
    assert dnat["xlate"] == {"kind": "dnat", "wire_vm": "%s:80" % DNAT_IP,
                             "wire_peer": "%s:41000" % OUTSIDE}


def test_a_cut_connection_is_denied_and_udp_is_active_with_the_default_rule():
    conns, _ = table()
    views = by_peer(conns.vm("c1", service()))
    assert views[(P1.ip, 22)]["verdict"] == "deny"
    dns = views[(P1.ip, 53)]
    assert (dns["proto"], dns["state"], dns["rule"], dns["timeout"]) == (17, "active",
                                                                         "default", 25)


def test_a_vm_without_a_zone_has_no_connections_and_costs_no_dump():
    conns, _ = table()
    assert conns.vm("b1", service()) == []
    assert conns.vswitch.dumps == []


def test_all_lists_every_local_vm_or_one():
    conns, _ = table()
    svc = service()
    views = conns.all(svc)
    assert sorted({v["vm"] for v in views}) == ["a1", "c1"] and len(views) == 8
    assert [v["vm"] for v in conns.all(svc, "a1")] == ["a1"]


def test_lines_of_other_families_or_garbage_in_a_dump_are_skipped():
    extra = ("tcp,orig=(src=fe80::1,dst=fe80::2,sport=1,dport=2),reply=(src=fe80::2,"
             "dst=fe80::1,sport=2,dport=1),protoinfo=(state=ESTABLISHED)\nnot a line")
    conns, _ = table(extra)
    assert len(conns.vm("c1", service())) == 7


def test_the_census_counts_connections_per_slice_and_per_backend():
    conns, _ = table()
    svc = service()
    per_tag, lb = conns.census(svc.slices)
    assert per_tag == {TAG: 8}
    assert lb == {VIP_SID: {(B1.ip, 8080): 2, (B2.ip, 8080): 1}}


def test_vm_view_of_an_entry_without_its_slice_names_no_middlebox():
    view = vm_view(OUT._replace(mark=77))
    assert (view["tag"], view["middlebox"]) == (77, "")


def test_the_census_checkpoints_every_zone_and_a_restarted_switch_lost_them():
    """What a restarted switch is given back: the entries of the last
    census in each zone that is empty now and still this host's."""
    conns, zones = table()
    conns.census(service().slices, now=12.5)
    snat = zones.get(("snat", SNAT_UUID))
    assert conns.checkpoint_at == 12.5
    assert {z: len(c) for z, c in conns.checkpoint.items()} == {
        zones.vm("c1"): 7, zones.vm("a1"): 1, snat: 1}
    assert conns.lost() == []                           # nothing lost: all still there
    conns.vswitch.zones = {zones.vm("c1"): [OUT]}       # restarted; c1 has a new one
    zones.update([("vm", "c1"), ("snat", SNAT_UUID)])   # a1 left meanwhile
    lost = conns.lost()
    assert sorted((c.zone, c.src, c.sport) for c in lost) == [
        (snat, ip_int(C1.ip), 40001)]
