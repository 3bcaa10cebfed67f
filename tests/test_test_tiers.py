"""The fast tier (`scripts/test --fast`) leaves out Beam pipelines and Lucene.

A static check, reading the test modules' syntax trees: a test that builds a
Beam pipeline (`beam.Pipeline`, `TestPipeline`) or a Lucene analyzer or
index in the pytest process, itself or through a fixture or helper function
of its module, must be marked `slow`. Pipelines that a test starts through a
job's `run` function are not seen here; those tests are marked by hand.
"""

import ast
import pathlib

import pytest

TESTS_DIR = pathlib.Path(__file__).resolve().parent
# Attribute names whose call builds a Beam pipeline or starts the JVM.
HEAVY_CALLS = frozenset({"Pipeline", "TestPipeline", "LuceneBM25",
                         "LuceneAnalyzer", "start_jvm"})


def _called_names(function):
  """The names a function calls: `f(...)` gives f, `a.b.f(...)` gives f."""
  names = set()
  for node in ast.walk(function):
    if isinstance(node, ast.Call):
      if isinstance(node.func, ast.Name):
        names.add(node.func.id)
      elif isinstance(node.func, ast.Attribute):
        names.add(node.func.attr)
  return names


def _is_slow_mark(node):
  """Whether an expression is `pytest.mark.slow`, called or not."""
  if isinstance(node, ast.Call):
    node = node.func
  return (isinstance(node, ast.Attribute) and node.attr == "slow" and
          isinstance(node.value, ast.Attribute) and node.value.attr == "mark")


def _module_is_slow(tree):
  for node in tree.body:
    if (isinstance(node, ast.Assign) and
        any(isinstance(t, ast.Name) and t.id == "pytestmark"
            for t in node.targets)):
      values = (node.value.elts if isinstance(node.value, (ast.List, ast.Tuple))
                else [node.value])
      if any(_is_slow_mark(value) for value in values):
        return True
  return False


def unmarked_heavy_tests(source):
  """Names of the tests in `source` that build pipelines or Lucene unmarked."""
  tree = ast.parse(source)
  if _module_is_slow(tree):
    return []
  functions = {node.name: node for node in tree.body
               if isinstance(node, ast.FunctionDef)}
  heavy = {}

  def is_heavy(name, seen):
    if name in heavy:
      return heavy[name]
    if name in seen or name not in functions:
      return False
    seen = seen | {name}
    function = functions[name]
    # Fixtures arrive as arguments, helpers as calls.
    uses = _called_names(function) | {a.arg for a in function.args.args}
    result = bool(uses & HEAVY_CALLS) or any(is_heavy(use, seen)
                                              for use in uses)
    heavy[name] = result
    return result

  return [name for name, function in functions.items()
          if name.startswith("test_") and is_heavy(name, frozenset()) and
          not any(_is_slow_mark(d) for d in function.decorator_list)]


def test_the_check_sees_fixtures_helpers_and_marks():
  source = '''
import pytest

@pytest.fixture
def index():
  return lucene.LuceneBM25([], "x")

def _helper():
  with beam.Pipeline() as p:
    pass

def test_fixture(index):
  pass

def test_helper():
  _helper()

@pytest.mark.slow
def test_marked(index):
  pass

def test_light():
  pass
'''
  assert unmarked_heavy_tests(source) == ["test_fixture", "test_helper"]
  slow_module = source + "\npytestmark = pytest.mark.slow\n"
  assert unmarked_heavy_tests(slow_module) == []


@pytest.mark.parametrize("path", sorted(TESTS_DIR.glob("test_*.py")),
                         ids=lambda path: path.name)
def test_tests_that_build_pipelines_or_lucene_are_marked_slow(path):
  assert unmarked_heavy_tests(path.read_text(encoding="utf-8")) == [], (
      f"{path.name}: mark these @pytest.mark.slow (see pytest.ini)")
