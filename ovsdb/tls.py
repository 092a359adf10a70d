"""TLS for OVSDB clients: one home for the options and for setting them up.

Every mbx program that talks to the databases takes the same three files
(as ``ovn-nbctl`` does):

    --private-key FILE   this client's private key   (mbxctl also: -p FILE)
    --certificate FILE   its certificate, signed by the deployment's CA (-c)
    --ca-cert FILE       the CA's certificate, which the server must present
                         a certificate signed by (-C)

They are needed only when a remote is ``ssl:``; ``configure`` then checks
that each one is readable and gives python-ovs the files (``ovs.stream.
Stream.ssl_set_*``, one setting per process), or raises one MbxError line
saying which file is missing.  ``mbx-pki`` issues the files (see
middlebox/pki.py); ``from_pki`` names a principal's files in its directory.
"""

import collections
import os

import ovs.stream

from ovsdb import remotes as remotes_mod
from ovsdb.errors import MbxError

Files = collections.namedtuple("Files", "private_key certificate ca_cert")

# (long option, short option, Files field, help)
OPTIONS = (
    ("--private-key", "-p", "private_key", "this client's private key (PEM), for ssl: remotes"),
    ("--certificate", "-c", "certificate", "this client's certificate (PEM), signed by the CA"),
    ("--ca-cert", "-C", "ca_cert", "the CA certificate (PEM) the server's certificate "
     "must be signed by"),
)


def add_arguments(parser, short=False):
    """Add --private-key/--certificate/--ca-cert (and -p/-c/-C with
    ``short``) to an argparse ``parser``; ``files(args)`` reads them back."""
    for long, short_opt, dest, text in OPTIONS:
        names = [long, short_opt] if short else [long]
        parser.add_argument(*names, dest=dest, metavar="FILE", default=None, help=text)


def files(args):
    """The ``Files`` of parsed arguments (fields None when not given)."""
    return Files(*(getattr(args, dest, None) for _l, _s, dest, _h in OPTIONS))


def from_pki(directory, name):
    """The ``Files`` of principal ``name`` in an ``mbx-pki`` directory:
    NAME.key, NAME.pem, ca.pem."""
    directory = os.path.abspath(directory)
    return Files(os.path.join(directory, name + ".key"),
                 os.path.join(directory, name + ".pem"),
                 os.path.join(directory, "ca.pem"))


def merge(given, default):
    """``given`` with each unset file taken from ``default`` (a Files or None)."""
    if default is None:
        return given
    return Files(*(g if g else d for g, d in zip(given, default)))


def configure(tls_files, *remote_texts, program="mbx"):
    """Set python-ovs up for the ssl: remotes among ``remote_texts``
    (comma-separated lists; None entries are skipped) with ``tls_files``
    (a Files, or None).  Without an ssl: remote it does nothing, so plain
    unix: and tcp: keep working without certificates.  MbxError (one line)
    when a remote is ssl: and a file is not given or not readable."""
    ssl_remotes = [r for text in remote_texts if text
                   for r in text.split(",") if r.strip().startswith("ssl:")]
    if not ssl_remotes:
        return False
    tls_files = tls_files or Files(None, None, None)
    for (long, _s, dest, _h), path in zip(OPTIONS, tls_files):
        if not path:
            raise MbxError(f"{ssl_remotes[0]} is an ssl: remote: {program} needs "
                           f"{long} FILE (and {', '.join(o[0] for o in OPTIONS if o[0] != long)})")
        try:
            with open(path, "rb"):
                pass
        except OSError as err:
            raise MbxError(f"{long} {path}: {err.strerror or err} (needed for "
                           f"{ssl_remotes[0]})") from None
    if "ssl:" not in ovs.stream.Stream._SOCKET_METHODS:
        raise MbxError("this python-ovs has no ssl: support (python's ssl module "
                       "is missing)")
    ovs.stream.Stream.ssl_set_private_key_file(tls_files.private_key)
    ovs.stream.Stream.ssl_set_certificate_file(tls_files.certificate)
    ovs.stream.Stream.ssl_set_ca_cert_file(tls_files.ca_cert)
    return True


def check_remotes(*remote_texts, what="remote"):
    """Every list among ``remote_texts`` parses (ovsdb.remotes.split)."""
    for text in remote_texts:
        if text:
            remotes_mod.split(text, what)
