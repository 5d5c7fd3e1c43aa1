"""Every command a user is told to run answers --help with its usage: each console script of the
installed distribution (`pip install -e .`) and each `python -m sapnet_jax...` module that the
Markdown documentation names. Parametrized over the installed entry points and over what the
documents say, so a script added to setup.py or a module named in a document is covered as soon
as it is installed or written."""

import concurrent.futures
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys

import pytest

from support.paths import REPO


def _entry_points():
  try:
    dist = importlib.metadata.distribution("sapnet_jax")
  except importlib.metadata.PackageNotFoundError:
    return []
  return sorted((ep for ep in dist.entry_points if ep.group == "console_scripts"),
                key=lambda ep: ep.name)


ENTRY_POINTS = _entry_points()

# The Markdown a user reads: the top-level documents and those of the documented folders.
DOCUMENTS = sorted([*REPO.glob("*.md"), *REPO.glob("docs/**/*.md"), *REPO.glob("examples/*.md"),
                    *REPO.glob("launch/*.md")])


def _documented_modules() -> list[str]:
  """The modules the documents run as `python -m sapnet_jax...` (README, docs/, ...); a
  placeholder such as `sapnet_jax.NAME` (capitals) is no module."""
  found = set()
  for path in DOCUMENTS:
    found.update(re.findall(r"python3? -m (sapnet_jax(?:\.[a-z_][a-z0-9_]*)*)(?!\.?\w)",
                            path.read_text()))
  return sorted(found)


MODULES = _documented_modules()


def _declared() -> dict[str, str]:
  """The console scripts setup.py declares, {name: "module:attr"}."""
  text = (REPO / "setup.py").read_text()
  block = text[text.index('"console_scripts"'):]
  block = block[:block.index("]")]
  return dict(re.findall(r'"([\w-]+)\s*=\s*([\w.]+:\w+)"', block))


def test_installed_scripts_are_the_declared_ones():
  if not ENTRY_POINTS:
    pytest.fail("sapnet_jax is not installed: pip install -e . (README)")
  declared = _declared()
  assert len(declared) >= 11  # the parse found the list
  assert {ep.name: ep.value for ep in ENTRY_POINTS} == declared, (
      "installed console scripts differ from setup.py: reinstall with pip install -e .")


def test_documents_name_the_modules():
  # The parse found the documents and their commands (README alone names several).
  assert REPO / "README.md" in DOCUMENTS
  assert {"sapnet_jax.derain", "sapnet_jax.main", "sapnet_jax.serve"} <= set(MODULES), MODULES


@pytest.mark.parametrize("ep", ENTRY_POINTS, ids=lambda ep: ep.name)
def test_entry_point_names_a_callable(ep):
  assert callable(ep.load()), ep.value


def _script(name: str) -> str | None:
  # The interpreter's own bin folder first: the venv running these tests need not be on PATH.
  beside = os.path.join(os.path.dirname(sys.executable), name)
  return beside if os.path.exists(beside) else shutil.which(name)


def _run_all(commands: dict[str, list[str]]) -> dict[str, tuple[int, str]]:
  """{key: (exit status, output)} of each command, a few at a time (each starts a Python that
  imports JAX: seconds of CPU)."""
  def run(argv):
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, cwd=REPO, timeout=300)
    return proc.returncode, proc.stdout
  with concurrent.futures.ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
    futures = {key: pool.submit(run, argv) for key, argv in commands.items()}
    return {key: future.result() for key, future in futures.items()}


@pytest.fixture(scope="module")
def script_help():
  """Every installed script's --help, {script name: (exit status, output)}."""
  paths = {ep.name: _script(ep.name) for ep in ENTRY_POINTS}
  return _run_all({name: [path, "--help"] for name, path in paths.items() if path is not None})


@pytest.fixture(scope="module")
def module_help():
  """Every documented module's `python -m M --help`, {module: (exit status, output)}."""
  return _run_all({module: [sys.executable, "-m", module, "--help"] for module in MODULES})


def _check_usage(command: str, code: int, out: str, absl_main: bool) -> None:
  if absl_main:  # absl exits with status 1 after any help (HelpFlag)
    assert code == 1, f"{command}: {out}"
    # main hands absl the module's docstring and flags (a wrapper script has neither).
    assert "Entry point for experiments" in out, f"{command}: {out}"
    assert "--config:" in out and "--workdir:" in out, f"{command}: {out}"
  else:
    assert code == 0 and out.startswith("usage: ") and "Traceback" not in out, f"{command}: {out}"


@pytest.mark.parametrize("ep", ENTRY_POINTS, ids=lambda ep: ep.name)
def test_script_prints_its_usage(ep, script_help):
  if ep.name not in script_help:
    pytest.fail(f"{ep.name}: no installed script beside {sys.executable} or on PATH "
                "(pip install -e .)")
  _check_usage(ep.name, *script_help[ep.name], absl_main=ep.value == "sapnet_jax.main:run")


@pytest.mark.parametrize("module", MODULES)
def test_documented_module_prints_its_usage(module, module_help):
  _check_usage(f"python -m {module}", *module_help[module], absl_main=module == "sapnet_jax.main")


def test_readme_mentions_the_console_scripts():
  readme = (REPO / "README.md").read_text()
  missing = [ep.name for ep in ENTRY_POINTS if ep.name not in readme]
  assert "console script" in readme.lower() or "sapnet-derain" in readme
  assert not missing, f"README.md does not mention {missing}"
