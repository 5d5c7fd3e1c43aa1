"""launch/tpu_pod.sh --setup: the command it sends to every host, run here against a local
git repository (the pip install step replaced: it is not what is under test)."""

import shlex
import subprocess

from support.paths import REPO

PIP = "python3 -m pip install -q -e '.[tpu]'"


def _git(cwd, *args):
  return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                        check=True, capture_output=True, text=True).stdout.strip()


def _setup_command(repo, ref):
  out = subprocess.run(["bash", str(REPO / "launch" / "tpu_pod.sh"), "--tpu", "t", "--zone", "z",
                        "--workdir", "gs://b/run", "--setup", "--repo", str(repo), "--ref", ref,
                        "--dry-run"], capture_output=True, text=True, check=True).stdout
  argv = shlex.split(out.splitlines()[0])
  command = argv[argv.index("--command") + 1]
  assert PIP in command
  return command.replace(PIP, "true")


def test_setup_checks_out_the_requested_ref_after_fetching(tmp_path):
  origin, host = tmp_path / "origin", tmp_path / "host"
  origin.mkdir()
  host.mkdir()
  _git(origin, "init", "-q", "-b", "main")
  _git(origin, "commit", "-q", "--allow-empty", "-m", "first")
  # First setup on a new host: clones, at main's first commit.
  subprocess.run(["bash", "-c", _setup_command(origin, "main")], cwd=host, check=True,
                 capture_output=True)
  assert _git(host / "sapnet_jax", "log", "-1", "--format=%s") == "first"
  # main moves on: a second setup must land on the new commit, not stay on the old one.
  _git(origin, "commit", "-q", "--allow-empty", "-m", "second")
  _git(origin, "tag", "v2")
  _git(origin, "commit", "-q", "--allow-empty", "-m", "third")
  subprocess.run(["bash", "-c", _setup_command(origin, "main")], cwd=host, check=True,
                 capture_output=True)
  assert _git(host / "sapnet_jax", "log", "-1", "--format=%s") == "third"
  subprocess.run(["bash", "-c", _setup_command(origin, "v2")], cwd=host, check=True,
                 capture_output=True)
  assert _git(host / "sapnet_jax", "log", "-1", "--format=%s") == "second"
