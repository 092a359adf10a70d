"""mbx-pki: the deployment's CA and its principals' certificates (the
databases' TLS, OpenFlow TLS, the channel between mbxd daemons).

    mbx-pki init DIR [--name NAME]     create DIR/ca.pem and DIR/ca.key (kept if present)
    mbx-pki issue DIR NAME... [--role ROLE]
                                       create DIR/NAME.pem and DIR/NAME.key

One CA per deployment (EC P-256, ten years).  Each certificate names its
principal in its subject CN and in a DNS subjectAltName, is good for both
TLS server and client authentication, and is signed by the CA in the same
directory.  Private keys are written with mode 0600.

Roles (``--role``, default host): host (a hypervisor; NAME = its chassis
name), server (a database member), controller (mbx-northd, a physical
controller on a controller node), tenant (NAME = the tenant), provider (an
operator).  DIR/principals.json records each name's role, and a name is
never issued for a second role: a tenant called like a host would
otherwise hold that host's rights in the databases' RBAC, which matches
the certificate's CN only.
"""

import argparse
import collections
import datetime
import ipaddress
import json
import os
import re
import sys
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ovsdb.errors import MbxError

PROGRAM = "mbx-pki"
CA_CERT = "ca.pem"
CA_KEY = "ca.key"
CA_DAYS = 3650
HOST_DAYS = 3650
_HOST_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,252}")

HostFiles = collections.namedtuple("HostFiles", "ca cert key")

ROLES = ("host", "server", "controller", "tenant", "provider")
REGISTRY = "principals.json"


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _check_host(host):
    if (not isinstance(host, str) or not _HOST_RE.fullmatch(host)
            or host == "ca"):
        raise MbxError("bad host name %r: want letters, digits, '.', '_', '-' "
                       "(and not 'ca')" % (host,))


def _write(path, data, mode):
    """Write ``data`` to ``path`` atomically, created with ``mode``."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".mbx-pki-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def init_ca(directory, name="mbx CA"):
    """Create the CA in ``directory`` (made if needed) unless it exists.

    Returns ``(ca_cert_path, ca_key_path)``.
    """
    directory = os.path.abspath(directory)
    cert_path = os.path.join(directory, CA_CERT)
    key_path = os.path.join(directory, CA_KEY)
    have = [os.path.exists(p) for p in (cert_path, key_path)]
    if all(have):
        _load_ca(directory)         # an existing CA must at least be readable
        return cert_path, key_path
    if any(have):
        raise MbxError("%s has only one of %s and %s; remove it or restore the other"
                       % (directory, CA_CERT, CA_KEY))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as err:
        raise MbxError("cannot create %s: %s" % (directory, err.strerror or err))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    try:
        _write(key_path, _key_pem(key), 0o600)
        _write(cert_path, _cert_pem(cert), 0o644)
    except OSError as err:
        raise MbxError("cannot write the CA in %s: %s" % (directory, err.strerror or err))
    return cert_path, key_path


def _load_ca(directory):
    cert_path = os.path.join(directory, CA_CERT)
    key_path = os.path.join(directory, CA_KEY)
    try:
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except FileNotFoundError:
        raise MbxError("no CA in %s (run: %s init %s)" % (directory, PROGRAM, directory))
    except OSError as err:
        raise MbxError("cannot read the CA in %s: %s" % (directory, err.strerror or err))
    except ValueError as err:
        raise MbxError("unusable CA in %s: %s" % (directory, str(err).splitlines()[0]))
    return cert, key


def principals(directory):
    """{name: role} of the certificates issued in ``directory``."""
    path = os.path.join(os.path.abspath(directory), REGISTRY)
    try:
        with open(path) as f:
            registry = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise MbxError("cannot read %s: %s" % (path, getattr(err, "strerror", None) or err))
    if not isinstance(registry, dict) or not all(
            isinstance(v, str) and v in ROLES for v in registry.values()):
        raise MbxError("%s is not a {name: role} registry" % path)
    return registry


def role_of(directory, name):
    """The role ``name`` was issued for in ``directory`` (None: never)."""
    return principals(directory).get(name)


def _register(directory, name, role):
    """Record ``name`` -> ``role``; MbxError if it has another role."""
    if role not in ROLES:
        raise MbxError("unknown role %r (roles: %s)" % (role, ", ".join(ROLES)))
    registry = principals(directory)
    have = registry.get(name)
    if have is not None and have != role:
        raise MbxError("%s already has a %s certificate in %s: one name cannot "
                       "have two roles" % (name, have, directory))
    if have is None:
        registry[name] = role
        try:
            _write(os.path.join(directory, REGISTRY),
                   (json.dumps(registry, indent=1, sort_keys=True) + "\n").encode(),
                   0o644)
        except OSError as err:
            raise MbxError("cannot write %s in %s: %s"
                           % (REGISTRY, directory, err.strerror or err))


def issue_host(directory, host):
    """Issue (or re-issue, with a new key) ``host``'s certificate (role
    host) from the CA in ``directory``.  Returns its ``HostFiles``."""
    return issue(directory, host, "host")


def issue(directory, name, role="host"):
    """Issue (or re-issue, with a new key) principal ``name``'s certificate
    for ``role`` from the CA in ``directory``; MbxError when ``name`` was
    issued for another role.  Returns its ``HostFiles``."""
    host = name
    _check_host(host)
    directory = os.path.abspath(directory)
    ca_cert, ca_key = _load_ca(directory)
    _register(directory, host, role)
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(host)]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        pass
    now = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=HOST_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = HostFiles(os.path.join(directory, CA_CERT),
                      os.path.join(directory, host + ".pem"),
                      os.path.join(directory, host + ".key"))
    try:
        _write(files.key, _key_pem(key), 0o600)
        _write(files.cert, _cert_pem(cert), 0o644)
    except OSError as err:
        raise MbxError("cannot write %s's certificate in %s: %s"
                       % (host, directory, err.strerror or err))
    return files


def host_files(directory, host):
    """The ``HostFiles`` of ``host`` in ``directory``; MbxError if any is missing."""
    _check_host(host)
    directory = os.path.abspath(directory)
    files = HostFiles(os.path.join(directory, CA_CERT),
                      os.path.join(directory, host + ".pem"),
                      os.path.join(directory, host + ".key"))
    missing = [os.path.basename(p) for p in files if not os.path.isfile(p)]
    if missing:
        raise MbxError("missing %s in %s (run: %s %s %s%s)"
                       % (", ".join(missing), directory, PROGRAM,
                          "init" if CA_CERT in missing else "issue", directory,
                          "" if CA_CERT in missing else " " + host))
    return files


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(1, "%s: %s\n" % (PROGRAM, message))


def parse_args(argv):
    p = _Parser(prog=PROGRAM, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    i = sub.add_parser("init", help="create the CA (kept if it exists)")
    i.add_argument("dir", metavar="DIR")
    i.add_argument("--name", default="mbx CA", help="the CA's subject CN")
    s = sub.add_parser("issue", help="issue certificates")
    s.add_argument("dir", metavar="DIR")
    s.add_argument("hosts", metavar="NAME", nargs="+")
    s.add_argument("--role", choices=ROLES, default="host",
                   help="what the names are (default: host)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.cmd == "init":
            cert, _ = init_ca(args.dir, args.name)
            print(cert)
        else:
            registry = principals(args.dir)
            for host in args.hosts:
                _check_host(host)
                if registry.get(host, args.role) != args.role:
                    raise MbxError("%s already has a %s certificate in %s: one name "
                                   "cannot have two roles"
                                   % (host, registry[host], args.dir))
            for host in args.hosts:
                print(issue(args.dir, host, args.role).cert)
    except MbxError as err:
        print("%s: %s" % (PROGRAM, err), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
