"""A hand-driven peer on the migration channel, for the lab tests: it runs
inside a host's namespace, connects to a daemon's migration address with the
certificate it is given, sends the messages of a script and prints, as JSON,
what came back.

    python migpeer.py SCRIPT.json

SCRIPT: {"host": NAME, "ca": PATH, "cert": PATH, "key": PATH,
         "address": "ssl:IP:PORT", "peer": SERVER NAME,
         "messages": [...], "close_early": bool, "wait": SECONDS}
Each message is sent as is, except that a "state" message's "records" (a
list of {"chain", "role", "service", "conn": [proto, src, sport, dst,
dport, rsrc, rsport, rdst, rdport] with dotted addresses, "mark", "label",
"state"}) are sent in the binary record format (middlebox.conn), and a
"final" with "digest": "auto" gets the digest of the records sent so far
(as the daemons compute it).
Output: {"connected": bool, "refused": reason or null, "replies": [...],
"closed": reason or null}.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from middlebox import conn as C, migchan, vmstate  # noqa: E402
from middlebox.packet import ip_int  # noqa: E402
from middlebox.pki import HostFiles  # noqa: E402


def record(r):
    """(Slice, Conn) of a script's record."""
    p, src, sport, dst, dport, rsrc, rsport, rdst, rdport = r["conn"]
    conn = C.Conn(p, ip_int(src), sport, ip_int(dst), dport, ip_int(rsrc), rsport,
                  ip_int(rdst), rdport, 0, r.get("mark", 0), r.get("label", 0),
                  r.get("state", ""))
    return C.Slice(tuple(r["chain"]), r.get("role", "vm"), r.get("service", 0)), conn


def main(path):
    with open(path) as f:
        script = json.load(f)
    files = HostFiles(script["ca"], script["cert"], script["key"])
    ch = migchan.Channel(script["host"], files, None)
    ch.start()
    out = {"connected": False, "refused": None, "replies": [], "closed": None}
    staged = {}
    try:
        ch.connect("s", script["address"], script["peer"])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not out["connected"] and not out["refused"]:
            for ev in ch.events():
                if ev.kind == "connected":
                    out["connected"] = True
                elif ev.kind == "closed":
                    out["refused"] = ev.reason
            time.sleep(0.01)
        if out["connected"]:
            for msg in script["messages"]:
                if msg.get("type") == "state" and "records" in msg:
                    records = [record(r) for r in msg["records"]]
                    for sl, c in records:
                        staged[(sl, c.key)] = (sl, c)
                    msg = {k: v for k, v in msg.items() if k != "records"}
                    if records:
                        msg["data"] = C.encode([c for _, c in records],
                                               [sl for sl, _ in records])
                if msg.get("type") == "final" and msg.get("digest") == "auto":
                    msg = dict(msg, digest=vmstate.digest(staged.values()),
                               count=msg.get("count", len(staged)))
                ch.send("s", msg)
            if script.get("close_early"):
                time.sleep(0.2)
                ch.close("s")
            deadline = time.monotonic() + script.get("wait", 3)
            while time.monotonic() < deadline and out["closed"] is None:
                for ev in ch.events():
                    if ev.kind == "message":
                        out["replies"].append(ev.message)
                    elif ev.kind == "closed":
                        out["closed"] = ev.reason
                time.sleep(0.01)
    finally:
        ch.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
