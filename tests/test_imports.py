"""The package's import graph: no cycles, and the layering CONTRIBUTING.md states.

Every module is parsed with `ast` (nothing is imported), counting every import statement,
including those inside functions: a deferred import still closes a cycle when it runs.
`from sapnet_jax.x import y` is an edge to the module sapnet_jax.x.y when that is a module,
else to sapnet_jax.x. Importing a submodule also runs its parent package's __init__, but that
edge is left out: a package's __init__ importing its children is no cycle with a child that
imports a sibling (`sapnet_jax.models.conv`), only with one that imports the package itself.
"""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = "sapnet_jax"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# Commands whose module is the command: no other module may import them (their functions live
# in a library module beside them).
CLI_MODULES = {"main", "derain", "evaluate", "compare", "serve", "data.demo",
               "experiments.__main__"}
# Library modules that also offer a thin `python -m` command over their functions.
TOOL_MODULES = {"convert", "data.prepare", "export", "pretrained"}
# What each module may import from the package, as prefixes of module names (CONTRIBUTING.md).
ONLY = {
    "models": ("models",),
    "metrics": (),
    "config_util": (),
    "losses": ("models", "metrics", "config_util"),
    # Helpers any module may use (shared command-line flags): they import only each other and
    # the path layer, so no module importing them closes a cycle.
    "utils": ("utils", "fileio"),
    # The web app's access rules (Host, Origin, token): plain ASGI over Starlette.
    "serving_access": (),
}
# Lint directives in a comment, which say nothing of why.
LINT = re.compile(r"noqa(:\s*[A-Z]+\d+(,\s*[A-Z]+\d+)*)?|pylint:\s*disable=[\w,-]+|type:\s*ignore\S*")
NEVER = {"data": ("models", "losses", "loss_networks", "train"), "infer": ("train",),
         # The web app takes a built model: loading weights is the `serve` command's job.
         "serving": ("train", "pretrained", "checkpoint", "convert"),
         "serving_batch": ("train", "pretrained", "checkpoint", "convert")}


def module_name(path: Path) -> str:
  rel = path.relative_to(ROOT.parent).with_suffix("")
  parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
  return ".".join(parts)


def parse_modules() -> dict[str, tuple[Path, ast.Module]]:
  return {module_name(p): (p, ast.parse(p.read_text(), str(p))) for p in sorted(ROOT.rglob("*.py"))}


MODULES = parse_modules()


def short(name: str) -> str:
  return name[len(PACKAGE) + 1:] if name.startswith(PACKAGE + ".") else name


def imports(name: str, tree: ast.Module, is_package: bool) -> list[tuple[str, ast.stmt]]:
  """(imported package module, statement) for every import statement in `tree`."""
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found += [(alias.name, node) for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: from the module's package, up level - 1 more
        package = name.split(".") if is_package else name.split(".")[:-1]
        package = package[:len(package) - node.level + 1]
        base = ".".join(package + ([base] if base else []))
      for alias in node.names:
        child = f"{base}.{alias.name}"
        found.append((child if child in MODULES else base, node))
  return [(target, node) for target, node in found
          if target == PACKAGE or target.startswith(PACKAGE + ".")]


def build_graph(modules) -> dict[str, dict[str, ast.stmt]]:
  graph = {}
  for name, (path, tree) in modules.items():
    edges = {}
    for target, node in imports(name, tree, path.name == "__init__.py"):
      if target not in modules:
        raise AssertionError(f"{path}:{node.lineno}: imports {target}, which is no module of "
                             f"{PACKAGE}")
      if target != name:
        edges.setdefault(target, node)
    graph[name] = edges
  return graph


GRAPH = build_graph(MODULES)


def find_cycle(graph) -> list[str] | None:
  """One cycle of `graph` as [a, b, ..., a], or None (iterative DFS, white/grey/black)."""
  state = dict.fromkeys(graph, 0)
  for start in sorted(graph):
    if state[start]:
      continue
    stack, path = [(start, iter(sorted(graph[start])))], [start]
    state[start] = 1
    while stack:
      node, children = stack[-1]
      child = next(children, None)
      if child is None:
        state[node] = 2
        stack.pop()
        path.pop()
      elif state[child] == 1:
        return path[path.index(child):] + [child]
      elif state[child] == 0:
        state[child] = 1
        stack.append((child, iter(sorted(graph[child]))))
        path.append(child)
  return None


def reach(graph, start: str) -> dict[str, list[str]]:
  """Every module `start` imports directly or through others, with one path to it."""
  paths, todo = {start: [start]}, [start]
  while todo:
    node = todo.pop()
    for child in sorted(graph[node]):
      if child not in paths:
        paths[child] = paths[node] + [child]
        todo.append(child)
  del paths[start]
  return paths


def describe(path: list[str]) -> str:
  steps = []
  for a, b in zip(path, path[1:]):
    file, _ = MODULES[a]
    steps.append(f"{short(a)} ({file.relative_to(ROOT.parent)}:{GRAPH[a][b].lineno})")
  return " -> ".join(steps + [short(path[-1])])


def in_group(name: str, prefixes) -> bool:
  s = short(name)
  return any(s == p or s.startswith(p + ".") for p in prefixes)


def test_finds_a_cycle_and_resolves_imports():
  # The checks themselves: a cycle through a deferred import is found, and `from pkg import
  # child` is an edge to the child module.
  tree = ast.parse("import os\ndef f():\n  from sapnet_jax.data import pairs\n")
  assert [t for t, _ in imports("sapnet_jax.x", tree, False)] == ["sapnet_jax.data.pairs"]
  assert find_cycle({"a": {"b": None}, "b": {"c": None}, "c": {"a": None}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b": None}, "b": {}, "c": {"a": None}}) is None


def test_no_import_cycles():
  cycle = find_cycle(GRAPH)
  assert cycle is None, f"import cycle: {describe(cycle)}"


@pytest.mark.parametrize("group", sorted(ONLY))
def test_modules_import_only_what_the_layering_allows(group):
  for name, edges in GRAPH.items():
    if in_group(name, (group,)):
      bad = [t for t in edges if not in_group(t, ONLY[group])]
      assert not bad, (f"{short(name)} may import only {ONLY[group] or 'nothing'} from "
                       f"{PACKAGE}, but imports: " + "; ".join(describe([name, t]) for t in bad))


@pytest.mark.parametrize("group", sorted(NEVER))
def test_modules_never_reach_what_the_layering_forbids(group):
  for name in GRAPH:
    if in_group(name, (group,)):
      bad = [p for t, p in reach(GRAPH, name).items() if in_group(t, NEVER[group])]
      assert not bad, f"{short(name)} must not import {NEVER[group]}: " + "; ".join(
          describe(p) for p in bad)


def test_no_module_imports_a_command_module():
  bad = [describe([name, t]) for name, edges in GRAPH.items() for t in edges
         if short(t) in CLI_MODULES]
  assert not bad, "command modules are imported by no module: " + "; ".join(bad)


def test_every_command_module_is_classified():
  # A new `python -m` command must be put in CLI_MODULES or TOOL_MODULES on purpose.
  commands = {short(name) for name, (path, _) in MODULES.items()
              if '__name__ == "__main__"' in path.read_text()}
  assert commands == CLI_MODULES | TOOL_MODULES


def test_deferred_imports_say_why():
  # An import inside a function hides what a module needs; each one says why on its line or
  # the line above (an optional heavy dependency, start-up time), not only a lint directive.
  missing = []
  for name, (path, tree) in MODULES.items():
    lines = path.read_text().splitlines()
    for func in ast.walk(tree):
      if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
        continue
      for node in ast.walk(func):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
          text = " ".join(lines[node.lineno - 2:node.end_lineno])
          comments = [LINT.sub("", c).strip(" -:()") for c in text.split("#")[1:]]
          if not any(comments):
            missing.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}")
  assert not missing, "deferred imports without a why: " + ", ".join(sorted(set(missing)))
