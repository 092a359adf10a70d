"""mbx-pki: the CA and host certificates of the migration channel."""

import datetime
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from middlebox import pki
from ovsdb.errors import MbxError


def load(path):
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_init_ca_makes_a_p256_ca_for_ten_years_and_keeps_it(tmp_path):
    d = tmp_path / "pki"
    cert_path, key_path = pki.init_ca(str(d))
    assert (cert_path, key_path) == (str(d / "ca.pem"), str(d / "ca.key"))
    ca = load(cert_path)
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "mbx CA"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"
    life = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert datetime.timedelta(days=3640) < life < datetime.timedelta(days=3660)
    assert mode(key_path) == 0o600
    before = open(cert_path, "rb").read(), open(key_path, "rb").read()
    assert pki.init_ca(str(d), name="another") == (cert_path, key_path)
    assert (open(cert_path, "rb").read(), open(key_path, "rb").read()) == before


def test_init_ca_refuses_half_a_ca(tmp_path):
    pki.init_ca(str(tmp_path))
    os.unlink(tmp_path / "ca.key")
    with pytest.raises(MbxError, match="only one of ca.pem and ca.key"):
        pki.init_ca(str(tmp_path))


def test_issue_host_signs_a_cert_naming_the_host(tmp_path):
    pki.init_ca(str(tmp_path))
    files = pki.issue_host(str(tmp_path), "hv1")
    assert files == pki.HostFiles(str(tmp_path / "ca.pem"), str(tmp_path / "hv1.pem"),
                                  str(tmp_path / "hv1.key"))
    cert, ca = load(files.cert), load(files.ca)
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hv1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["hv1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert mode(files.key) == 0o600
    assert pki.host_files(str(tmp_path), "hv1") == files


def test_issue_and_host_files_errors(tmp_path):
    with pytest.raises(MbxError, match=r"no CA in .* \(run: mbx-pki init"):
        pki.issue_host(str(tmp_path), "hv1")
    pki.init_ca(str(tmp_path))
    for bad in ("", "a/b", "../x", "ca", ".hidden"):
        with pytest.raises(MbxError, match="bad host name"):
            pki.issue_host(str(tmp_path), bad)
    with pytest.raises(MbxError) as exc:
        pki.host_files(str(tmp_path), "hv9")
    assert "hv9.pem, hv9.key" in str(exc.value) and "mbx-pki issue" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_cli(tmp_path, capsys):
    d = str(tmp_path / "run")
    assert pki.main(["issue", d, "hv1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mbx-pki: no CA in") and err.count("\n") == 1
    assert pki.main(["init", d]) == 0
    assert pki.main(["issue", d, "hv1", "hv2"]) == 0
    out = capsys.readouterr().out.split()
    assert out == [os.path.join(d, n) for n in ("ca.pem", "hv1.pem", "hv2.pem")]
    assert pki.host_files(d, "hv2").key == os.path.join(d, "hv2.key")
    assert pki.main(["issue", d, "ok", "bad/name"]) == 1     # checked before any is issued
    assert "bad host name 'bad/name'" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(d, "ok.pem"))
    with pytest.raises(SystemExit) as exc:
        pki.main(["frobnicate", d])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("mbx-pki: ") and err.count("\n") == 1
