"""The package's shape, enforced: stage knowledge lives in `config/` (and the builders that
implement each stage), so no other module compares stage names; and the modules import each other
without cycles, counting imports inside functions (an import moved into a function to dodge a cycle
is still a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

from llmft.config.stage import STAGES

PACKAGE = Path(__file__).parents[1] / "llmft"
#: Where stage names may be spelled out: the schema (and its traits) and the per-stage builders.
STAGE_HOMES = ("config", "builders")
#: Strings that are not stage names although they spell one: the `kto` record layout (`data.*.format`).
NOT_STAGES = {("data/formats.py", "kto")}


def _strings(node: ast.AST) -> list[str]:
    """String constants in an expression, looking into tuples, lists and sets."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for element in node.elts for s in _strings(element)]
    return []


def stage_name_uses(source: str) -> list[tuple[int, str]]:
    """(line, stage name) for every comparison with a stage name (`==`, `!=`, `in`, `match` cases)
    and every stage name used as a dict key."""
    found = []
    for node in ast.walk(ast.parse(source)):
        operands: list[ast.AST] = []
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
        elif isinstance(node, ast.Dict):
            operands = [k for k in node.keys if k is not None]
        elif isinstance(node, ast.MatchValue):
            operands = [node.value]
        found += [(node.lineno, s) for operand in operands for s in _strings(operand) if s in STAGES]
    return found


def test_the_checker_finds_what_it_should():
    sample = 'if stage.name == "dpo": pass\nok = name in ("grpo", "x")\nT = {"rm": 1}\nf(return_tensors="pt")\n'
    assert stage_name_uses(sample) == [(1, "dpo"), (2, "grpo"), (3, "rm")]


def test_no_stage_name_comparisons_outside_config_and_builders():
    leaks = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in STAGE_HOMES:
            continue
        leaks += [
            f"llmft/{relative}:{line}: {name!r}"
            for line, name in stage_name_uses(path.read_text())
            if (str(relative), name) not in NOT_STAGES
        ]
    assert not leaks, "stage knowledge outside config/ and builders/ (read the stage's traits instead):\n" + "\n".join(leaks)


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports_of(name: str, path: Path, names: dict[str, Path]) -> set[str]:
    """The llmft modules `name` imports anywhere in its file: at the top, inside functions, under
    TYPE_CHECKING, or by `importlib.import_module` (a constant name, or an f-string's constant prefix,
    which stands for every module under it)."""

    def owner(dotted: str) -> str | None:  # the module a dotted name lives in
        while dotted and dotted not in names:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {owner(a.name) for a in node.names if a.name.startswith("llmft")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if base.startswith("llmft"):
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in names else owner(base) for a in node.names}
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and str(arg.value).startswith("llmft"):
                found.add(owner(arg.value))
            elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                prefix = str(arg.values[0].value)
                found |= {n for n in names if n.startswith(prefix)} if prefix.startswith("llmft") else set()
    return {m for m in found if m and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_cycles_through_function_level_imports(tmp_path):
    names = {"llmft.a": tmp_path / "a.py", "llmft.b": tmp_path / "b.py", "llmft.c": tmp_path / "c.py"}
    names["llmft.a"].write_text("from llmft.b import x\n")
    names["llmft.b"].write_text("def f():\n    from llmft import c\n")
    names["llmft.c"].write_text("import importlib\nimportlib.import_module('llmft.a')\n")
    graph = {n: imports_of(n, p, names) for n, p in names.items()}
    assert graph == {"llmft.a": {"llmft.b"}, "llmft.b": {"llmft.c"}, "llmft.c": {"llmft.a"}}
    assert cycles(graph) == [["llmft.a", "llmft.b", "llmft.c"]]


def test_no_import_cycles():
    names = module_names()
    graph = {name: imports_of(name, path, names) for name, path in names.items()}
    assert "llmft.builders.dpo" in graph["llmft.builders"]  # the builders are imported by name
    found = cycles(graph)
    assert not found, "import cycles (move the shared piece down a layer):\n" + "\n".join(" <-> ".join(c) for c in found)
