"""One target's fuzzing process: ``python -m fuzz.worker TARGET LIBFUZZER_ARG...``.

Imports the code under test with atheris's coverage instrumentation, then
hands the process to libFuzzer (which exits it: 0 when its time is up, not
0 with a crash file when an input raised an exception the target does not
document)."""

import sys

import atheris

# What a target's input reaches: mbx's own packages and the YAML parser.
INSTRUMENTED = ["fuzz.targets", "middlebox", "ovsdb", "mbxmodel", "ryu_apps", "yaml"]


def main():
    name, args = sys.argv[1], sys.argv[2:]
    with atheris.instrument_imports(include=INSTRUMENTED):
        from fuzz.targets import TARGETS
    atheris.Setup([sys.argv[0]] + args, TARGETS[name].run)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
