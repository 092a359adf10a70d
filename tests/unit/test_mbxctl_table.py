"""mbxctl's command table: every command declared once, its help generated
from its entry, and mistakes caught before the database is touched."""

import io
import re
import subprocess
import sys

import pytest

from ovsdb import ctl
from ovsdb.ctl.syntax import CtlCommand, command_table
from ovsdb.errors import MbxError

ROOT = __file__.rsplit("/tests/", 1)[0]


def commands_section(usage):
    """The lines of --help between "Commands:" and the blank line after."""
    lines = usage.splitlines()
    start = lines.index("Commands:") + 1
    return lines[start:lines.index("", start)]


def help_text():
    out = io.StringIO()
    ctl.run(["--help"], out)
    return out.getvalue()


def test_help_lists_every_command_from_its_entry_in_table_order():
    assert commands_section(help_text()) == [
        line for command in ctl.COMMANDS.values()
        for line in command.help_lines()]


def test_every_command_has_one_entry_and_is_named_in_help():
    named = [line.split()[0] for line in commands_section(help_text())
             if not line.startswith("   ")]
    assert sorted(set(named)) == sorted(ctl.COMMANDS)
    assert all(name == command.name
               for name, command in ctl.COMMANDS.items())


def test_a_command_declared_twice_is_refused():
    with pytest.raises(ValueError, match="'ls-add' is declared twice"):
        command_table([CtlCommand("ls-add")], [CtlCommand("ls-add")])


def test_help_fits_80_columns():
    assert max(map(len, commands_section(help_text()))) < 80


def declared_options(command):
    return {arg.rstrip("!?") for arg in command.args if arg.startswith("--")}


def usage_options(command):
    usages = [command.usage] + [usage for usage, _ in command.other_forms]
    return set(re.findall(r"--[a-z][a-z-]*", " ".join(usages)))


@pytest.mark.parametrize("name", sorted(ctl.COMMANDS))
def test_usage_shows_exactly_the_options_the_command_accepts(name):
    command = ctl.COMMANDS[name]
    assert usage_options(command) == declared_options(command)


@pytest.mark.parametrize("name", sorted(ctl.COMMANDS))
def test_every_command_writes_or_prints_something(name):
    command = ctl.COMMANDS[name]
    if name == "sync":      # it changes nothing by design; --wait=hv waits
        assert command.write is command.read is None
    else:
        assert command.write or command.read


@pytest.fixture
def no_database(monkeypatch):
    def connect(*args, **kwargs):
        raise AssertionError("mbxctl connected despite the mistake")
    monkeypatch.setattr(ctl.MbxNb, "connect", connect)


@pytest.mark.parametrize("argv,message", [
    (["ls-add", "ls-x", "--vni", "9", "--subnet", "10.9.0.0/24", "--",
      "ls-addd", "x"],
     "mbxctl: unknown command 'ls-addd' (see mbxctl --help)"),
    (["ls-add", "ls-x", "--vni", "9", "--subnet", "10.9.0.0/24",
      "--if-exists"],
     "mbxctl: ls-add: unrecognized arguments: --if-exists (see mbxctl "
     "--help)"),
    (["--dbb", "unix:/x", "show"],
     "mbxctl: unknown option '--dbb'; options are --db, --sb, --wait=hv, "
     "--timeout, -p/--private-key, -c/--certificate, -C/--ca-cert (see "
     "mbxctl --help)"),
    (["vm-add", "x", "--ip", "10.0.0.9", "--switch"],
     "mbxctl: vm-add: argument --switch: expected one argument (see mbxctl "
     "--help)"),
    (["show", "--", "--"], "mbxctl: missing command (see mbxctl --help)"),
])
def test_a_mistake_is_one_line_before_connecting(no_database, capsys, argv,
                                                 message):
    assert ctl.main(["--db", "unix:/nonexistent.sock"] + argv) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", message + "\n")


def test_load_reads_its_file_before_connecting(no_database, capsys,
                                               tmp_path):
    path = tmp_path / "missing.yaml"
    assert ctl.main(["show", "--", "load", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"mbxctl: cannot read {path}: No such file or directory\n")


def test_every_command_parses_its_arguments_by_name():
    (_, args), = ctl._commands(["nat-del", "nat-a", "192.0.2.1", "--type",
                                "snat", "--if-exists"])
    assert (args.mb, args.target, args.type, args.external_port,
            args.if_exists) == ("nat-a", "192.0.2.1", "snat", None, True)
    with pytest.raises(MbxError, match="^fw-del: missing MB "):
        ctl._commands(["fw-del"])


def test_python_m_runs_mbxctl():
    proc = subprocess.run([sys.executable, "-m", "ovsdb.ctl", "--help"],
                          cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
    assert (proc.returncode, proc.stdout) == (0, help_text())
