"""The package's shape, read from its source (syntax trees, no import):

- its modules import each other without a cycle, imports inside functions
  included (a cycle hidden in a function still means that two layers
  depend on each other);
- a module's private names (one leading underscore) stay in that module;
- the private names of dogpile.cache, redis-py and environs are touched
  only in ``librecache/_compat.py``, each tested in ``tests/test_compat.py``.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "librecache"


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """``{dotted name: file}`` of every module of ``package``."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported(name: str, path: Path, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``node`` (in module ``name``) imports.
    ``from . import sub`` imports the submodule ``sub``; the package itself
    only for a name that is not a submodule."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in modules}
    if node.level:
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    submodules = {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules}
    whole = {base} if base in modules and len(submodules) < len(node.names) else set()
    return submodules | whole


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: the package's modules it imports}``, anywhere in its source."""
    modules = module_files(package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                graph[name] |= imported(name, path, node, modules) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("def f():\n    from .high import g\n")
    (package / "high.py").write_text("from . import low\n")
    (package / "leaf.py").write_text("from . import low\n")
    assert cycles(import_graph(package)) == [["pkg.high", "pkg.low"]]


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "librecache.registry" in graph and "librecache.stats" in graph["librecache.registry"]
    assert cycles(graph) == []


#: The public API of named tuples (underscored so as not to clash with field names).
NAMEDTUPLE_API = frozenset({"_replace", "_asdict", "_fields", "_make"})
#: Libraries whose private names only ``_compat`` touches.
FOREIGN = ("dogpile", "redis", "environs")


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def defined_here(tree: ast.AST) -> set[str]:
    """The private names a module defines: functions, classes, module and
    attribute assignments (a bare annotation defines nothing)."""
    names: set[str] = set()
    bare = {id(node.target) for node in ast.walk(tree) if isinstance(node, ast.AnnAssign) and node.value is None}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name | ast.Attribute) and isinstance(node.ctx, ast.Store) and id(node) not in bare:
            names.add(node.id if isinstance(node, ast.Name) else node.attr)
        elif isinstance(node, ast.ImportFrom):
            names.update(alias.asname or alias.name for alias in node.names)
    return {name for name in names if private(name)}


def reached_privates(package: Path = PACKAGE) -> list[str]:
    """``module:line name`` of each private attribute a module reads or
    writes without defining it, and of each private name imported from
    another module of the package (``_compat`` excepted: its job)."""
    found = []
    for name, path in module_files(package).items():
        if path.name == "_compat.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        own = defined_here(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and private(node.attr) and node.attr not in own \
                    and node.attr not in NAMEDTUPLE_API:
                found.append(f"{name}:{node.lineno} .{node.attr}")
            elif isinstance(node, ast.ImportFrom):
                found += [f"{name}:{node.lineno} import {alias.name}" for alias in node.names if private(alias.name)]
    return found


def foreign_privates() -> set[str]:
    """The private names dogpile.cache, redis-py and environs define."""
    names: set[str] = set()
    for library in FOREIGN:
        spec = importlib.util.find_spec(library)
        assert spec is not None and spec.submodule_search_locations is not None
        for folder in spec.submodule_search_locations:
            for path in Path(folder).rglob("*.py"):
                names |= defined_here(ast.parse(path.read_text(), str(path)))
    return names


def foreign_overrides(package: Path = PACKAGE) -> list[str]:
    """``module:line Class.method`` of each method named as a private of
    another library in a class derived from one of its classes, and each
    private name imported from it (``_compat`` excepted)."""
    theirs = foreign_privates()
    found = []
    for name, path in module_files(package).items():
        if path.name == "_compat.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FOREIGN:
                imported.update(alias.asname or alias.name for alias in node.names)
                found += [f"{name}:{node.lineno} import {alias.name}" for alias in node.names if private(alias.name)]
            elif isinstance(node, ast.Import):
                imported.update((alias.asname or alias.name).split(".")[0] for alias in node.names
                                if alias.name.split(".")[0] in FOREIGN)
        for cls in (node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)):
            if any(ast.unparse(base).split(".")[0] in imported for base in cls.bases):
                found += [f"{name}:{item.lineno} {cls.name}.{item.name}" for item in cls.body
                          if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and private(item.name)
                          and item.name in theirs]
    return found


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("class A:\n    def __init__(self):\n        self._mine = 1\n\n_HIDDEN = 2\n")
    (package / "b.py").write_text(
        "from .a import A, _HIDDEN\n"
        "from dogpile.cache.region import CacheRegion\n\n"
        "def f(a: A):\n    return a._mine, a._replace()\n\n"
        "class R(CacheRegion):\n    def _get_from_backend(self, key):\n        return None\n"
        "    def _own(self):\n        return self._own\n")
    assert reached_privates(package) == ["pkg.b:1 import _HIDDEN", "pkg.b:5 ._mine"]
    assert foreign_overrides(package) == ["pkg.b:8 R._get_from_backend"]


def test_no_module_reaches_into_another_module_s_private_names() -> None:
    assert reached_privates() == []


def test_other_libraries_private_names_are_touched_in_compat_only() -> None:
    assert foreign_overrides() == []


def test_the_import_paths_users_rely_on_keep_working() -> None:
    """Modules moved or renamed keep the names the docs and users import."""
    import librecache
    from librecache.cli import main
    from librecache.keygen import dogpile_key_generator, function_key_generator
    from librecache.keys import CacheKeys, Namespace
    from librecache.metrics import PrometheusCollector, instrument
    from librecache.streams import open_streams, open_streams_sync

    assert Namespace is librecache.namespaces.Namespace and CacheKeys is librecache.CacheKeys
    assert all(callable(name) for name in (main, dogpile_key_generator, function_key_generator,
                                           PrometheusCollector, instrument, open_streams, open_streams_sync))
    assert all(hasattr(librecache, name) for name in librecache.__all__)
