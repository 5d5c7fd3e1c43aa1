"""The package's shape: its import graph has no cycles and follows the folder order of
CONTRIBUTING.md, the top level holds only commands and documented API, and every folder says
its role and what it may import.

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


PACKAGE = "sapnet_jax"
# The repository root: the nearest folder above this file that holds the package, so the test
# keeps working wherever under tests/ it sits.
REPO = next(p for p in Path(__file__).resolve().parents if (p / PACKAGE / "__init__.py").exists())
ROOT = REPO / PACKAGE

# The layers, bottom to top, as CONTRIBUTING.md lists them: a module may import its own layer
# and those below it. Each is a folder, except `infer`, a top-level module (the documented
# `infer.Derainer`) that evaluation, training and serving build on. The commands at the top
# level form one more layer above all of these.
ORDER = ("utils", "models", "metrics", "weights", "losses", "data", "runtime", "infer",
         "evaluation", "training", "serving", "experiments")
ENTRY = len(ORDER)
# The top level holds what users run or import by name, and nothing else.
MAX_TOP_LEVEL = 10
COMMANDS = {"main", "derain", "evaluate", "compare", "serve", "export", "convert", "pretrained"}
# Documented API at the top level: module -> the names the README documents.
API = {"infer": ("Derainer",), "pretrained": ("load",)}
# `pretrained` is both a command and the documented API: entry points may import it (to load
# weights); library folders import weights.registry, which owns it, and never a command.
IMPORTABLE_COMMANDS = {"pretrained"}
# `python -m` commands inside folders: the module is the command, and no module imports it.
FOLDER_COMMANDS = {"data.demo", "experiments.__main__"}
# Library modules inside folders that also offer a thin `python -m` command over their functions.
FOLDER_TOOLS = {"data.prepare"}
# Folders (or modules) that import less than their place in ORDER allows: {prefix: what they
# may import besides themselves}. What a network computes and how a metric scores depend on
# nothing else; data is read by training, evaluation and the demo alike, so it needs only
# utils; serving decodes images and runs a model it is given, so it needs no losses, scores
# or weights; its access rules (Host, Origin, token) are plain ASGI, checkable alone.
ONLY = {"models": (), "metrics": (), "data": ("utils",),
        "serving": ("utils", "models", "data", "runtime", "infer"), "serving.access_rules": ()}
# What a folder must not reach, directly or through other modules.
# The web app takes a built model: loading weights is the `serve` command's job.
NEVER = {"serving": ("weights", "training", "pretrained")}
# Lint directives in a comment, which say nothing of why.
LINT = re.compile(r"noqa(:\s*[A-Z]+\d+(,\s*[A-Z]+\d+)*)?|pylint:\s*disable=[\w,-]+"
                  r"|type:\s*ignore\S*")
# The sentence of a folder's __init__ docstring that lists what the folder may import.
MAY_IMPORT = re.compile(r"May import:([^.]*)\.")


def module_name(path: Path) -> str:
  rel = path.relative_to(ROOT.parent).with_suffix("")
  parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
  return ".".join(parts)


def parse_modules() -> dict[str, tuple[Path, ast.Module]]:
  return {module_name(p): (p, ast.parse(p.read_text(), str(p))) for p in sorted(ROOT.rglob("*.py"))}


MODULES = parse_modules()


def short(name: str) -> str:
  return name[len(PACKAGE) + 1:] if name.startswith(PACKAGE + ".") else name


def imports(name: str, tree: ast.Module, is_package: bool,
            modules=MODULES) -> list[tuple[str, ast.stmt]]:
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
        found.append((child if child in modules else base, node))
  return [(target, node) for target, node in found
          if target == PACKAGE or target.startswith(PACKAGE + ".")]


def build_graph(modules) -> dict[str, dict[str, ast.stmt]]:
  graph = {}
  for name, (path, tree) in modules.items():
    edges = {}
    for target, node in imports(name, tree, path.name == "__init__.py", modules):
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


def head(name: str) -> str:
  """The folder or top-level module that holds `name`: its first part below the package."""
  return short(name).split(".")[0]


def layer(name: str) -> int | None:
  """Where `name` sits in the order: -1 for the package itself (it imports nothing), ENTRY
  for a top-level command, None for what the order does not place."""
  if name == PACKAGE:
    return -1
  if head(name) in ORDER:
    return ORDER.index(head(name))
  return ENTRY if short(name) in COMMANDS else None


def order_violations(graph) -> list[tuple[str, str]]:
  """(importer, imported) for every edge that points up the order, or sideways between two
  top-level commands (except to one that is importable)."""
  bad = []
  for name, edges in graph.items():
    for target in edges:
      if layer(name) is None or layer(target) is None:
        continue  # test_every_module_has_a_place reports these
      sideways = (layer(name) == layer(target) == ENTRY and name != target
                  and short(target) not in IMPORTABLE_COMMANDS)
      if layer(target) > layer(name) or sideways:
        bad.append((name, target))
  return bad


def only_violations(graph, only=ONLY) -> list[tuple[str, str]]:
  """(importer, imported) for every edge out of a prefix in `only` to what it may not import."""
  return [(name, target) for name, edges in graph.items() for target in edges
          for prefix in only if in_group(name, (prefix,))
          and not in_group(target, only[prefix] + (prefix,))]


def never_violations(graph, never=NEVER) -> list[list[str]]:
  """An import path from a folder in `never` to what it must not reach, for each one found."""
  return [path for name in graph if head(name) in never
          for target, path in reach(graph, name).items() if in_group(target, never[head(name)])]


def command_imports(graph) -> list[tuple[str, str]]:
  """(importer, imported) for every import of a module that is only a command."""
  commands = (COMMANDS - IMPORTABLE_COMMANDS) | FOLDER_COMMANDS
  return [(name, target) for name, edges in graph.items() for target in edges
          if short(target) in commands]


def has_main_guard(text: str) -> bool:
  return re.search(r"""__name__\s*==\s*["']__main__["']""", text) is not None


def defined_names(tree: ast.Module) -> set[str]:
  """Names a module defines or imports at its top level."""
  names = set()
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      names |= {t.id for t in targets if isinstance(t, ast.Name)}
  return names


def top_level_problems(top: dict[str, tuple[str, ast.Module]]) -> list[str]:
  """What is wrong with the package's top-level modules, given {name: (source, tree)}."""
  problems = []
  if len(top) > MAX_TOP_LEVEL:
    problems.append(f"{len(top)} top-level modules, more than {MAX_TOP_LEVEL}: move libraries "
                    "into a role folder")
  for name, (text, tree) in sorted(top.items()):
    if name not in COMMANDS and name not in API:
      problems.append(f"{name}.py is neither a command nor documented API: move it into the "
                      "folder of its role")
    if name in COMMANDS and not (has_main_guard(text) and "main" in defined_names(tree)):
      problems.append(f"{name}.py is a command but has no main() run under "
                      "`if __name__ == \"__main__\"`")
    missing = [n for n in API.get(name, ()) if n not in defined_names(tree)]
    if missing:
      problems.append(f"{name}.py lacks its documented {', '.join(missing)}")
  return problems


def allowed_imports(folder: str) -> set[str]:
  """What a folder's __init__ docstring must list under "May import:"."""
  below = set(ORDER[:ORDER.index(folder)])
  return set(ONLY.get(folder, below)) - set(NEVER.get(folder, ()))


def docstring_problems(folder: str, doc: str | None) -> list[str]:
  """What a folder's __init__ docstring lacks: its role, and a "May import:" sentence that
  names exactly the folders the order lets it import ("nothing" when none)."""
  init = f"{PACKAGE}/{folder}/__init__.py"
  if folder not in ORDER:
    return [f"{init}: the folder has no place in ORDER"]
  if not doc:
    return [f"{init} has no docstring saying its role and what it may import"]
  problems = []
  match = MAY_IMPORT.search(doc)
  role = MAY_IMPORT.sub("", doc)
  if len(role.split()) < 5 or role.strip().rstrip(".").lower() == folder:
    problems.append(f"{init}: the docstring does not say the folder's role")
  if not match:
    return problems + [f"{init}: no \"May import: ...\" sentence"]
  named = set(re.findall(r"\w+", match.group(1))) & set(ORDER)
  if named != allowed_imports(folder):
    problems.append(f"{init} says it may import {sorted(named) or 'nothing'}, the order "
                    f"allows {sorted(allowed_imports(folder)) or 'nothing'}")
  return problems


def folders(root: Path) -> list[Path]:
  """Every folder of the package that holds Python modules."""
  return sorted({p.parent for p in root.rglob("*.py")} - {root})


def deferred_without_why(tree: ast.Module, lines: list[str]) -> list[int]:
  """Line numbers of imports inside functions with no comment (besides a lint directive) on
  their line or the line above."""
  missing = []
  for func in ast.walk(tree):
    if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
      continue
    for node in ast.walk(func):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        text = " ".join(lines[node.lineno - 2:node.end_lineno])
        comments = [LINT.sub("", c).strip(" -:()") for c in text.split("#")[1:]]
        if not any(comments):
          missing.append(node.lineno)
  return sorted(set(missing))


def contributing_order(text: str) -> list[str]:
  """The names CONTRIBUTING.md's numbered list under "Layout and import direction" gives, in
  order: the first `code` span of each item, without a trailing / or .py."""
  section = text.split("## Layout and import direction", 1)[1].split("\n## ", 1)[0]
  items = re.findall(r"^\d+\.\s+(.*)$", section, re.M)
  return [re.sub(r"(/|\.py)$", "", re.search(r"`([^`]+)`", item).group(1)) if "`" in item
          else "" for item in items]


def test_the_checks_can_fail(tmp_path):
  # Each check below on a small made-up package, where it must report what is wrong.
  tree = ast.parse("import os\ndef f():\n  from sapnet_jax.data import pairs\n")
  assert [t for t, _ in imports("sapnet_jax.x", tree, False, {"sapnet_jax.data.pairs": None})] \
      == ["sapnet_jax.data.pairs"]
  assert find_cycle({"a": {"b": None}, "b": {"c": None}, "c": {"a": None}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b": None}, "b": {}, "c": {"a": None}}) is None
  p = PACKAGE + "."
  graph = {p + "models.pdu": {p + "models.ops": None, p + "losses.sapnet": None},  # up
           p + "models.ops": {}, p + "utils.fileio": {}, p + "weights.pth": {},
           p + "losses.sapnet": {}, p + "serving.access_rules": {p + "infer": None},
           p + "infer": {p + "models.pdu": None},
           p + "serving.web_app": {p + "infer": None, p + "training.loop": None},
           p + "training.loop": {p + "weights.pth": None},
           p + "data.pairs": {p + "utils.fileio": None, p + "models.pdu": None},
           p + "derain": {p + "pretrained": None, p + "infer": None},
           p + "serve": {p + "derain": None},  # a command importing a command
           p + "pretrained": {p + "weights.pth": None},
           p + "experiments.plan": {p + "pretrained": None, p + "data.demo": None},
           p + "data.demo": {}}
  assert sorted(order_violations(graph)) == [
      (p + "experiments.plan", p + "pretrained"), (p + "models.pdu", p + "losses.sapnet"),
      (p + "serve", p + "derain")]
  assert sorted(only_violations(graph)) == [
      (p + "data.pairs", p + "models.pdu"), (p + "models.pdu", p + "losses.sapnet"),
      (p + "serving.access_rules", p + "infer"), (p + "serving.web_app", p + "training.loop")]
  assert sorted(map(tuple, never_violations(graph))) == [
      (p + "serving.web_app", p + "training.loop"),
      (p + "serving.web_app", p + "training.loop", p + "weights.pth")]
  assert sorted(command_imports(graph)) == [(p + "experiments.plan", p + "data.demo"),
                                            (p + "serve", p + "derain")]
  assert layer(p + "helpers") is None and layer(p + "serving.web_app") == ORDER.index("serving")
  # The top level: a library module, a command without main, API without its name, too many.
  src = {"main": "def main(argv=None): pass\nif __name__ == '__main__':\n  main()\n",
         "derain": "def run(): pass\n", "infer": "class Tiler: pass\n",
         "helpers": "X = 1\n"}
  problems = top_level_problems({n: (s, ast.parse(s)) for n, s in src.items()})
  assert len(problems) == 3 and all(any(n in q for q in problems) for n in
                                    ("helpers.py", "derain.py", "Derainer"))
  many = {f"m{i}": ("", ast.parse("")) for i in range(MAX_TOP_LEVEL + 1)}
  assert any("more than" in q for q in top_level_problems(many))
  assert top_level_problems({"main": (src["main"], ast.parse(src["main"]))}) == []
  # Folder docstrings: missing, a placeholder, a wrong list; and one that is right.
  assert docstring_problems("runtime", None)
  assert docstring_problems("helpers", "Helpers. May import: nothing.")
  assert len(docstring_problems("runtime", "runtime.")) == 2
  assert len(docstring_problems("data", "Datasets and images, read and written. "
                                "May import: utils, models.")) == 1
  assert docstring_problems("data", "Datasets and images, read and written.\n\n"
                            "May import: utils.") == []
  assert docstring_problems("utils", "Helpers any module may use, at the bottom.\n\n"
                            "May import: nothing else from the package.") == []
  (tmp_path / "pkg" / "sub").mkdir(parents=True)
  (tmp_path / "pkg" / "__init__.py").write_text("")
  (tmp_path / "pkg" / "sub" / "mod.py").write_text("")
  assert folders(tmp_path / "pkg") == [tmp_path / "pkg" / "sub"]
  # Deferred imports: a bare one and one with only a lint directive are reported.
  src = "def f():\n  import a  # heavy, optional\n  x = 1\n  import b\n  import c  # noqa: F401\n"
  assert deferred_without_why(ast.parse(src), src.splitlines()) == [4, 5]
  assert has_main_guard("if __name__ == '__main__':") and not has_main_guard("main()")
  assert contributing_order("## Layout and import direction\n1. `utils/` a\n2. `infer.py` b\n"
                            "3. entry points\n## Next\n1. `x`\n") == ["utils", "infer", ""]


def test_no_import_cycles():
  cycle = find_cycle(GRAPH)
  assert cycle is None, f"import cycle: {describe(cycle)}"


def test_every_module_has_a_place():
  # A new folder or top-level module is placed in ORDER or COMMANDS on purpose.
  unplaced = sorted(short(name) for name in MODULES if layer(name) is None)
  assert not unplaced, f"modules in no layer of ORDER and no command: {unplaced}"


def test_imports_follow_the_folder_order():
  bad = order_violations(GRAPH)
  assert not bad, ("a module imports only its own folder and those below it in ORDER "
                   "(CONTRIBUTING.md): " + "; ".join(describe([a, b]) for a, b in bad))


def test_folders_import_only_what_they_may():
  bad = only_violations(GRAPH)
  assert not bad, f"folders that may import only {ONLY}: " + "; ".join(
      describe([a, b]) for a, b in bad)


def test_folders_never_reach_what_they_must_not():
  bad = never_violations(GRAPH)
  assert not bad, f"must not import, even through others, {NEVER}: " + "; ".join(
      describe(p) for p in bad)


def test_no_module_imports_a_command_module():
  bad = command_imports(GRAPH)
  assert not bad, "command modules are imported by no module: " + "; ".join(
      describe([a, b]) for a, b in bad)


def test_every_command_module_is_classified():
  # A new `python -m` command is put in COMMANDS, FOLDER_COMMANDS or FOLDER_TOOLS on purpose.
  commands = {short(name) for name, (path, _) in MODULES.items()
              if has_main_guard(path.read_text())}
  assert commands == COMMANDS | FOLDER_COMMANDS | FOLDER_TOOLS


def test_top_level_holds_only_commands_and_documented_api():
  top = {short(name): (path.read_text(), tree) for name, (path, tree) in MODULES.items()
         if path.parent == ROOT and path.name != "__init__.py"}
  problems = top_level_problems(top)
  assert not problems, "; ".join(problems)


def test_every_folder_says_its_role_and_what_it_may_import():
  problems = []
  for folder in folders(ROOT):
    init = folder / "__init__.py"
    if not init.exists():
      problems.append(f"{folder.relative_to(REPO)} has no __init__.py")
    elif folder.parent == ROOT:
      problems += docstring_problems(folder.name, ast.get_docstring(ast.parse(init.read_text())))
  assert not problems, "; ".join(problems)


def test_contributing_lists_the_order():
  names = contributing_order((REPO / "CONTRIBUTING.md").read_text())
  assert names[:len(ORDER)] == list(ORDER) and len(names) == len(ORDER) + 1, (
      f"CONTRIBUTING.md lists {names}; the order checked here is {list(ORDER)}, then the "
      "entry points")


def test_deferred_imports_say_why():
  # An import inside a function hides what a module needs; each one says why on its line or
  # the line above (an optional heavy dependency, start-up time), not only a lint directive.
  missing = [f"{path.relative_to(ROOT.parent)}:{line}" for name, (path, tree) in MODULES.items()
             for line in deferred_without_why(tree, path.read_text().splitlines())]
  assert not missing, "deferred imports without a why: " + ", ".join(sorted(missing))
