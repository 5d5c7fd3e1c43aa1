"""One training run of a table: `python -m sapnet_jax.main` in RUN = W/ROW/seed_S, resumable.

A run is finished when RUN/run.json exists; it is written (atomically) only after `main` exited
cleanly, with the command, wall time, CPU time and peak RSS of the process. A run killed before
that is started again with the same command, and `main` resumes it from RUN/checkpoints. A run
whose final checkpoint is already there (trained by hand with the same command) is adopted
without training. The child gets SIGKILL if this process dies (Linux), so a killed table
leaves no run behind that would race the resumed one.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time

from sapnet_jax.utils import fileio
from sapnet_jax.weights import model_files

RUN_FILE = "run.json"


@dataclasses.dataclass(frozen=True)
class Run:
  row: str
  seed: int
  workdir: str  # W/ROW/seed_S
  args: tuple[str, ...]  # arguments of `python -m sapnet_jax.main`
  steps: int  # the step of the final checkpoint

  @property
  def command(self) -> list[str]:
    return [sys.executable, "-m", "sapnet_jax.main", *self.args]


def run_dir(workdir: str, row: str, seed: int) -> str:
  return fileio.join(workdir, row, f"seed_{seed}")


def checkpoint_steps(workdir: str) -> list[int]:
  """The run's committed checkpoint steps, sorted."""
  return model_files.saved_steps(fileio.join(workdir, "checkpoints"))


def info(run: Run) -> dict | None:
  path = fileio.join(run.workdir, RUN_FILE)
  return json.loads(fileio.read_text(path)) if fileio.exists(path) else None


def _die_with_parent() -> None:
  # prctl(PR_SET_PDEATHSIG, SIGKILL): the kernel kills the run when the table process dies.
  try:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)
  except (OSError, AttributeError):  # not Linux: a killed table may leave its run going
    pass


def train(run: Run, cwd: str, env: dict[str, str] | None = None) -> dict:
  """Trains (or resumes, or adopts) `run`; returns its run.json record."""
  done = info(run)
  if done is not None:
    return done
  record = {"command": "python -m sapnet_jax.main " + " ".join(run.args), "cwd": cwd,
            "steps": run.steps}
  before = checkpoint_steps(run.workdir)
  if before and before[-1] >= run.steps:
    record.update(adopted=True, resumed_from=before[-1])
  else:
    fileio.makedirs(run.workdir)
    t0 = time.time()
    with open(os.path.join(run.workdir, "train.log"), "a") as log:
      proc = subprocess.Popen(run.command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                              env=env, preexec_fn=_die_with_parent)
      _, status, usage = os.wait4(proc.pid, 0)
      proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
      tail = open(os.path.join(run.workdir, "train.log")).read()[-3000:]
      raise RuntimeError(f"{run.workdir}: `{record['command']}` exited with "
                         f"{proc.returncode}; the end of its train.log:\n{tail}")
    record.update(adopted=False, resumed_from=before[-1] if before else 0,
                  wall_s=time.time() - t0, cpu_s=usage.ru_utime + usage.ru_stime,
                  peak_rss_gb=usage.ru_maxrss / 2**20,
                  finished=time.strftime("%Y-%m-%d %H:%M:%S"))
  with fileio.atomic_write(fileio.join(run.workdir, RUN_FILE)) as f:
    f.write(json.dumps(record, indent=1).encode())
  return record


def validation_curve(workdir: str, set_name: str, key: str = "psnr_rgb") -> dict[int, float]:
  """{step: value} of the validations training wrote to RUN/eval/step_N/SET/metrics.json."""
  root = fileio.join(workdir, "eval")
  curve = {}
  if fileio.exists(root):
    for name in fileio.listdir(root):
      path = fileio.join(root, name, set_name, "metrics.json")
      if re.fullmatch(r"step_\d+", name) and fileio.exists(path):
        curve[int(name[5:])] = json.loads(fileio.read_text(path))["means"][key]
  return dict(sorted(curve.items()))
