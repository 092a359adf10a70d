"""mbxd's packet I/O on the middlebox port: an AF_PACKET socket.

br-int sends the daemon each packet it must judge on the internal port
``mbx-mb`` with an 802.1Q tag (VID = slice tag, PCP = stage).  The kernel
strips that tag before AF_PACKET sees the frame and reports it in the
PACKET_AUXDATA control message instead (``tp_vlan_tci`` with
TP_STATUS_VLAN_VALID), so ``recv_batch`` returns it next to the untagged
frame; ``send`` puts the tag back inline, where OVS reads it on the port.
PACKET_IGNORE_OUTGOING keeps the socket from reading its own transmissions.

The socket must be created in the network namespace that holds the port.
"""

import errno
import fcntl
import socket
import struct

ETH_P_ALL = 0x0003
ETH_P_8021Q = 0x8100
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4                     # sll_pkttype of a frame this host sent
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6
MAX_FRAME = 65535                       # jumbo frames and GRO'd packets fit

# struct tpacket_auxdata: tp_status, tp_len, tp_snaplen (u32), tp_mac,
# tp_net, tp_vlan_tci, tp_vlan_tpid (u16), native byte order.
_AUXDATA = struct.Struct("=IIIHHHH")
_CMSG_SPACE = socket.CMSG_SPACE(_AUXDATA.size)
_TAG = struct.Struct("!HH")
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ_FLAGS = struct.Struct("16sH14x")        # struct ifreq: name, ifr_flags


def set_up(ifname):
    """Bring interface ``ifname`` up (in the caller's network namespace) if
    it is down; an internal port a switch creates anew starts down.
    Returns True if it had to.  Raises OSError."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        req = _IFREQ_FLAGS.pack(ifname.encode(), 0)
        _, flags = _IFREQ_FLAGS.unpack(fcntl.ioctl(sock, SIOCGIFFLAGS, req))
        if flags & IFF_UP:
            return False
        fcntl.ioctl(sock, SIOCSIFFLAGS, _IFREQ_FLAGS.pack(ifname.encode(), flags | IFF_UP))
        return True


class PacketPort:
    """A non-blocking raw socket bound to ``ifname`` (every protocol).

    ``recv_batch(max_frames)`` -> ``[(frame, tci), ...]`` (tci: the 16-bit
    802.1Q TCI the kernel stripped, or None for an untagged frame);
    ``send(frame, tci)`` -> True if the kernel took it.  Counters:
    ``received``, ``sent``, ``send_errors``, ``truncated``, ``link_down``.

    The port going down and up costs one ENETDOWN (counted in ``link_down``)
    and the socket keeps working; for a few tens of milliseconds after the
    port comes up, sends fail with ENETDOWN (counted in ``send_errors``).  If
    the port is deleted (or recreated with a new ifindex) the socket stays
    silent forever: ``gone()`` says so, and the daemon opens a new PacketPort.
    """

    def __init__(self, ifname, rcvbuf=4 << 20, sndbuf=4 << 20):
        self.ifname = ifname
        self.received = 0
        self.sent = 0
        self.send_errors = 0
        self.truncated = 0
        self.link_down = 0
        self.last_send_error = None
        # Protocol 0: the socket receives nothing until bound to the port, so
        # no frame of another interface slips in before bind().
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            for opt, force, size in ((socket.SO_RCVBUF, 33, rcvbuf),     # SO_RCVBUFFORCE
                                     (socket.SO_SNDBUF, 32, sndbuf)):    # SO_SNDBUFFORCE
                if size:
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, force, size)
                    except OSError:             # not CAP_NET_ADMIN: capped by rmem_max
                        sock.setsockopt(socket.SOL_SOCKET, opt, size)
            sock.bind((ifname, ETH_P_ALL))
            sock.setblocking(False)
        except OSError as err:
            sock.close()
            raise OSError(err.errno, "cannot open packet socket on %s: %s"
                          % (ifname, err.strerror or err)) from None
        self.sock = sock

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def recv_batch(self, max_frames=64):
        """Up to ``max_frames`` frames that are waiting; never blocks."""
        out = []
        recvmsg = self.sock.recvmsg
        for _ in range(max_frames):
            try:
                frame, ancdata, flags, addr = recvmsg(MAX_FRAME, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as err:
                if err.errno != errno.ENETDOWN:
                    raise
                self.link_down += 1     # reported once per down; the socket still works
                break
            if addr[2] == PACKET_OUTGOING:
                continue                # an old kernel without IGNORE_OUTGOING
            if flags & socket.MSG_TRUNC:
                self.truncated += 1
                continue
            tci = None
            for level, kind, data in ancdata:
                if level == SOL_PACKET and kind == PACKET_AUXDATA \
                        and len(data) >= _AUXDATA.size:
                    status, _, _, _, _, vlan_tci, _ = _AUXDATA.unpack_from(data)
                    if status & TP_STATUS_VLAN_VALID:
                        tci = vlan_tci
            out.append((frame, tci))
        self.received += len(out)
        return out

    def send(self, frame, tci=None):
        """Transmit ``frame`` on the port, with an 802.1Q header (TPID 0x8100,
        ``tci``) after the MAC addresses unless ``tci`` is None.  Returns
        False (and counts a send error) if the kernel refused it."""
        if tci is not None:
            frame = b"".join((frame[:12], _TAG.pack(ETH_P_8021Q, tci), frame[12:]))
        try:
            self.sock.send(frame)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.EMSGSIZE,
                                 errno.ENETDOWN, errno.ENXIO, errno.EINTR):
                raise
            self.send_errors += 1
            self.last_send_error = err.errno
            return False
        self.sent += 1
        return True

    def gone(self):
        """True once the interface this socket is bound to no longer exists
        (deleted, or replaced by a new one of the same name)."""
        # The name of the bound ifindex, resolved in the socket's own network
        # namespace (whichever namespace the caller is in); "" once it is gone.
        try:
            return self.sock.getsockname()[0] != self.ifname
        except OSError:
            return True

    def counters(self):
        return {"received": self.received, "sent": self.sent,
                "send_errors": self.send_errors, "truncated": self.truncated,
                "link_down": self.link_down}
