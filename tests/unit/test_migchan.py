"""The migration channel: framing, and real mutual TLS on 127.0.0.1 with
certificates made by middlebox.pki."""

import select
import socket
import ssl
import threading
import time

import pytest

from lab.sh import LabError, wait_until
from middlebox import migchan, pki
from middlebox.migchan import Channel, Decoder, FrameError, encode
from ovsdb.errors import MbxError


# --- framing ---------------------------------------------------------------

def test_encode_is_length_and_compact_json():
    frame = encode({"type": "hello", "vm": "é", "n": [1, 2]})
    payload = '{"type":"hello","vm":"é","n":[1,2]}'.encode()
    assert frame == len(payload).to_bytes(4, "big") + payload
    with pytest.raises(TypeError):
        encode([1, 2])


def test_encode_refuses_oversize(monkeypatch):
    monkeypatch.setattr(migchan, "MAX_MESSAGE", 10)
    with pytest.raises(FrameError, match="exceeds 10"):
        encode({"x": "0123456789"})


def test_decoder_byte_by_byte_and_batched():
    msgs = [{"a": i, "s": "ü" * i} for i in range(5)]
    stream = b"".join(encode(m) for m in msgs)
    d = Decoder()
    got = []
    for i in range(len(stream)):
        got += d.feed(stream[i:i + 1])
        if i == 0:
            assert d.pending() == 1
    assert got == msgs and d.pending() == 0
    d = Decoder()
    assert d.feed(stream + encode({"z": 1})[:6]) == msgs
    assert d.pending() == 6
    assert d.feed(encode({"z": 1})[6:]) == [{"z": 1}]
    assert d.feed(b"") == [] and d.pending() == 0


def test_decoder_next_frame_gives_sizes():
    d = Decoder()
    d.push(encode({"a": 1}) + encode({"b": "xyz"}))
    assert d.next_frame() == ({"a": 1}, len(encode({"a": 1})))
    assert d.next_frame() == ({"b": "xyz"}, len(encode({"b": "xyz"})))
    assert d.next_frame() is None


def frame(payload):
    return len(payload).to_bytes(4, "big") + payload


@pytest.mark.parametrize("data, why", [
    ((migchan.MAX_MESSAGE + 1).to_bytes(4, "big"), "frame length 67108865 exceeds"),
    (b"\xff\xff\xff\xff", "frame length 4294967295 exceeds"),
    (frame(b"{\"a\":"), "bad JSON"),
    (frame(b""), "bad JSON"),
    (frame(b"\xc3\x28"), "bad UTF-8"),
    (frame(b"[1,2]"), "JSON list is not an object"),
    (frame(b"\"hi\""), "JSON str is not an object"),
])
def test_decoder_rejects(data, why):
    d = Decoder()
    good = encode({"ok": True})
    with pytest.raises(FrameError) as exc:
        d.feed(good[:3])
        d.feed(good[3:] + data)
    assert why in exc.value.reason
    with pytest.raises(FrameError):          # the stream stays bad
        d.feed(good)


def test_decoder_oversize_is_caught_from_the_header_alone():
    d = Decoder()
    assert d.feed(b"\x7f\xff") == []
    with pytest.raises(FrameError, match="exceeds"):
        d.feed(b"\xff\xff")


def test_parse_address():
    assert migchan.parse_address("ssl:10.0.0.1:6650") == (socket.AF_INET, "10.0.0.1", 6650)
    assert migchan.parse_address("ssl:[::1]:7")[1:] == ("::1", 7)
    for bad in ("tcp:10.0.0.1:6650", "ssl:host:6650", "ssl:10.0.0.1", "ssl:10.0.0.1:0",
                "ssl:10.0.0.1:x", None):
        with pytest.raises(ValueError, match="want ssl:IP:PORT"):
            migchan.parse_address(bad)


# --- TLS ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("pki"))
    other = str(tmp_path_factory.mktemp("other-ca"))
    pki.init_ca(d)
    pki.init_ca(other, name="someone else's CA")
    return {"hv1": pki.issue_host(d, "hv1"), "hv2": pki.issue_host(d, "hv2"),
            "evil": pki.issue_host(other, "hv1"), "dir": d}


@pytest.fixture
def channels():
    made = []

    def make(host, files, listen=True):
        ch = Channel(host, files, ("127.0.0.1", 0) if listen else None)
        ch.start()
        made.append(ch)
        return ch
    yield make
    for ch in made:
        ch.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("migchan-")]


def collect(ch, until, timeout=5.0):
    """Events of ``ch`` until ``until(events)`` holds (or time is up)."""
    out = []
    end = time.monotonic() + timeout
    while not until(out) and time.monotonic() < end:
        select.select([ch.fileno()], [], [], 0.05)
        out += ch.events()
    return out


def closed(sid):
    return lambda evs: any(e.kind == "closed" and e.sid == sid for e in evs)


def kinds(evs):
    return [e.kind for e in evs]


def quiet(ch, seconds=0.3):
    """Events of ``ch`` over a short while (for "nothing happens")."""
    return collect(ch, lambda evs: False, seconds)


def address(ch):
    return "ssl:%s:%d" % ch.listen_address


@pytest.fixture
def pair(certs, channels):
    server = channels("hv2", certs["hv2"])
    client = channels("hv1", certs["hv1"], listen=False)
    return client, server


def test_round_trip_both_ways_with_stats(pair):
    client, server = pair
    assert client.listen_address is None
    client.connect("m1", address(server), "hv2")
    to_server = [{"type": "hello", "seq": i, "pad": "x" * i} for i in range(5)]
    for m in to_server:                     # queued before the handshake is done
        client.send("m1", m)
    evs = collect(client, lambda e: "connected" in kinds(e))
    assert evs == [migchan.Event("connected", "m1", "hv2", None, None, None)]
    sevs = collect(server, lambda e: kinds(e).count("message") == 5)
    assert sevs[0] == migchan.Event("accepted", "in-1", "hv1", None, None, None)
    assert [e.message for e in sevs[1:]] == to_server
    assert [e.size for e in sevs[1:]] == [len(encode(m)) for m in to_server]
    assert {e.peer for e in sevs} == {"hv1"}

    to_client = [{"type": "ack", "n": i} for i in range(3)]
    for m in to_client:
        server.send("in-1", m)
    cevs = collect(client, lambda e: kinds(e).count("message") == 3)
    assert [e.message for e in cevs] == to_client

    up = sum(len(encode(m)) for m in to_server)
    down = sum(len(encode(m)) for m in to_client)
    # A session's thread counts a frame once its send returned, which may
    # be just after the peer read it: the count settles right after.
    settled = {}

    def counted():
        settled.update(client=client.stats("m1"), server=server.stats("in-1"))
        return settled == {"client": (up, down), "server": (down, up)}
    try:
        wait_until(counted, 5.0, what="the byte counts")
    except LabError:
        pass                                    # the assertion says what they were
    assert settled == {"client": (up, down), "server": (down, up)}

    client.send("m1", {"type": "final"})
    client.close("m1")
    client.send("m1", {"type": "ignored"})           # closing: ignored
    assert collect(client, closed("m1"))[-1].reason == "closed"
    sevs = collect(server, closed("in-1"))
    assert [(e.kind, e.message, e.reason) for e in sevs] == [
        ("message", {"type": "final"}, None), ("closed", None, "eof")]
    server.send("in-1", {"type": "late"})            # closed: ignored
    assert client.stats("m1") == (up + len(encode({"type": "final"})), down)
    client.forget("m1")
    with pytest.raises(KeyError):
        client.stats("m1")
    assert server.sessions() == [] and client.sessions() == []


def test_large_message(pair):
    client, server = pair
    big = {"type": "state", "records": ["r" * 1000] * 20000}      # ~20 MB
    client.connect("m1", address(server), "hv2")
    client.send("m1", big)
    server_evs = collect(server, lambda e: "message" in kinds(e), timeout=8)
    msg = [e for e in server_evs if e.kind == "message"]
    assert len(msg) == 1 and msg[0].message == big
    assert msg[0].size == len(encode(big)) > 20_000_000
    server.send("in-1", big)                     # and back
    client_evs = collect(client, lambda e: "message" in kinds(e), timeout=8)
    assert [e.message for e in client_evs if e.kind == "message"] == [big]
    assert client.stats("m1") == server.stats("in-1")[::-1] == (msg[0].size,) * 2


def tls12_only(monkeypatch):
    real = migchan.client_context

    def ctx(files):
        c = real(files)
        c.maximum_version = ssl.TLSVersion.TLSv1_2
        return c
    monkeypatch.setattr(migchan, "client_context", ctx)


@pytest.mark.parametrize("tls", ["1.3", "1.2"])
def test_client_cert_from_another_ca_is_refused(certs, channels, monkeypatch, tls):
    if tls == "1.2":
        tls12_only(monkeypatch)
    server = channels("hv2", certs["hv2"])
    # the impostor trusts the real CA, but its own cert comes from another one
    impostor = channels("hv1", pki.HostFiles(certs["hv1"].ca, certs["evil"].cert,
                                             certs["evil"].key), listen=False)
    impostor.connect("m1", address(server), "hv2")
    impostor.send("m1", {"type": "hello"})
    evs = collect(impostor, closed("m1"))
    assert kinds(evs) == ["closed"]
    assert evs[0].reason.startswith("refused: ")
    assert quiet(server) == []


def test_client_without_cert_is_refused(certs, channels):
    server = channels("hv2", certs["hv2"])
    anon = channels("hv1", pki.HostFiles(certs["hv1"].ca, None, None), listen=False)
    anon.connect("m1", address(server), "hv2")
    evs = collect(anon, closed("m1"))
    assert kinds(evs) == ["closed"] and evs[0].reason.startswith("refused: ")
    # and with Python's ssl directly, sending a frame right after the handshake
    ctx = ssl.create_default_context(cafile=certs["hv1"].ca)
    with socket.create_connection(server.listen_address, timeout=2) as raw:
        with ctx.wrap_socket(raw, server_hostname="hv2") as s:
            try:
                s.sendall(encode({"type": "hello"}))
                s.recv(100)
            except (ssl.SSLError, OSError):
                pass
    assert quiet(server) == []


def test_client_does_not_trust_a_server_from_another_ca(certs, channels):
    server = channels("hv1", pki.HostFiles(certs["hv2"].ca, certs["evil"].cert,
                                           certs["evil"].key))
    client = channels("hv1", certs["hv1"], listen=False)
    client.connect("m1", address(server), "hv1")     # the evil cert names hv1
    evs = collect(client, closed("m1"))
    assert kinds(evs) == ["closed"]
    assert evs[0].reason.startswith("refused: certificate verify failed")
    assert quiet(server, 0.1) == []


def test_server_cert_for_another_host_is_refused(pair):
    client, server = pair
    client.connect("m1", address(server), "hv3")     # hv2 answers
    evs = collect(client, closed("m1"))
    assert kinds(evs) == ["closed"]
    assert evs[0].reason.startswith("refused: ") and "hv3" in evs[0].reason
    assert quiet(server, 0.1) == []


def test_start_checks_files(certs, tmp_path):
    with pytest.raises(MbxError, match="is for hv1, not this host hv2"):
        Channel("hv2", certs["hv1"]).start()
    with pytest.raises(MbxError, match="cannot read certificate"):
        Channel("hv2", certs["hv2"]._replace(cert=str(tmp_path / "nope.pem"))).start()
    with pytest.raises(MbxError, match="cannot load TLS files"):
        Channel("hv2", certs["hv2"]._replace(key=certs["hv1"].key)).start()
    taken = Channel("hv2", certs["hv2"], ("127.0.0.1", 0))
    taken.start()
    try:
        with pytest.raises(MbxError, match="cannot listen on 127.0.0.1"):
            Channel("hv2", certs["hv2"], taken.listen_address).start()
    finally:
        taken.stop()


def test_connect_failures_are_refused(certs, channels):
    client = channels("hv1", certs["hv1"], listen=False)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))                 # bound, not listening: refused
    port = s.getsockname()[1]
    client.connect("a", "ssl:127.0.0.1:%d" % port, "hv2")
    client.connect("b", "tcp:127.0.0.1:%d" % port, "hv2")
    silent = socket.socket()                 # listening, never handshakes
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    client.connect("c", "ssl:127.0.0.1:%d" % silent.getsockname()[1], "hv2",
                   timeout=0.3)
    evs = collect(client, lambda e: kinds(e).count("closed") == 3)
    reasons = {e.sid: e.reason for e in evs}
    assert reasons["a"] == "refused: connection refused"
    assert reasons["b"].startswith("refused: bad address")
    assert reasons["c"] == "refused: timed out"
    client.connect("d", "ssl:127.0.0.1:%d" % silent.getsockname()[1], "hv2")
    with pytest.raises(ValueError, match="is open"):
        client.connect("d", "ssl:127.0.0.1:%d" % port, "hv2")
    client.connect("a", "ssl:127.0.0.1:%d" % port, "hv2")      # "a" ended: reusable
    assert collect(client, closed("a"))[-1].reason == "refused: connection refused"
    s.close()
    silent.close()


def test_garbage_to_the_listener(certs, channels):
    server = channels("hv2", certs["hv2"])
    with socket.create_connection(server.listen_address, timeout=2) as raw:
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n" + bytes(range(256)) * 8)
        try:
            while raw.recv(4096):            # the server hangs up
                pass
        except ConnectionResetError:
            pass
    assert quiet(server) == []


def raw_client(certs, server):
    """A well-authenticated hv1 speaking TLS directly (not a Channel)."""
    ctx = ssl.create_default_context(cafile=certs["hv1"].ca)
    ctx.load_cert_chain(certs["hv1"].cert, certs["hv1"].key)
    raw = socket.create_connection(server.listen_address, timeout=2)
    s = ctx.wrap_socket(raw, server_hostname="hv2")
    s.settimeout(0.1)
    try:
        s.recv(100)                          # take TLS 1.3 tickets, if any
    except TimeoutError:
        pass
    assert kinds(collect(server, lambda e: "accepted" in kinds(e))) == ["accepted"]
    return s


def test_truncated_frame(certs, channels):
    server = channels("hv2", certs["hv2"])
    s = raw_client(certs, server)
    good = encode({"type": "hello"})
    s.sendall(good + encode({"type": "state", "records": ["x"] * 100})[:50])
    s.close()
    evs = collect(server, closed("in-1"))
    assert [(e.kind, e.message, e.reason) for e in evs] == [
        ("message", {"type": "hello"}, None), ("closed", None, "truncated")]


def test_eof_at_a_frame_boundary(certs, channels):
    server = channels("hv2", certs["hv2"])
    s = raw_client(certs, server)
    s.sendall(encode({"type": "hello"}))
    try:
        s.unwrap()                           # sends close_notify
    except (ssl.SSLError, OSError):
        pass                                 # the server hangs up without one
    s.close()
    evs = collect(server, closed("in-1"))
    assert [(e.kind, e.reason) for e in evs] == [("message", None), ("closed", "eof")]


@pytest.mark.parametrize("bad, why", [
    (b"\x7f\xff\xff\xff", "corrupt: frame length 2147483647 exceeds 67108864"),
    (frame(b"{not json}"), "corrupt: bad JSON"),
    (frame(b"42"), "corrupt: JSON int is not an object"),
])
def test_corrupt_frames(certs, channels, bad, why):
    server = channels("hv2", certs["hv2"])
    s = raw_client(certs, server)
    s.sendall(encode({"type": "hello"}) + bad + encode({"type": "after"}))
    evs = collect(server, closed("in-1"))
    assert [e.kind for e in evs] == ["message", "closed"]
    assert evs[0].message == {"type": "hello"}
    assert evs[1].reason.startswith(why)
    s.close()


def test_stop_is_prompt_and_closes_everything(certs, channels):
    server = Channel("hv2", certs["hv2"], ("127.0.0.1", 0))
    server.start()
    client = channels("hv1", certs["hv1"], listen=False)
    client.connect("m1", address(server), "hv2")
    collect(server, lambda e: "accepted" in kinds(e))
    lurker = socket.create_connection(server.listen_address)    # never handshakes
    time.sleep(0.05)
    t = time.monotonic()
    server.stop()
    assert time.monotonic() - t < 1.0
    assert [(e.kind, e.sid, e.reason) for e in server.events()] == [
        ("closed", "in-1", "closed")]
    assert collect(client, closed("m1"))[-1].reason in ("eof", "truncated")
    lurker.close()
    server.stop()                                 # twice is fine


# --- slots: idle and unknown peers cannot keep a real host out ----------------

def idle_from(server, source, n):
    """``n`` plain TCP connections to ``server`` from address ``source``
    that never say anything."""
    out = []
    for _ in range(n):
        s = socket.socket()
        s.bind((source, 0))
        s.connect(server.listen_address)
        out.append(s)
    return out


def cut(s, timeout):
    """Whether the server closed ``s`` within ``timeout`` seconds."""
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_idle_connections_from_one_address_hold_few_slots_and_a_real_host_gets_in(
        certs, channels, monkeypatch):
    monkeypatch.setattr(migchan, "HANDSHAKE_TIMEOUT", 1.0)
    server = channels("hv2", certs["hv2"])
    client = channels("hv1", certs["hv1"], listen=False)
    idle = idle_from(server, "127.0.0.2", 3 * migchan.MAX_PENDING_PER_PEER)
    try:
        # Those over the address's share are closed at once, the rest held
        # for the handshake's time, then closed too.
        assert [cut(s, 0.3) for s in idle[-migchan.MAX_PENDING_PER_PEER:]] == \
            [True] * migchan.MAX_PENDING_PER_PEER
        held = idle[:migchan.MAX_PENDING_PER_PEER]
        # Meanwhile a real host (another address) authenticates and talks.
        client.connect("m1", address(server), "hv2")
        assert "connected" in kinds(collect(client, lambda e: "connected" in kinds(e)))
        assert kinds(collect(server, lambda e: "accepted" in kinds(e))) == ["accepted"]
        assert all(cut(s, 3.0) for s in held)
        assert server.refused["busy"] >= 2 * migchan.MAX_PENDING_PER_PEER
    finally:
        for s in idle:
            s.close()


def test_only_a_known_host_keeps_its_session_past_the_handshake(certs, monkeypatch):
    monkeypatch.setattr(migchan, "ADMIT_WAIT", 0.5)
    known = set()
    server = Channel("hv2", certs["hv2"], ("127.0.0.1", 0), admit=known.__contains__)
    client = Channel("hv1", certs["hv1"])
    server.start()
    client.start()
    try:
        client.connect("u", address(server), "hv2")
        evs = collect(client, closed("u"), timeout=5)
        assert [e.kind for e in evs if e.sid == "u"][-1] == "closed"
        assert quiet(server) == [] and server.refused["unknown"] == 1
        # Known before the wait is over (its migration row arrived late): kept.
        client.connect("k", address(server), "hv2")
        time.sleep(0.2)
        known.add("hv1")
        assert kinds(collect(server, lambda e: "accepted" in kinds(e))) == ["accepted"]
        client.send("k", {"type": "hello"})
        got = collect(server, lambda e: "message" in kinds(e))
        assert got[-1].message == {"type": "hello"}
    finally:
        client.stop()
        server.stop()
