"""middlebox.vmstate: a VM's connections as migration records (conn.Slice,
conn.Conn) -- which entries are the VM's (gather), what the service lets go
(review), what the service itself knows (known), how the destination makes
them its own or refuses them (localize), and the digest that checks a
transfer."""

import dataclasses

import pytest
from test_mb_frames import icmp_frame

from middlebox import conn as C
from middlebox import dataplane as D
from middlebox import vmstate as V
from mbxmodel.services import NatRuleInfo, RuleInfo, VipInfo
from middlebox.config import HostConfig, ServiceSpec, SliceConfig, VmSpec
from middlebox.packet import TCP_SYN, build_tcp, ip_int
from middlebox.service import Service
from middlebox.vmstate import RecordError
from middlebox.zones import ZoneMap
from ryu_apps import pipeline as P

SRC_TAG, DST_TAG = 5, 9                     # one chain, a tag per host
CHAIN = ("fw-a", "lb-a", "nat-a")
SNAT_UUID = "5a7e0000-0000-4000-8000-000000000001"
SNAT_SID = D.service_id(SNAT_UUID)
SNAT_IP, OUTSIDE, VIP = "203.0.113.5", "198.51.100.10", "10.0.0.100"
VIP_SID = D.service_id("%s:80/tcp" % VIP)
C1 = VmSpec("c1", "02:00:00:00:01:11", "10.0.0.11", "h1")
B1 = VmSpec("b1", "02:00:00:00:01:21", "10.0.0.21", "h3")
P1 = VmSpec("p1", "02:00:00:00:01:31", "10.0.0.31", "h3")
WEB = RuleInfo(100, "from-vm", "proto=tcp dport=80", "allow", uuid="r-web")
DNS = RuleInfo(100, "from-vm", "proto=udp dport=53", "allow", uuid="r-dns")
APP = RuleInfo(100, "to-vm", "proto=tcp dport=8080", "allow", uuid="r-app")
ICMP_OUT = RuleInfo(90, "from-vm", "proto=icmp", "allow", uuid="r-ping")


def host_config(host, tag, rules=(WEB, DNS, APP, ICMP_OUT), gather=None, vms=(C1, B1, P1),
                check="offload"):
    fw = ServiceSpec("fw-a", "firewall", "deny", rules=tuple(rules),
                     options={"check": check,
                              **({"migration-gather": gather} if gather else {})})
    lb = ServiceSpec("lb-a", "lb", "allow", vips=(
        VipInfo("v1", "lb-a", VIP, 80, "tcp", "round-robin", ((B1.ip, 8080),),
                {"health-check": "none"}),))
    nat = ServiceSpec("nat-a", "nat", "allow", nat_rules=(
        NatRuleInfo(SNAT_UUID, "nat-a", "snat", (SNAT_IP,), "10.0.0.0/24"),))
    cfg = SliceConfig(tag=tag, middlebox="fw-a", type="firewall", tenant="t", switch="ls-a",
                      vni=1001, default_action="deny", options=dict(fw.options),
                      rules=fw.rules, vms=vms, services=(fw, lb, nat),
                      subnet="10.0.0.0/24", gateway="10.0.0.254")
    return HostConfig(host, {tag: cfg})


def slices(host="h1", tag=SRC_TAG, **kw):
    svc = Service(host, zone_of=lambda _vm: 21)
    svc.configure(host_config(host, tag, **kw))
    return svc.slices


def tcp(src, sport, dst, dport, reply=None, zone=21, mark=SRC_TAG, label=0,
        state="ESTABLISHED", proto=6):
    """An entry: ``reply`` (rsrc, rsport, rdst, rdport), the plain reverse if None."""
    rsrc, rsport, rdst, rdport = reply or (dst, dport, src, sport)
    return C.Conn(proto, ip_int(src), sport, ip_int(dst), dport, ip_int(rsrc), rsport,
                  ip_int(rdst), rdport, zone, mark, label, state if proto == 6 else "")


# c1's zone on h1: to the VIP (b1 picked), to the internet (SNAT in the rule's
# zone), one opened by p1, a UDP stream; and an entry of a tag with no slice.
LB = tcp(C1.ip, 40000, VIP, 80, (B1.ip, 8080, C1.ip, 40000), mark=SRC_TAG | D.MARK_SERVICE,
         label=D.rule_id(WEB) | VIP_SID << D.LABEL_SERVICE_OFS)
OUT = tcp(C1.ip, 40001, OUTSIDE, 80, label=D.rule_id(WEB))
IN = tcp(P1.ip, 50000, C1.ip, 8080, mark=SRC_TAG | D.MARK_IN, label=D.rule_id(APP))
UDP = tcp(C1.ip, 5353, P1.ip, 53, proto=17, label=D.rule_id(DNS))
STRAY = tcp(C1.ip, 40009, OUTSIDE, 80, mark=77)
# The SNAT rule's zone: c1's translation, and b1's (another VM's).
OUT_SNAT = tcp(C1.ip, 40001, OUTSIDE, 80, (OUTSIDE, 80, SNAT_IP, 4100), zone=900,
               label=SNAT_SID << D.LABEL_SERVICE_OFS)
B1_SNAT = tcp(B1.ip, 40002, OUTSIDE, 80, (OUTSIDE, 80, SNAT_IP, 4101), zone=900,
              label=SNAT_SID << D.LABEL_SERVICE_OFS)
VM_SLICE = C.Slice(CHAIN, "vm", 0)
SNAT_SLICE = C.Slice(CHAIN, "snat", SNAT_SID)


def gathered():
    return V.gather("c1", slices(), [LB, OUT, IN, UDP, STRAY], {SNAT_UUID: [OUT_SNAT, B1_SNAT]})


def destination_zones(vms=("c1",), snat=True):
    zones = ZoneMap(first=30)
    zones.update([("vm", vm) for vm in vms] + ([("snat", SNAT_UUID)] if snat else []))
    return zones


# ------------------------------------------------------------ gather


def test_gather_takes_the_vms_zone_by_slice_tag_and_its_snat_entries_by_source():
    records = gathered()
    assert sorted(records, key=repr) == sorted([
        (C.Slice(CHAIN, "vm", VIP_SID), LB), (VM_SLICE, OUT), (VM_SLICE, IN),
        (VM_SLICE, UDP), (SNAT_SLICE, OUT_SNAT)], key=repr)
    assert V.count_connections(records) == 4


def test_gather_of_a_vm_without_a_slice_here_moves_nothing_of_the_snat_zone():
    assert V.gather("x9", slices(), [], {SNAT_UUID: [OUT_SNAT, B1_SNAT]}) == []


@pytest.mark.parametrize("lb_sets, nat_sets, mode", [
    (None, None, "datapath"),
    (None, "service", "service"),
    ("datapath+review", "service", "datapath+review"),
    ("bogus", "service", "datapath"),
])
def test_the_first_middlebox_of_the_chain_that_sets_the_gather_mode_decides(
        lb_sets, nat_sets, mode):
    cfg = host_config("h1", SRC_TAG).slices[SRC_TAG]
    fw, lb, nat = cfg.services
    services = (fw, dataclasses.replace(lb, options={"migration-gather": lb_sets} if lb_sets
                                        else {}),
                dataclasses.replace(nat, options={"migration-gather": nat_sets} if nat_sets
                                    else {}))
    svc = Service("h1")
    svc.configure(HostConfig("h1", {SRC_TAG: dataclasses.replace(cfg, services=services)}))
    assert V.gather_mode(svc.slices.values()) == mode


# ------------------------------------------------------------ review


def test_review_keeps_what_todays_rules_allow():
    kept, dropped = V.review(gathered(), slices())
    assert dropped == 0 and sorted(kept, key=repr) == sorted(gathered(), key=repr)


def test_review_leaves_behind_what_todays_rules_refuse_with_its_snat_record():
    # The firewall changed: no more web for c1, nothing into it on 8080.
    today = slices(rules=(DNS, ICMP_OUT, RuleInfo(50, "from-vm", "dst=%s" % VIP, "allow")))
    kept, dropped = V.review(gathered(), today)
    assert sorted(c for _, c in kept) == sorted([LB, UDP])
    assert dropped == 3                     # OUT, its SNAT translation, IN


def test_review_leaves_behind_a_connection_the_service_cut():
    cut = IN._replace(mark=IN.mark | D.MARK_BLOCKED)
    kept, dropped = V.review([(VM_SLICE, cut), (VM_SLICE, UDP)], slices())
    assert kept == [(VM_SLICE, UDP)] and dropped == 1


def test_review_leaves_behind_records_of_a_chain_the_vm_left():
    other = C.Slice(("fw-b",), "vm", 0)
    kept, dropped = V.review([(other, UDP), (VM_SLICE, UDP)], slices())
    assert kept == [(VM_SLICE, UDP)] and dropped == 1


def test_review_judges_a_dnat_connection_as_the_vm_sees_it():
    # From outside to 203.0.113.6:80, translated to c1:8080: the to-vm rule
    # for 8080 allows it, a rule for port 80 would not.
    dnat = tcp(OUTSIDE, 40000, "203.0.113.6", 80, (C1.ip, 8080, OUTSIDE, 40000),
               mark=SRC_TAG | D.MARK_IN)
    assert V.review([(VM_SLICE, dnat)], slices())[1] == 0
    only80 = slices(rules=(RuleInfo(100, "to-vm", "proto=tcp dport=80", "allow"),))
    assert V.review([(VM_SLICE, dnat)], only80) == ([], 1)


# ------------------------------------------------------------ known


def test_known_are_the_connections_the_service_picked_a_backend_for():
    svc = Service("h1", zone_of=lambda _vm: 21)
    svc.configure(host_config("h1", SRC_TAG))
    syn = build_tcp(C1.mac, P.ROUTER_MAC, ip_int(C1.ip), ip_int(VIP), 40000, 80, 1, 0, TCP_SYN)
    assert svc.handle_frame(syn, SRC_TAG, 1.0).verdict == "allow"
    [(sl, c)] = V.known("c1", svc.slices, 21)
    assert sl == C.Slice(CHAIN, "vm", VIP_SID)
    assert (c.key, c.dnat, c.zone, c.state) == (LB.key, (ip_int(B1.ip), 8080), 21,
                                                "ESTABLISHED")
    assert c.mark & D.MARK_TAG_MASK == SRC_TAG and not c.mark & D.MARK_IN
    # Another VM of the slice knows nothing of it.
    assert V.known("p1", svc.slices, 22) == []


def test_known_are_the_connections_the_service_checked_from_their_origin():
    svc = Service("h1", zone_of=lambda _vm: 21)
    svc.configure(host_config("h1", SRC_TAG, check="every-packet"))
    # p1 opened it: the check is of c1's reply, its VID says "peer opened it".
    reply = build_tcp(C1.mac, P1.mac, ip_int(C1.ip), ip_int(P1.ip), 8080, 50000, 9, 7, 0x10)
    tci = SRC_TAG | P.VID_ORIGIN_IN | (P.CHECK_BASE + P.STAGE_FROM_VM) << 13
    assert svc.handle_frame(reply, tci, 1.0).verdict == "allow"
    [(_, c)] = V.known("c1", svc.slices, 21)
    assert c.key == IN.key and c.mark & D.MARK_IN and c.dnat is None


def test_known_keeps_the_id_and_type_of_a_checked_ping():
    svc = Service("h1", zone_of=lambda _vm: 21)
    svc.configure(host_config("h1", SRC_TAG, check="every-packet"))
    ping = icmp_frame(C1.mac, P1.mac, C1.ip, P1.ip, 8, 0, rest=b"\x12\x34\x00\x01")
    assert svc.handle_frame(ping, SRC_TAG | (P.CHECK_BASE + P.STAGE_FROM_VM) << 13,
                            1.0).verdict == "allow"
    [(_, c)] = V.known("c1", svc.slices, 21)
    assert (c.proto, c.sport, c.dport, c.rsport, c.rdport) == (1, 0x1234, 8 << 8, 0x1234, 0)


def test_the_records_known_of_a_backend_vm_are_its_own():
    local_b1 = dataclasses.replace(B1, host="h1")
    svc = Service("h1", zone_of=lambda _vm: 21)
    svc.configure(host_config("h1", SRC_TAG, vms=(C1, local_b1, P1)))
    syn = build_tcp(C1.mac, P.ROUTER_MAC, ip_int(C1.ip), ip_int(VIP), 40000, 80, 1, 0, TCP_SYN)
    assert svc.handle_frame(syn, SRC_TAG, 1.0).verdict == "allow"
    records = V.known("b1", svc.slices, 22)
    V.localize("b1", records, slices("h2", DST_TAG), destination_zones(("b1",)))


# ------------------------------------------------------------ localize


def test_localize_makes_the_records_this_hosts_own():
    zones = destination_zones()
    counted = IN._replace(mark=IN.mark | 7 << D.MARK_COUNT_OFS, timeout=86000)
    records = [(VM_SLICE, OUT), (VM_SLICE, counted), (SNAT_SLICE, OUT_SNAT),
               (C.Slice(CHAIN, "vm", VIP_SID), LB)]
    local = V.localize("c1", records, slices("h2", DST_TAG), zones)
    vm_zone, snat_zone = zones.vm("c1"), zones.get(("snat", SNAT_UUID))
    assert [(c.zone, role) for c, role in local] == [(vm_zone, "vm"), (vm_zone, "vm"),
                                                     (snat_zone, "snat"), (vm_zone, "vm")]
    out, inbound, snat, lb = (c for c, _ in local)
    # This host's tag; origin and service bits kept; the every-nth count and
    # the source's timeout are not this host's.
    assert [c.mark for c in (out, inbound, snat, lb)] == [
        DST_TAG, DST_TAG | D.MARK_IN, DST_TAG, DST_TAG | D.MARK_SERVICE]
    assert inbound.timeout is None
    # The connection itself is unchanged: tuples, translation, rule, state.
    for got, was in ((out, OUT), (inbound, IN), (snat, OUT_SNAT), (lb, LB)):
        assert got[:9] == was[:9] and (got.label, got.state) == (was.label, was.state)


def test_localize_refuses_a_record_of_another_vm_and_names_it():
    records = [(VM_SLICE, OUT), (SNAT_SLICE, B1_SNAT)]
    with pytest.raises(RecordError, match="VM b1's connection, not of VM c1"):
        V.localize("c1", records, slices("h2", DST_TAG), destination_zones())
    stranger = tcp("10.9.9.9", 1, OUTSIDE, 80)
    with pytest.raises(RecordError, match="connection of 10.9.9.9, not of VM c1"):
        V.localize("c1", [(VM_SLICE, stranger)], slices("h2", DST_TAG), destination_zones())
    # Inbound: the VM is the reply's source.
    theirs = IN._replace(rsrc=ip_int(P1.ip), src=ip_int(C1.ip))
    with pytest.raises(RecordError, match="VM p1's connection"):
        V.localize("c1", [(VM_SLICE, theirs)], slices("h2", DST_TAG), destination_zones())


def test_localize_refuses_a_record_of_a_chain_the_vm_is_not_in_here():
    with pytest.raises(RecordError, match="chain fw-b,nat-b, which VM c1 is not in here"):
        V.localize("c1", [(VM_SLICE, OUT), (C.Slice(("fw-b", "nat-b"), "vm", 0), UDP)],
                   slices("h2", DST_TAG), destination_zones())
    # A host whose slice of the chain does not have c1 (another switch) refuses them too.
    elsewhere = slices("h2", DST_TAG, vms=(B1, P1))
    with pytest.raises(RecordError):
        V.localize("c1", [(VM_SLICE, OUT)], elsewhere, destination_zones())


def test_localize_refuses_an_snat_record_without_a_zone_here():
    with pytest.raises(RecordError, match="SNAT record of a rule with no port block here"):
        V.localize("c1", [(VM_SLICE, OUT), (SNAT_SLICE, OUT_SNAT)],
                   slices("h2", DST_TAG), destination_zones(snat=False))
    other_rule = C.Slice(CHAIN, "snat", D.service_id("another-rule"))
    with pytest.raises(RecordError, match="no port block"):
        V.localize("c1", [(other_rule, OUT_SNAT)], slices("h2", DST_TAG), destination_zones())


def test_localize_refuses_records_for_a_vm_without_a_zone_here():
    with pytest.raises(RecordError, match="VM c1 has no slice or zone here"):
        V.localize("c1", [(VM_SLICE, OUT)], slices("h2", DST_TAG), destination_zones(()))


# ------------------------------------------------------------ digest


def test_the_digest_does_not_depend_on_order():
    records = gathered()
    assert V.digest(records) == V.digest(list(reversed(records)))
    assert V.digest([]) != V.digest(records[:1])


def test_the_digest_ignores_what_is_per_host():
    records = gathered()
    moved = [(sl, c._replace(zone=c.zone + 1, mark=(c.mark & ~D.MARK_TAG_MASK) | DST_TAG
                             | 3 << D.MARK_COUNT_OFS, timeout=12))
             for sl, c in records]
    assert V.digest(moved) == V.digest(records)


@pytest.mark.parametrize("change", [
    {"proto": 17, "state": ""}, {"src": 1}, {"sport": 1}, {"dst": 1}, {"dport": 1},
    {"rsrc": 1}, {"rsport": 1}, {"rdst": 1}, {"rdport": 1},
    {"mark": SRC_TAG | D.MARK_IN}, {"mark": SRC_TAG | D.MARK_BLOCKED}, {"label": 1},
    {"label": 1 << 100},
])
def test_the_digest_changes_with_any_field_of_a_connection(change):
    records = gathered()
    changed = [(records[0][0], records[0][1]._replace(**change))] + records[1:]
    assert V.digest(changed) != V.digest(records)


@pytest.mark.parametrize("slice_", [C.Slice(("fw-b",), "vm", 0), C.Slice(CHAIN, "snat", 0),
                                    C.Slice(CHAIN, "vm", 5)])
def test_the_digest_changes_with_the_slice_of_a_record(slice_):
    records = gathered()
    assert V.digest([(slice_, records[0][1])] + records[1:]) != V.digest(records)


def test_the_digest_changes_with_the_tcp_state():
    records = gathered()
    changed = [(sl, c._replace(state="SYN_SENT") if c.proto == 6 else c) for sl, c in records]
    assert V.digest(changed) != V.digest(records)
