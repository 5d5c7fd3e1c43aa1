"""The console scripts of the installed distribution (`pip install -e .`): each names a callable
and its installed script answers --help with its usage. Parametrized over the installed entry
points, so a script added to setup.py is covered once it is installed."""

import importlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO


def _entry_points():
  try:
    dist = importlib.metadata.distribution("sapnet_jax")
  except importlib.metadata.PackageNotFoundError:
    return []
  return sorted((ep for ep in dist.entry_points if ep.group == "console_scripts"),
                key=lambda ep: ep.name)


ENTRY_POINTS = _entry_points()


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


def _module(ep) -> str:
  return ep.value.partition(":")[0]


@pytest.mark.parametrize("ep", ENTRY_POINTS, ids=lambda ep: ep.name)
def test_entry_point_names_a_callable(ep):
  assert callable(ep.load()), ep.value


def _script(name: str) -> str | None:
  # The interpreter's own bin folder first: the venv running these tests need not be on PATH.
  beside = os.path.join(os.path.dirname(sys.executable), name)
  return beside if os.path.exists(beside) else shutil.which(name)


def _help_flag(ep) -> str:
  return "--help"


@pytest.fixture(scope="module")
def help_runs():
  """{script name: (exit status, output)} of every installed script's help, run side by side
  (each starts a Python that imports JAX: seconds)."""
  procs = {}
  for ep in ENTRY_POINTS:
    path = _script(ep.name)
    if path is not None:
      procs[ep.name] = subprocess.Popen(
          [path, _help_flag(ep)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
          env={**os.environ, "JAX_PLATFORMS": "cpu"})
  runs = {}
  for name, proc in procs.items():
    out, _ = proc.communicate(timeout=300)
    runs[name] = (proc.returncode, out)
  return runs


@pytest.mark.parametrize("ep", ENTRY_POINTS, ids=lambda ep: ep.name)
def test_script_prints_its_usage(ep, help_runs):
  if ep.name not in help_runs:
    pytest.fail(f"{ep.name}: no installed script beside {sys.executable} or on PATH "
                "(pip install -e .)")
  code, out = help_runs[ep.name]
  if ep.value == "sapnet_jax.main:run":  # absl exits with status 1 after any help (HelpFlag)
    assert code == 1, out
    # main.run hands absl the module's docstring and flags (the wrapper script has neither).
    assert "Entry point for experiments" in out, out
    assert "--config:" in out and "--workdir:" in out, out
  else:
    assert code == 0 and out.startswith("usage: ") and "Traceback" not in out, out


def test_readme_mentions_the_console_scripts():
  readme = (REPO / "README.md").read_text()
  missing = [ep.name for ep in ENTRY_POINTS if ep.name not in readme]
  assert "console script" in readme.lower() or "sapnet-derain" in readme
  assert not missing, f"README.md does not mention {missing}"
