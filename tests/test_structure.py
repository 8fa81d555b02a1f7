"""The layout's rules, checked on the source with ``ast`` (see gateway/__init__.py).

* no import circles between modules (imports inside functions and under ``TYPE_CHECKING``
  count: they are how a circle hides);
* no arrow that runs against the data flow: a gateway room imports only rooms of a lower rank;
* no ``_private`` name imported from another module, in gateway/, keys/ or redaction/;
* the gateway reaches ``keys`` and ``redaction`` only through their packages' ``__all__``;
* every gateway package's ``__init__`` says what the stage does and what it may import;
* the command line starts without aiortc (``redact`` must not pay for WebRTC).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gateway", "keys", "redaction")
#: gateway rooms by rank: a room may import only rooms of a lower rank (and its own modules)
RANK = {"faults": -1, "frames": 0, "config": 0, "http": 0, "sealing": 0, "openbao": 0, "limits": 0, "cluster": 1, "files": 1, "storage": 1, "webrtc": 1, "roster": 1, "ingest": 2, "egress": 2, "state": 2,
        "live": 3, "api": 4, "cli": 5}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import anywhere in ``module``."""
    tree = ast.parse(MODULES[module].read_text("utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in MODULES:
                    found.append((submodule, None, node.lineno))
                else:
                    found.append((source, alias.name, node.lineno))
    return found


def _ours(name: str) -> str | None:
    """The module of ours an import names (the longest known prefix), or None for third parties."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in MODULES:
            return ".".join(parts)
        parts.pop()
    return None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        graph[module] = {target for name, _, _ in _imports(module) if (target := _ours(name)) and target != module}
    return graph


def test_no_import_circles():
    graph = _graph()
    index, low, stack, on_stack, circles, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in graph:
        if node not in index:
            visit(node)
    assert circles == []


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "gateway" and len(parts) > 1 else None


def test_rooms_import_only_lower_ranks():
    assert set(RANK) == {p.stem if p.is_file() else p.name for p in (ROOT / "gateway").iterdir()
                         if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    wrong = []
    for module in MODULES:
        room = _room(module)
        if room is None:
            continue
        for name, _, line in _imports(module):
            target = _ours(name)
            other = _room(target) if target else None
            if other is not None and other != room and RANK[other] >= RANK[room]:
                wrong.append(f"{module}:{line} imports {target} ({other}, rank {RANK[other]} >= {RANK[room]})")
    assert wrong == []


def _package_internal(module: str, source: str) -> bool:
    """A private module's names are its package's internals (redaction/kernels: ``_rows`` shares its
    ``@njit`` bodies with ``_blur``, all behind the public wrappers of ``_api``)."""
    return source.rsplit(".", 1)[-1].startswith("_") and source.rsplit(".", 1)[0] == module.rsplit(".", 1)[0]


def test_no_private_name_imported_across_modules():
    wrong = [f"{module}:{line} imports {name} from {source}"
             for module in MODULES for source, name, line in _imports(module)
             if name is not None and name.startswith("_") and not name.startswith("__") and _ours(source)
             and not _package_internal(module, source)]
    assert wrong == []


def _exported(package: str) -> set[str]:
    tree = ast.parse(MODULES[package].read_text("utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError(f"{package} has no __all__")


def test_gateway_uses_keys_and_redaction_through_their_public_api():
    public = {package: _exported(package) for package in ("keys", "redaction")}
    wrong = []
    for module in (m for m in MODULES if m.startswith("gateway")):
        for source, name, line in _imports(module):
            top = source.split(".")[0]
            if top not in public:
                continue
            if source != top:
                wrong.append(f"{module}:{line} imports {source}, not the {top} package")
            elif name is not None and name not in public[top]:
                wrong.append(f"{module}:{line} imports {name}, which {top}.__all__ does not export")
    assert wrong == []


@pytest.mark.parametrize("package", sorted(m for m, p in MODULES.items()
                                           if m.startswith("gateway.") and p.name == "__init__.py"
                                           and m.count(".") == 1))
def test_each_room_says_what_it_does_and_may_import(package):
    doc = ast.get_docstring(ast.parse(MODULES[package].read_text("utf-8")))
    assert doc and "import" in doc.lower(), f"{package}/__init__.py must say what it may import"


def test_the_command_line_starts_without_webrtc():
    probe = "import sys, gateway.cli; print(sorted(m for m in ('aiortc', 'starlette', 'uvicorn') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
