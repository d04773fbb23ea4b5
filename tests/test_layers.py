"""The layers of aflow, read from its source with ``ast``: imports point down, sit at the
top of their module, and never go round in a circle.

From the bottom up (a module may import from its own layer and from those below)::

    errors  <  kernels  <  runtime (_core, stats, policies, _aio)  <  abc  <  codecs
            <  flow  <  stages  <  sources | sinks | connectors  <  the front
            (the package, cli, monitor, testing, the demo)

Sources, sinks and connectors share a rank but not a layer: none imports another.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

import aflow

ROOT = Path(aflow.__file__).parent

LAYERS: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    # (layer, rank, its modules: each with the modules under it, "aflow" alone excepted)
    ("errors", 0, ("aflow.errors",)),
    ("kernels", 1, ("aflow.kernels",)),
    ("runtime", 2, ("aflow._core", "aflow.stats", "aflow.policies", "aflow._aio")),
    ("abc", 3, ("aflow.abc",)),
    ("codecs", 4, ("aflow.codecs",)),
    ("flow", 5, ("aflow.flow",)),
    ("stages", 6, ("aflow.stages",)),
    ("sources", 7, ("aflow.sources",)),
    ("sinks", 7, ("aflow.sinks",)),
    ("connectors", 7, ("aflow.connectors",)),
    (
        "front",
        8,
        ("aflow", "aflow.__main__", "aflow.cli", "aflow.monitor", "aflow.testing", "aflow.demo"),
    ),
)

OPTIONAL = frozenset(
    {
        "pyarrow",
        "orjson",
        "rich",
        "prometheus_client",
        "trio",
        "PIL",
        "imagecodecs",
        "redis",
        "nats",
        "zstandard",
    }
)
"""The packages of aflow's extras (arrow, json, cli, trio, images, images-fast, redis,
nats, zstd): imported inside a function, on first use, behind a guard."""

ON_FIRST_USE = frozenset({"hashlib", "sqlite3"})
"""Standard-library modules imported where they are used: each loads a shared library
(OpenSSL's digests, SQLite) that cost every process ~1 MiB of resident memory (measured
with NumPy and pyarrow loaded), for a path most runs never take (a checkpoint store and
its flow's fingerprint; file fingerprints take blake2b from ``_blake2``, without
OpenSSL). With ``OPTIONAL``, the only imports allowed inside a function."""


@dataclass(frozen=True)
class Import:
    """One import statement's target inside aflow (or its top-level package outside)."""

    importer: str
    target: str
    line: int
    in_function: bool
    type_checking: bool  # under ``if TYPE_CHECKING:``: never runs

    def __str__(self) -> str:
        return f"{self.importer} (line {self.line}) imports {self.target}"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = ROOT.parent.joinpath(*name.split("."))
    # a compiled module (codecs/_logscan.c) imports nothing of aflow's
    suffixes = (".py", ".c")
    return any(path.with_suffix(s).is_file() for s in suffixes) or (path / "__init__.py").is_file()


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, package: str) -> None:
        self.module, self.package = module, package
        self.found: list[Import] = []
        self.depth = 0  # functions we are in
        self.guarded = 0  # ``if TYPE_CHECKING:`` blocks we are in

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        guard = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        )
        self.guarded += guard
        for child in node.body:
            self.visit(child)
        self.guarded -= guard
        for child in node.orelse:
            self.visit(child)

    def _add(self, target: str, node: ast.stmt) -> None:
        self.found.append(
            Import(self.module, target, node.lineno, self.depth > 0, self.guarded > 0)
        )

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            parts = self.package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1])
            base = f"{base}.{node.module}" if node.module else base
        else:
            base = node.module or ""
        for alias in node.names:  # ``from . import x`` may name a module
            sub = f"{base}.{alias.name}"
            self._add(sub if base.startswith("aflow") and is_module(sub) else base, node)


@cache
def all_imports() -> tuple[Import, ...]:
    found: list[Import] = []
    for path in sorted(ROOT.rglob("*.py")):
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        collector = _Collector(name, package)
        collector.visit(ast.parse(path.read_text(), str(path)))
        found.extend(collector.found)
    return tuple(dict.fromkeys(found))  # one per target of a statement


def internal_imports() -> list[Import]:
    return [i for i in all_imports() if i.target == "aflow" or i.target.startswith("aflow.")]


def modules() -> list[str]:
    return sorted(module_name(p) for p in ROOT.rglob("*.py"))


def layer_of(module: str) -> tuple[str, int]:
    best: tuple[int, str, int] | None = None
    for layer, rank, prefixes in LAYERS:
        for prefix in prefixes:
            inside = module == prefix or (prefix != "aflow" and module.startswith(prefix + "."))
            if inside and (best is None or len(prefix) > best[0]):
                best = (len(prefix), layer, rank)
    if best is None:
        raise LookupError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return best[1], best[2]


def test_every_module_has_a_layer() -> None:
    for module in modules():
        layer_of(module)


def test_imports_point_down() -> None:
    wrong = []
    for imp in internal_imports():
        (layer, rank), (to_layer, to_rank) = layer_of(imp.importer), layer_of(imp.target)
        if to_rank < rank or to_layer == layer:
            continue
        wrong.append(
            f"{imp} from the {to_layer} layer (rank {to_rank}), above or beside its own "
            f"{layer} layer (rank {rank})"
        )
    assert wrong == [], "imports must point down:\n" + "\n".join(wrong)


def test_no_imports_inside_functions_but_optional_extras() -> None:
    wrong = [
        f"{imp} inside a function"
        for imp in all_imports()
        if imp.in_function and imp.target.split(".")[0] not in OPTIONAL | ON_FIRST_USE
    ]
    assert wrong == [], "move these imports to the top of their module:\n" + "\n".join(wrong)


_READ_A_FILE = """
import sys, aflow
heavy = set(sys.argv[2:])
print(sorted(heavy & set(sys.modules)))
aflow.run(aflow.read_lines(sys.argv[1]) | aflow.collect())  # fingerprints the file
print(sorted(heavy & set(sys.modules)))
"""


def test_importing_aflow_and_reading_a_file_load_no_module_imported_on_first_use(
    tmp_path: Path,
) -> None:
    path = tmp_path / "lines.txt"
    path.write_text("a\nb\n")
    heavy = sorted(ON_FIRST_USE | {"zstandard", "_hashlib"})
    out = subprocess.run(
        [sys.executable, "-c", _READ_A_FILE, str(path), *heavy],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split("\n")[:2] == ["[]", "[]"]


def module_graph() -> dict[str, set[str]]:
    """Module -> the aflow modules it imports, anywhere in it (a module's parent packages
    are loaded first by Python itself: they are not edges)."""
    graph: dict[str, set[str]] = {m: set() for m in modules()}
    for imp in internal_imports():
        if imp.target != imp.importer:
            graph[imp.importer].add(imp.target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as a path (first node repeated at its end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_no_import_cycles() -> None:
    cycle = find_cycle(module_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_kernels_use_only_numpy_and_the_standard_library() -> None:
    wrong = [
        str(imp)
        for imp in all_imports()
        if imp.importer.startswith("aflow.kernels")
        and imp.target.split(".")[0] not in {"numpy", "__future__", *sys.stdlib_module_names}
        and imp.target != "aflow.errors"
        and not imp.target.startswith("aflow.kernels")
    ]
    assert wrong == []


def test_layers_catch_an_import_pointing_up() -> None:
    assert layer_of("aflow.stages.windows") == ("stages", 6)
    assert layer_of("aflow.sinks.aggregate")[1] > layer_of("aflow.stages._panes")[1]
    assert layer_of("aflow.sources.files")[1] == layer_of("aflow.sinks.files")[1]
    assert layer_of("aflow") == ("front", 8)
    with pytest.raises(LookupError, match="in no layer"):
        layer_of("aflow_other.module")


_IMPORT_ALONE = """
import importlib, json, sys, types
root, names = sys.argv[1], sys.argv[2:]
stub = types.ModuleType("aflow")  # the package without its __init__, which imports it all
stub.__path__ = [root]
loaded = {}
for name in names:
    for key in [k for k in sys.modules if k.startswith("aflow.")]:
        del sys.modules[key]
    sys.modules["aflow"] = stub
    importlib.import_module(name)
    loaded[name] = sorted(k for k in sys.modules if k.startswith("aflow."))
print(json.dumps(loaded))
"""


@cache
def codecs_alone() -> dict[str, list[str]]:
    """Each codecs module imported by itself, in a fresh interpreter: what it loads."""
    names = [m for m in modules() if m == "aflow.codecs" or m.startswith("aflow.codecs.")]
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALONE, str(ROOT), *names],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, list[str]] = json.loads(out)
    return result


@pytest.mark.parametrize(
    "module", [m for m in modules() if m == "aflow.codecs" or m.startswith("aflow.codecs.")]
)
def test_codecs_import_without_the_flow_or_stages(module: str) -> None:
    loaded = codecs_alone()[module]
    above = [m for m in loaded if layer_of(m)[1] > layer_of("aflow.codecs")[1]]
    assert above == [], f"importing {module} loads {above}"
