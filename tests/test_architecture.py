"""The package's shape, enforced: stage knowledge lives in `config/` (and the builders that
implement each stage), so no other module compares stage names."""

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
        leaks += [f"llmft/{relative}:{line}: {name!r}" for line, name in stage_name_uses(path.read_text())
                  if (str(relative), name) not in NOT_STAGES]
    assert not leaks, "stage knowledge outside config/ and builders/ (read the stage's traits instead):\n" + "\n".join(leaks)
