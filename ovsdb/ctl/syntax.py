"""How an mbxctl command is declared: one CtlCommand holds everything about
it (usage and help for --help, its arguments, what it writes to which
database's transaction and what it prints), and the table of them is checked for
duplicates and laid out as help text here."""

import argparse
from dataclasses import dataclass
from typing import Callable, Optional

from ovsdb.errors import MbxError

USAGE_INDENT = 2        # a command's first usage line
CONTINUED_INDENT = 9    # its further usage lines
HELP_COLUMN = 41        # its help text


@dataclass(frozen=True)
class CtlCommand:
    """One mbxctl command.

    ``usage``: its arguments as --help shows them, after the name; "\\n"
    continues them on the next line. ``help``: what it does, as --help shows
    it; "\\n" breaks the line. ``other_forms``: more (usage, help) pairs,
    for a command whose arguments take more than one shape.

    ``args``: its argument syntax, one string per argument: "x" a required
    positional, "x?" an optional one, "x*" zero or more; "--x" an option
    with a value, "--x!" a required one, "--x?" a flag. A parsed argument is
    the attribute of its name ("--may-exist": ``args.may_exist``).

    The steps, each optional, in the order they run:
    ``prepare(args)``: checks that need no database, while parsing (before
    connecting); may add attributes to ``args``.
    ``write(api, txn, args)``: adds its API commands to the one transaction
    of every command given on database ``db`` ("nb": MbxNb, the intent;
    "sb": MbxSb, the runtime rows); returns the one whose result it reports.
    ``reply(result, args)``: output lines from that command's result.
    ``read(snap, args)``: output lines from the snapshot taken after the
    commit, of database ``reads`` ("nb": an NbSnapshot, "sb": an
    SbSnapshot; "both": ``read(nb_snap, args, sb_snap)``).
    ``wait(api, result, args, timeout)``: after the commit (and --wait=hv),
    waits for what the command asked for (``api`` of ``db``); raises
    MbxError when it fails.
    """

    name: str
    usage: str = ""
    help: str = ""
    other_forms: tuple = ()
    args: tuple = ()
    prepare: Optional[Callable] = None
    write: Optional[Callable] = None
    reply: Optional[Callable] = None
    read: Optional[Callable] = None
    wait: Optional[Callable] = None
    db: str = "nb"
    reads: str = "nb"

    def parse(self, argv):
        """The parsed arguments, after ``prepare``; a mistake raises one
        MbxError line naming the command."""
        args = _Parser(self.name, self.args).parse(argv)
        if self.prepare is not None:
            self.prepare(args)
        return args

    def help_lines(self):
        """This command's lines of --help, a block per form: its usage from
        column USAGE_INDENT (further lines from CONTINUED_INDENT), its help
        from HELP_COLUMN, starting on the last usage line when that leaves
        two spaces."""
        lines = []
        for usage, text in ((self.usage, self.help), *self.other_forms):
            usage = f"{self.name} {usage}".rstrip().split("\n")
            block = ([" " * USAGE_INDENT + usage[0]]
                     + [" " * CONTINUED_INDENT + line for line in usage[1:]])
            helps = text.split("\n") if text else []
            if helps and len(block[-1]) <= HELP_COLUMN - 2:
                block[-1] = block[-1].ljust(HELP_COLUMN) + helps.pop(0)
            lines += block + [" " * HELP_COLUMN + line for line in helps]
        return lines


def command_table(*groups):
    """{name: CtlCommand} from groups of commands, in their order; a name
    declared twice is a programming error."""
    table = {}
    for group in groups:
        for command in group:
            if command.name in table:
                raise ValueError(f"mbxctl command {command.name!r} is "
                                 "declared twice")
            table[command.name] = command
    return table


def key_values(command, items, example="same-host=both"):
    """{KEY: VALUE} from ["KEY=VALUE", ...]."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise MbxError(f"{command}: invalid option {item!r}: use "
                           f"KEY=VALUE, e.g. {example} (see mbxctl "
                           "--help)")
        if key in out:
            raise MbxError(f"{command}: option {key!r} is given twice")
        out[key] = value
    return out


class _Parser(argparse.ArgumentParser):
    """A command's argument parser whose errors are one MbxError line, and
    which reports a mistyped option before the required one it misses."""

    def __init__(self, command, options):
        super().__init__(prog=command, allow_abbrev=False, add_help=False)
        self.required_options = []
        for option in options:
            if option.startswith("--") and option.endswith("?"):
                self.add_argument(option[:-1], action="store_true")
            elif option.endswith("!"):
                self.add_argument(option[:-1])
                self.required_options.append(option[:-1])
            elif option.startswith("--"):
                self.add_argument(option)
            elif option.endswith("*"):
                self.add_argument(option[:-1], nargs="*")
            elif option.endswith("?"):
                self.add_argument(option[:-1], nargs="?")
            else:
                self.add_argument(option, nargs="?")
                self.required_options.append(option)

    def parse(self, args):
        parsed, extra = self.parse_known_intermixed_args(args)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        for option in self.required_options:
            if getattr(parsed, option.lstrip("-").replace("-", "_")) is None:
                what = (f"option {option}" if option.startswith("--")
                        else option.upper())
                self.error(f"missing {what}")
        return parsed

    def error(self, message):
        raise MbxError(f"{self.prog}: {message} (see mbxctl --help)")
