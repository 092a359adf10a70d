"""The packaging metadata declares what mbx imports: every third-party
module imported by the installed packages belongs to a distribution in
setup.cfg's install_requires or one of its extras, and every pinned runtime
requirement is pinned to the same version in requirements.txt (the set
deploy/install.sh installs)."""

import ast
import configparser
import importlib.metadata
import os
import re
import sys

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PACKAGES = ("ovsdb", "mbxmodel", "ryu_apps", "lab", "middlebox", "hypervisor", "fuzz")
# Modules of distributions that are not installed here (optional extras).
NOT_INSTALLED = {"libvirt": "libvirt-python"}


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(line):
    return norm(re.split(r"[<>=!~;\[ ]", line.strip(), maxsplit=1)[0])


def setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(SRC, "setup.cfg"))
    return cfg


def lines(value):
    return [ln.strip() for ln in value.splitlines()
            if ln.strip() and not ln.strip().startswith("#")]


def declared():
    cfg = setup_cfg()
    names = {requirement_name(r) for r in lines(cfg["options"]["install_requires"])}
    for extra in cfg["options.extras_require"].values():
        names |= {requirement_name(r) for r in lines(extra)}
    return names


def third_party_imports():
    """{top-level module: a file importing it} over mbx's packages."""
    found = {}
    for package in PACKAGES:
        for dirpath, _dirs, files in os.walk(os.path.join(SRC, package)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(dirpath, name)
                with open(path) as f:
                    tree = ast.parse(f.read(), path)
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        modules = [alias.name for alias in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.level == 0:
                        modules = [node.module]
                    else:
                        continue
                    for module in modules:
                        top = module.split(".")[0]
                        if top not in sys.stdlib_module_names and top not in PACKAGES:
                            found.setdefault(top, os.path.relpath(path, SRC))
    return found


def test_every_imported_package_is_declared():
    dists = importlib.metadata.packages_distributions()
    names = declared()
    missing = []
    for module, where in sorted(third_party_imports().items()):
        candidates = dists.get(module) or [NOT_INSTALLED.get(module, module)]
        if not any(norm(d) in names for d in candidates):
            missing.append("%s (imported in %s, distribution %s)"
                           % (module, where, " or ".join(candidates)))
    assert not missing, "not in setup.cfg install_requires or extras: " + "; ".join(missing)


def test_runtime_pins_match_requirements_txt():
    with open(os.path.join(SRC, "requirements.txt")) as f:
        pinned = {requirement_name(ln): ln.split("==", 1)[1].strip()
                  for ln in lines(f.read()) if "==" in ln}
    for req in lines(setup_cfg()["options"]["install_requires"]):
        name, _, version = req.partition("==")
        assert version, "install_requires %r is not pinned" % req
        assert pinned.get(norm(name)) == version.strip(), \
            "%s: setup.cfg pins %s, requirements.txt %s" % (name, version, pinned.get(norm(name)))
