"""Data flows one way: no package imports one above it (docs/architecture.md).

The layers follow the data: pipelines (raw dumps to TFRecords, and the text
contract both sides read), tasks (seqio), trainer, evaluator, experiments.
Every import is found by walking each module's syntax tree, imports inside
functions included, so a lazy import cannot hide an upward one.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
LAYERS = ("pipelines", "tasks", "trainer", "evaluator", "experiments")
# Never imported by the packages above: tools and tests sit on top of all.
TOP_LEVEL = ("benchmarks", "scripts", "tests")


def imported_packages(path: pathlib.Path) -> set[str]:
  """The top-level names that the module at `path` imports."""
  tree = ast.parse(path.read_text(), filename=str(path))
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name.split(".")[0] for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names.add(node.module.split(".")[0])
  return names


def upward_imports(root: pathlib.Path) -> list[str]:
  """"module -> package" for every import of a higher layer or a tool."""
  found = []
  for rank, layer in enumerate(LAYERS):
    forbidden = set(LAYERS[rank + 1:]) | set(TOP_LEVEL)
    for path in sorted((root / layer).rglob("*.py")):
      for package in sorted(imported_packages(path) & forbidden):
        found.append(f"{path.relative_to(root)} -> {package}")
  return found


def test_no_package_imports_a_higher_layer():
  assert upward_imports(ROOT) == []


def test_the_walk_finds_an_upward_import_inside_a_function(tmp_path):
  for layer in LAYERS:
    (tmp_path / layer).mkdir()
  (tmp_path / "tasks" / "fine.py").write_text("from pipelines import cli\n")
  (tmp_path / "pipelines" / "bad.py").write_text(
      "def f():\n  from trainer import models\n  import tests.helpers\n")
  assert upward_imports(tmp_path) == ["pipelines/bad.py -> tests",
                                      "pipelines/bad.py -> trainer"]


@pytest.mark.parametrize("source, expected", [
    ("import tasks.vocab as v\n", {"tasks"}),
    ("from . import sibling\n", set()),
    ("from evaluator.metrics import ndcg\n", {"evaluator"}),
])
def test_imported_packages(tmp_path, source, expected):
  path = tmp_path / "m.py"
  path.write_text(source)
  assert imported_packages(path) == expected
