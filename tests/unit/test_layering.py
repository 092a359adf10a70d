"""The packages' import layering, read from the source: mbxmodel at the
bottom with nothing but the standard library, and no import cycle between
mbxmodel, ovsdb, ryu_apps and middlebox (imports inside functions count)."""

import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
PACKAGES = ("mbxmodel", "ovsdb", "ryu_apps", "middlebox", "hypervisor", "lab")


def _imports(package):
    """{(module path, imported top-level name)} of every .py file of
    ``package``."""
    found = set()
    for folder, _, files in os.walk(os.path.join(ROOT, package)):
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            with open(path) as f:
                tree = ast.parse(f.read(), path)
            rel = os.path.relpath(path, ROOT)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    found.update((rel, a.name.split(".")[0])
                                 for a in node.names)
                elif isinstance(node, ast.ImportFrom):
                    if node.level:              # relative: its own package
                        found.add((rel, package))
                    else:
                        found.add((rel, node.module.split(".")[0]))
    return found


def _graph():
    return {p: {top for _, top in _imports(p) if top in PACKAGES and top != p}
            for p in PACKAGES}


def _cycle(graph):
    """One import cycle of ``graph`` as a list of packages, or None."""
    done, path = set(), []

    def visit(node):
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for nxt in sorted(graph[node]):
            found = visit(nxt)
            if found:
                return found
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        found = visit(start)
        if found:
            return found
    return None


def test_every_package_is_read():
    for package in PACKAGES:
        assert _imports(package), package


def test_no_import_cycle_between_the_packages():
    assert _cycle(_graph()) is None


def test_the_cycle_check_finds_a_cycle():
    graph = _graph()
    graph["ovsdb"] = graph["ovsdb"] | {"ryu_apps"}
    assert _cycle(graph) in (["ovsdb", "ryu_apps", "ovsdb"],
                             ["ryu_apps", "ovsdb", "ryu_apps"])


def test_ovsdb_does_not_import_the_controller_or_the_daemon():
    assert not [(path, top) for path, top in _imports("ovsdb")
                if top in ("ryu_apps", "middlebox")]


def test_mbxmodel_imports_only_the_standard_library():
    foreign = sorted((path, top) for path, top in _imports("mbxmodel")
                     if top != "mbxmodel"
                     and top not in sys.stdlib_module_names)
    assert foreign == []
