"""The fuzz targets: each takes one input (bytes) and feeds it to a parser of
untrusted input the way its daemon or tool does.

A target returns normally for any input the component accepts or refuses
with its documented one-line error (``Target.errors``); any other exception
escapes, and the fuzzer reports it as a finding.  Targets do no I/O.

    frame      mbxd's frame parser (``middlebox.packet.parse_frame``: a
               frame from the middlebox port and its 802.1Q TCI), then the
               answers it builds for a parsed packet (RST, ICMP
               unreachable), which must parse again
    transfer   a migration stream as the destination reads it: the
               channel's framing (``middlebox.migchan.Decoder``, bytes in
               chunks of any size), then each state message's records
               (``middlebox.conn.decode``) and removals
               (``middlebox.conn.decode_removed``)
    match      the match language (``ovsdb.match.parse_match``), its
               canonical text, compiling and the OpenFlow expansion
    ctl        mbxctl's command line (``ovsdb.ctl.parse``: options,
               commands joined by ``--``, each command's arguments), every
               check it makes before connecting
    yaml       ``mbxctl load``'s file (``ovsdb.topology.parse_topology``)
"""

from dataclasses import dataclass
from typing import Callable, Tuple

from middlebox import conn as C
from middlebox import migchan
from middlebox import packet
from ovsdb import ctl
from ovsdb import match as M
from ovsdb.errors import MbxError
from ovsdb.topology import parse_topology


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    errors: Tuple[type, ...]        # the component's documented error types
    about: str
    tokens: Tuple[str, ...] = ()    # words of its grammar (the fuzzer's dictionary)


# ---------------------------------------------------------------- frame

def _frame(data):
    if len(data) < 2:
        return
    tci = int.from_bytes(data[:2], "big")
    frame = data[2:]
    try:
        pkt = packet.parse_frame(frame, tci)
    except packet.MalformedFrame as err:
        assert err.reason and "\n" not in err.reason
        return
    if pkt.proto == packet.IPPROTO_TCP:
        answer = packet.build_tcp_rst(pkt, frame)
    elif pkt.proto is not None:
        answer = packet.build_icmp_unreachable(pkt, frame)
    else:
        return
    back = packet.parse_frame(answer, tci)
    assert (back.src, back.dst) == (pkt.dst, pkt.src), "an answer goes back to the sender"


# ---------------------------------------------------------------- transfer

def _transfer(data):
    # The first byte sets the size of the chunks the stream arrives in.
    if not data:
        return
    step = data[0] + 1
    decoder = migchan.Decoder()
    for start in range(1, len(data), step):
        decoder.push(data[start:start + step])
        while True:
            try:
                got = decoder.next_frame()
            except migchan.FrameError as err:
                assert err.reason and "\n" not in err.reason
                return
            if got is None:
                break
            _state_message(got[0])


def _state_message(msg):
    assert isinstance(msg, dict)
    try:
        records = C.decode(msg["data"]) if "data" in msg else ([], [])
        gone = C.decode_removed(msg.get("removed", []))
    except C.WireError as err:
        assert "\n" not in str(err)
        return
    conns, slices = records
    assert len(conns) == len(slices)
    # What decodes encodes again, to the same records.
    if conns:
        assert C.decode(C.encode(conns, slices)) == (conns, slices)
    assert C.decode_removed(C.encode_removed(gone)) == gone


# ---------------------------------------------------------------- match

_SETS = {"web": ["10.0.0.0/24", "10.1.2.3"], "empty": []}


def _match(data):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    try:
        m = M.parse_match(text)
    except MbxError as err:
        assert "\n" not in str(err) or "\n" in text
        return
    assert M.parse_match(m.text) == m, "the canonical text parses to the same match"
    cm = M.compile_match(m, _SETS)
    cm.matches(m.proto or 6, 0x0A000001, 0x0A000002, 1, 2)
    M.openflow_matches(m, _SETS)
    m.reversed()


# ---------------------------------------------------------------- ctl

def _ctl(data):
    # Arguments separated by NUL, as execve passes them.
    try:
        argv = data.decode("utf-8").split("\0")
    except UnicodeDecodeError:
        return
    if "load" in argv:
        return          # load reads its file while parsing: the yaml target's
    try:
        ctl.parse(argv)
    except MbxError as err:
        assert str(err)


# ---------------------------------------------------------------- yaml

def _yaml(data):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    try:
        parse_topology(text)
    except MbxError as err:
        assert str(err)


def _ctl_tokens():
    words = {"--", "--db", "--sb", "--wait=hv", "--timeout", "-p", "-c", "-C", "--help",
             "unix:", "tcp:", "ssl:", "127.0.0.1:6641", "=", ","}
    for command in ctl.COMMANDS.values():
        words.add(command.name)
        words.update(a.rstrip("!?*") for a in command.args if a.startswith("--"))
    return tuple(sorted(words))


_MATCH_TOKENS = M.FIELDS + tuple(M.PROTOCOLS) + (
    "=", "$", "/", "-", ",", " ", "any", "$web", "$empty", "10.0.0.0/24", "65535")
_YAML_TOKENS = (
    "switches:", "vms:", "address_sets:", "middleboxes:", "external_networks:",
    "steering:", "name:", "tenant:", "vni:", "subnet:", "gateway:", "switch:", "ip:",
    "mac:", "addresses:", "type:", "default_action:", "options:", "rules:", "priority:",
    "direction:", "match:", "action:", "tier:", "nat_rules:", "external_ips:",
    "logical_ip:", "port_range:", "external_ip:", "protocol:", "external_port:",
    "logical_port:", "vips:", "vip:", "algorithm:", "backends:", "cidr:", "gateway_ip:",
    "gateway_mac:", "chain:", "- ", "{", "}", "[", "]", ": ", "&a", "*a", "!!", "~",
    "10.0.0.0/24", "02:00:00:00:01:01", "firewall", "nat", "lb", "ids", "snat", "dnat")

TARGETS = {t.name: t for t in (
    Target("frame", _frame, (packet.MalformedFrame,), "mbxd's frame parser"),
    Target("transfer", _transfer, (migchan.FrameError, C.WireError),
           "a migration stream: framing, records, removals"),
    Target("match", _match, (MbxError,), "the match language", _MATCH_TOKENS),
    Target("ctl", _ctl, (MbxError,), "mbxctl's command line", _ctl_tokens()),
    Target("yaml", _yaml, (MbxError,), "mbxctl load's YAML file", _YAML_TOKENS),
)}
