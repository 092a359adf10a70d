"""TLS option handling (ovsdb.tls), remote lists (ovsdb.remotes) and the
certificate roles of mbx-pki."""

import argparse
import os

import ovs.stream
import pytest

from middlebox import pki
from ovsdb import remotes, tls
from ovsdb.ctl import _global_options
from ovsdb.errors import MbxError


# ------------------------------------------------------------------ remotes
def test_a_list_keeps_its_members_in_order():
    text = "ssl:10.201.0.2:6642, ssl:10.201.0.3:6642,unix:/run/mbx/db/3/sb.sock"
    assert remotes.split(text) == ["ssl:10.201.0.2:6642", "ssl:10.201.0.3:6642",
                                   "unix:/run/mbx/db/3/sb.sock"]
    assert remotes.split("tcp:127.0.0.1:6641") == ["tcp:127.0.0.1:6641"]


@pytest.mark.parametrize("text, message", [
    ("", "empty --sb remote"),
    ("ssl:1.2.3.4:6642,,ssl:1.2.3.5:6642", "an empty member"),
    ("ssl:1.2.3.4", "want ssl:IP:PORT"),
    ("tcp:1.2.3.4:99999", "want tcp:IP:PORT"),
    ("http://x", "want METHOD:ADDRESS"),
    ("/run/mbx/nb.sock", "want METHOD:ADDRESS"),
    ("punix:/x", "want METHOD:ADDRESS"),
])
def test_a_bad_list_is_one_clear_error(text, message):
    with pytest.raises(MbxError) as err:
        remotes.split(text, "--sb remote")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_uses_ssl_looks_at_every_member():
    assert remotes.uses_ssl("unix:/a", "tcp:1.2.3.4:1,ssl:1.2.3.4:2")
    assert not remotes.uses_ssl("unix:/a,tcp:1.2.3.4:1", None)


def test_follow_quickly_caps_the_backoff():
    import ovs.jsonrpc
    session = ovs.jsonrpc.Session.open_multiple(["unix:/nonexistent/a", "unix:/b"])
    remotes.follow_quickly(session)
    assert session.reconnect.get_max_backoff() == remotes.MAX_BACKOFF_MS
    assert session.reconnect.get_min_backoff() == remotes.MIN_BACKOFF_MS
    session.close()


# ---------------------------------------------------------------------- tls
@pytest.fixture
def ssl_reset():
    saved = (ovs.stream.Stream._SSL_private_key_file,
             ovs.stream.Stream._SSL_certificate_file,
             ovs.stream.Stream._SSL_ca_cert_file)
    yield
    (ovs.stream.Stream._SSL_private_key_file, ovs.stream.Stream._SSL_certificate_file,
     ovs.stream.Stream._SSL_ca_cert_file) = saved


@pytest.fixture
def host_files(tmp_path):
    pki.init_ca(str(tmp_path))
    pki.issue_host(str(tmp_path), "hv1")
    return tls.from_pki(str(tmp_path), "hv1")


def test_argparse_options_long_and_short():
    p = argparse.ArgumentParser()
    tls.add_arguments(p, short=True)
    args = p.parse_args(["-p", "k", "--certificate", "c", "-C", "ca"])
    assert tls.files(args) == tls.Files("k", "c", "ca")
    p = argparse.ArgumentParser()
    tls.add_arguments(p)
    assert tls.files(p.parse_args([])) == tls.Files(None, None, None)
    with pytest.raises(SystemExit):
        p.parse_args(["-p", "k"])         # short forms only where asked for


def test_mbxctl_takes_the_ovn_nbctl_short_options():
    opts, rest = _global_options(["-p", "k.pem", "--certificate=c.pem", "-C", "ca.pem",
                                  "--db", "ssl:1.2.3.4:6641,ssl:1.2.3.5:6641", "show"])
    assert (opts["private_key"], opts["certificate"], opts["ca_cert"]) == \
        ("k.pem", "c.pem", "ca.pem")
    assert opts["db"] == "ssl:1.2.3.4:6641,ssl:1.2.3.5:6641"
    assert rest == ["show"]


def test_no_ssl_remote_needs_no_files(ssl_reset):
    assert tls.configure(None, "unix:/a,tcp:1.2.3.4:6641") is False


def test_an_ssl_remote_sets_python_ovs_up(ssl_reset, host_files):
    assert tls.configure(host_files, "unix:/a", "ssl:1.2.3.4:6642,ssl:1.2.3.5:6642")
    assert ovs.stream.Stream._SSL_private_key_file == host_files.private_key
    assert ovs.stream.Stream._SSL_certificate_file == host_files.certificate
    assert ovs.stream.Stream._SSL_ca_cert_file == host_files.ca_cert


def test_a_missing_option_is_one_line(ssl_reset, host_files):
    with pytest.raises(MbxError) as err:
        tls.configure(host_files._replace(ca_cert=None), "ssl:1.2.3.4:6642",
                      program="mbxctl")
    assert str(err.value).startswith("ssl:1.2.3.4:6642 is an ssl: remote: mbxctl "
                                      "needs --ca-cert FILE")
    assert "\n" not in str(err.value)


def test_an_unreadable_file_is_one_line(ssl_reset, host_files, tmp_path):
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(MbxError) as err:
        tls.configure(host_files._replace(certificate=missing), "ssl:1.2.3.4:6642")
    assert str(err.value) == ("--certificate %s: No such file or directory (needed "
                              "for ssl:1.2.3.4:6642)" % missing)


def test_merge_fills_only_what_is_unset(host_files):
    given = tls.Files(None, "/my/cert.pem", None)
    merged = tls.merge(given, host_files)
    assert merged == tls.Files(host_files.private_key, "/my/cert.pem", host_files.ca_cert)
    assert tls.merge(given, None) == given


def test_mbxctl_refuses_ssl_without_files(ssl_reset, capsys):
    from ovsdb import ctl
    assert ctl.main(["--db", "ssl:127.0.0.1:1", "show"]) == 1
    out, err = capsys.readouterr()
    assert err == ("mbxctl: ssl:127.0.0.1:1 is an ssl: remote: mbxctl needs "
                   "--private-key FILE (and --certificate, --ca-cert)\n")


# ---------------------------------------------------------------- pki roles
def test_roles_are_recorded_and_one_name_has_one_role(tmp_path):
    d = str(tmp_path)
    pki.init_ca(d)
    pki.issue(d, "db1", "server")
    pki.issue(d, "red", "tenant")
    pki.issue_host(d, "hv1")
    pki.issue_host(d, "hv1")                  # re-issued: same role, fine
    assert pki.principals(d) == {"db1": "server", "red": "tenant", "hv1": "host"}
    with pytest.raises(MbxError) as err:
        pki.issue(d, "hv1", "tenant")
    assert "hv1 already has a host certificate" in str(err.value)
    with pytest.raises(MbxError):
        pki.issue(d, "x", "admin")


def test_cli_issue_with_a_role(tmp_path, capsys):
    d = str(tmp_path)
    assert pki.main(["init", d]) == 0
    assert pki.main(["issue", d, "ctl1", "--role", "controller"]) == 0
    assert pki.main(["issue", d, "ok", "ctl1", "--role", "host"]) == 1
    err = capsys.readouterr().err
    assert err == "mbx-pki: ctl1 already has a controller certificate in %s: one " \
        "name cannot have two roles\n" % d
    assert not os.path.exists(os.path.join(d, "ok.pem"))   # nothing issued
    assert pki.role_of(d, "ctl1") == "controller"


# ------------------------------------------------------ the libvirt hook
def test_the_libvirt_hook_passes_the_host_certificate_to_mbxctl():
    from hypervisor import libvirt_hook as hook
    config = hook.parse_config(
        "MBX_HOST=h2\nMBX_DB=ssl:10.201.0.2:6641,ssl:10.201.0.3:6641\n"
        "MBX_PRIVATE_KEY=/pki/h2.key\nMBX_CERTIFICATE=/pki/h2.pem\nMBX_CA_CERT=/pki/ca.pem\n")
    argv = hook.mbxctl_argv(hook.Action(hook.DONE, "red2", "h2"), config)
    assert argv == ["mbxctl", "--db", "ssl:10.201.0.2:6641,ssl:10.201.0.3:6641",
                    "-p", "/pki/h2.key", "-c", "/pki/h2.pem", "-C", "/pki/ca.pem",
                    "--timeout", "5", "migrate-done", "red2"]
    # and mbxctl reads them back
    opts, rest = _global_options(argv[1:])
    assert tls.Files(opts["private_key"], opts["certificate"], opts["ca_cert"]) == \
        tls.Files("/pki/h2.key", "/pki/h2.pem", "/pki/ca.pem")
