"""Imports run one way: every module of src/larp sits in a layer and imports only from its own layer or below,
and the import graph has no cycle. Function-level imports count (a late import does not make a cycle go away);
imports under ``if TYPE_CHECKING:`` do not run and are not counted."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# lowest first; a module belongs to the longest prefix listed (a package name covers its submodules)
LAYERS: list[tuple[str, ...]] = [
    # utilities: no model, no data format, no parameters
    ("larp", "larp.files", "larp.provenance", "larp.preemption", "larp.seeding", "larp.download", "larp.weights",
     "larp.devices"),
    # the parameters and the stage table: everything reads them, they read nothing of the package
    ("larp.config", "larp.pipeline"),
    ("larp.data",),
    ("larp.models",),
    ("larp.losses", "larp.visualize", "larp.eval"),
    ("larp.train",),
    # stage modules: one per `larp <command>` family
    ("larp.tokenize", "larp.sample", "larp.fvd", "larp.rfvd", "larp.evaluate", "larp.convert"),
    ("larp.run_report", "larp.report", "larp.html_page"),
    ("larp.launch", "larp.stages", "larp.cli"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((SRC / "larp").rglob("*.py"))}


def layer(module: str) -> int:
    best, found = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, found = len(name), i
    assert found is not None, f"{module}: in no layer of LAYERS; add it where it belongs"
    return found


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _walk(node: ast.AST):
    for child in ast.iter_child_nodes(node):
        if _type_checking_only(child):
            yield from (n for orelse in child.orelse for n in _walk_all(orelse))
            continue
        yield child
        yield from _walk(child)


def _walk_all(node: ast.AST):
    yield node
    yield from _walk(node)


def imports(module: str) -> set[str]:
    """The package modules ``module`` imports (``from pkg import sub`` names the submodule pkg.sub)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in _walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            found |= {f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in MODULES}
    return {m for m in found if m in MODULES and m != module}


GRAPH = {m: imports(m) for m in MODULES}


def test_every_module_has_a_layer():
    for m in MODULES:
        layer(m)


def test_no_import_from_a_higher_layer():
    upward = [f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
              for m, deps in GRAPH.items() for d in sorted(deps) if layer(d) > layer(m)]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    cycles = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(GRAPH[m]):
            if state.get(d) == 1:
                cycles.append(" -> ".join(path[path.index(d):] + [d]))
            elif d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_late_and_relative_imports():
    # the test itself must be able to fail: a function-level import and a relative import are found
    src = "def f():\n    from larp.sample import generate\nfrom . import layers\nfrom .svq import SVQ\n"
    tree = ast.parse(src)
    names = {n.module for n in _walk(tree) if isinstance(n, ast.ImportFrom)}
    assert names == {"larp.sample", None, "svq"}
    assert layer("larp.models.generator") < layer("larp.sample")
    assert "larp.models.weights_io" in GRAPH["larp.models.tokenizer"]  # `from larp.models.weights_io import`
    assert "larp.data.tokens" in GRAPH["larp.train.generator"]


# ---- every stage depends on the code it runs (larp.pipeline.STAGES lists it for both workflows) ----

# the modules a stage's command runs (larp.stages calls into them)
ENTRY = {
    "download": {"embedded": ("larp.data.embedded", "larp.data.index"), "ucf101": ("larp.data.ucf101",),
                 "k600": ("larp.data.k600",)},
    "extract": ("larp.data.extract",),
    "train_tokenizer": ("larp.train.tokenizer",),
    "tokenize": ("larp.tokenize",), "tokenize_fp": ("larp.tokenize",),
    "train_ar": ("larp.train.generator",), "train_ar_fp": ("larp.train.generator",),
    "sample": ("larp.sample",), "sample_fp": ("larp.sample",),
    "fvd_real": ("larp.fvd",), "fvd_real_fp": ("larp.fvd",), "fvd": ("larp.fvd",), "fvd_fp": ("larp.fvd",),
    "rfvd": ("larp.rfvd",),
    "report": ("larp.report", "larp.run_report"),
    "import_released": ("larp.convert",),
}
# not listed as stage code: file and provenance helpers, downloads of pinned files, the default device, and the
# parameter code
# (the parameters themselves are tracked per group, larp.pipeline.tracked_params)
UNTRACKED = {"larp", "larp.files", "larp.provenance", "larp.preemption", "larp.download", "larp.weights",
             "larp.devices", "larp.config", "larp.pipeline"}


def closure(modules) -> set[str]:
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += GRAPH[m]
    return seen


def test_every_stage_lists_the_code_it_imports():
    from larp.pipeline import STAGES, code

    assert set(ENTRY) == set(STAGES)
    root = SRC.parent
    missing = []
    for stage, entry in ENTRY.items():
        for dataset in ("embedded", "ucf101", "k600"):
            modules = entry[dataset] if isinstance(entry, dict) else entry
            listed = [root / c for c in code(stage, dataset)]
            for m in sorted(closure(modules) - UNTRACKED):
                path = MODULES[m]
                if path.name == "__init__.py":  # a package's re-exports; its modules are checked themselves
                    continue
                if not any(path == p or p in path.parents for p in listed):
                    missing.append(f"{stage} ({dataset}) runs {path.relative_to(root)}")
    assert not missing, "\n".join(sorted(set(missing)))
