"""The package's layers (docs/architecture.md): every import of a plm_lightning module points to its own layer or
one below it, and the cores (the methods: manifold, stml; retrieval) import no Lightning. Read from the source
(function-level imports included; imports under ``if TYPE_CHECKING:`` are type hints and do not count)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "src" / "plm_lightning"
# Bottom to top, as docs/architecture.md draws them.
LAYERS = (
    "utils",
    "manifold",
    "stml",
    "retrieval",
    "data",
    "models",
    "config",
    "figures",
    "callbacks",
    "orchestration",
    "analysis",
    "cli",
)
ORCHESTRATION = ("experiment", "run_directory", "checkpoints")
CORES = ("manifold", "stml", "retrieval")


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "plm_lightning" or len(parts) < 2:
        return None
    return "orchestration" if parts[1] in ORCHESTRATION else parts[1]


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return skipped


def imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    skipped = _type_checking_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
    return found


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts == ("__init__",):
            continue
        yield "plm_lightning." + ".".join(p for p in parts if p != "__init__"), path


def test_every_module_belongs_to_a_layer():
    assert {layer_of(name) for name, _ in modules()} == set(LAYERS)


@pytest.mark.parametrize("name, path", list(modules()), ids=lambda v: v if isinstance(v, str) else "")
def test_imports_point_down_the_layers(name, path):
    own = LAYERS.index(layer_of(name))
    upward = [
        f"{target} (line {line})"
        for target, line in imports(path)
        if layer_of(target) is not None and LAYERS.index(layer_of(target)) > own
    ]
    assert not upward, f"{name} ({layer_of(name)}) imports from above: {', '.join(upward)}"


@pytest.mark.parametrize("core", CORES)
def test_the_cores_import_no_lightning(core):
    for path in (PACKAGE / core).rglob("*.py"):
        for target, line in imports(path):
            assert target.split(".")[0] not in ("lightning", "pytorch_lightning"), f"{path}:{line} imports {target}"
            if target.startswith("plm_lightning.utils"):  # the only utils a core may use: plain file helpers
                assert target == "plm_lightning.utils.io", f"{path}:{line} imports {target}"
