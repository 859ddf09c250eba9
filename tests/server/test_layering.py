"""The dependency rule of docs/architecture.md, checked on the import graph.

Every module of ``inference_server`` is parsed (``ast``, nothing is imported) and each import of
another part of the server — module level, inside a function, or under ``TYPE_CHECKING`` — becomes
an edge between *units*: a package (``store``, ``pipeline``, ...) or a top-level module
(``config``, ``schemas``, ...). ``ALLOWED`` is the layer table: the only edges there may be.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import inference_server

PACKAGE = Path(inference_server.__file__).resolve().parent

#: What every layer may use: the contract's types, settings, leaf telemetry (metrics, GPU) and
#: small helpers that import nothing of the server. ``inference_server`` is the package itself
#: (``__version__``).
BASE = frozenset(
    {
        "inference_server",
        "schemas",
        "config",
        "telemetry",
        "clock",
        "timerange",
        "decode_budget",
        "jpeg",
        "buffers",
        "registry",
        "event_loop",
        "logging_setup",
    }
)

#: unit → the units it may import. Top to bottom: the wiring, the API and status beside it, the
#: stages (ingest, pipeline, publish), the queue, the store, the model and MQTT layers, the domain
#: types, the base.
ALLOWED: dict[str, frozenset[str]] = {
    # The wiring and the entry points: everything below them.
    "__main__": frozenset({"server", "demo", "store"}) | BASE,
    "demo": frozenset({"server", "store", "comms", "demo_assets"}) | BASE,
    "server": frozenset(
        {
            "api",
            "status",
            "ingest",
            "pipeline",
            "publish",
            "jobs",
            "store",
            "detection",
            "embedding",
            "reasoning",
            "comms",
            "reports",
        }
    )
    | frozenset({"domain"})
    | BASE,
    # Only the wiring imports the API.
    "api": frozenset({"status", "ingest", "jobs", "store", "comms", "domain", "reports"}) | BASE,
    "status": frozenset({"jobs", "store", "domain"}) | BASE,
    # The stages of one image's journey.
    "ingest": frozenset({"jobs", "store", "comms", "domain"}) | BASE,
    "pipeline": frozenset({"jobs", "store", "detection", "embedding", "reasoning", "comms", "domain"}) | BASE,
    "publish": frozenset({"store", "comms", "domain"}) | BASE,
    # Reports made from stored events (the digest): read the store, publish through the outbox.
    "reports": frozenset({"store", "comms", "domain"}) | BASE,
    "jobs": frozenset({"store", "domain"}) | BASE,
    "store": frozenset({"domain"}) | BASE,
    # Models and MQTT: used by the stages, never using them.
    "detection": frozenset({"domain"}) | BASE,
    "embedding": frozenset({"domain"}) | BASE,
    "reasoning": frozenset({"domain"}) | BASE,
    "comms": BASE,
    "domain": frozenset({"schemas"}),
    # The base: leaves.
    "telemetry": frozenset({"schemas"}),
    "inference_server": frozenset(),
    "schemas": frozenset(),
    "config": frozenset(),
    "clock": frozenset(),
    "timerange": frozenset(),
    "decode_budget": frozenset(),
    "jpeg": frozenset(),
    "buffers": frozenset(),
    "registry": frozenset(),
    "event_loop": frozenset(),
    "logging_setup": frozenset(),
    "demo_assets": frozenset(),
}


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    #: ``path:line`` of the import, for the failure message.
    where: str

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.where})"


def _units(package: Path) -> set[str]:
    """The top-level units of ``package``: its subpackages and its modules."""
    return {p.stem for p in package.glob("*.py") if p.stem != "__init__"} | {
        p.parent.name for p in package.glob("*/__init__.py")
    }


def _module_name(path: Path, package: Path) -> list[str]:
    parts = [package.name, *path.relative_to(package).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def import_graph(package: Path) -> Iterator[Edge]:
    """Every import between two different units of ``package`` (a source tree, not imported)."""
    name = package.name
    units = _units(package)

    def unit_of(dotted: str) -> str | None:
        parts = dotted.split(".")
        if parts[0] != name:
            return None
        return parts[1] if len(parts) > 1 else name

    for path in sorted(package.rglob("*.py")):
        module = _module_name(path, package)
        source_unit = module[1] if len(module) > 1 else name
        # ``package/x/__init__.py`` is ``package.x``; a relative import starts from its package.
        here = module if path.name == "__init__.py" else module[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[: len(here) - node.level + 1]) if node.level else ""
                dotted = ".".join(p for p in (base, node.module or "") if p)
                if dotted == name:
                    # ``from inference_server import schemas`` names a unit; ``__version__`` the root.
                    targets = [f"{name}.{a.name}" if a.name in units else name for a in node.names]
                else:
                    targets = [dotted]
            for target in targets:
                target_unit = unit_of(target)
                if target_unit is not None and target_unit != source_unit:
                    where = f"{path.relative_to(package.parent)}:{node.lineno}"
                    yield Edge(source_unit, target_unit, where)


def violations(edges: Iterator[Edge], allowed: Mapping[str, frozenset[str]]) -> list[Edge]:
    """The edges the table does not allow (a unit missing from the table allows nothing)."""
    return [e for e in edges if e.target not in allowed.get(e.source, frozenset())]


def test_imports_follow_the_layer_table() -> None:
    assert [str(e) for e in violations(import_graph(PACKAGE), ALLOWED)] == []


def test_every_unit_has_a_row_in_the_layer_table() -> None:
    # A new package or top-level module must be placed in a layer on purpose.
    assert sorted(_units(PACKAGE) - set(ALLOWED)) == []
    assert sorted(set(ALLOWED) - _units(PACKAGE) - {"inference_server"}) == []


def test_the_layer_table_has_no_cycle() -> None:
    # Allowing a back-edge in the table (pipeline -> api, store -> jobs) would make one.
    done: set[str] = set()

    def visit(unit: str, path: tuple[str, ...]) -> None:
        assert unit not in path, f"cycle: {' -> '.join((*path, unit))}"
        if unit in done:
            return
        for below in ALLOWED[unit]:
            visit(below, (*path, unit))
        done.add(unit)

    for unit in ALLOWED:
        visit(unit, ())


def test_nothing_but_the_wiring_imports_the_api() -> None:
    assert sorted(unit for unit, below in ALLOWED.items() if "api" in below) == ["server"]


def _write(root: Path, files: Mapping[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "inference_server"


def test_a_back_edge_is_reported(tmp_path: Path) -> None:
    # A synthetic tree shaped like the server, with the store reaching up into the pipeline
    # inside a function (where a cycle hides best) and the domain importing the store.
    package = _write(
        tmp_path,
        {
            "inference_server/__init__.py": '__version__ = "0"\n',
            "inference_server/schemas.py": "",
            "inference_server/domain.py": (
                "from inference_server.schemas import *\nfrom inference_server.store import events\n"
            ),
            "inference_server/store/__init__.py": "",
            "inference_server/store/events.py": (
                "from inference_server import __version__, schemas\n"
                "from inference_server.domain import *\n\n"
                "def f():\n"
                "    from inference_server.pipeline.result import ResultStage\n"
            ),
            "inference_server/pipeline/__init__.py": "",
            "inference_server/pipeline/result.py": (
                "from inference_server.store import events\nfrom ..domain import *\nfrom . import result\n"
            ),
        },
    )
    found = violations(import_graph(package), ALLOWED)
    assert [(e.source, e.target, e.where) for e in found] == [
        ("domain", "store", "inference_server/domain.py:2"),
        ("store", "pipeline", "inference_server/store/events.py:5"),
    ]


def test_the_real_tree_with_a_back_edge_fails(tmp_path: Path) -> None:
    # The same check on a copy of the real package with one upward import added to the store.
    copy = tmp_path / "inference_server"
    for path in PACKAGE.rglob("*.py"):
        target = copy / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    store_events = copy / "store" / "events.py"
    upward = "\n\ndef _up() -> None:\n    from inference_server.api import deps\n"
    store_events.write_text(store_events.read_text(encoding="utf-8") + upward, encoding="utf-8")
    assert violations(import_graph(PACKAGE), ALLOWED) == []
    found = [(e.source, e.target) for e in violations(import_graph(copy), ALLOWED)]
    assert found == [("store", "api")]
