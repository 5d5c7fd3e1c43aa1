"""The ablation tables' command (sapnet_jax.experiments): rows, scales, statistics, resume.

The end-to-end test runs what CI promises, `--table contrast --scale smoke --seeds 2`, as users
run it (a subprocess from the repository root), kills it once a run is finished and the next
has saved a checkpoint, runs it again, and then recomputes every mean, standard deviation and
95% interval of table.json from the runs' own score reports with numpy and Student's t.
"""

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from support.paths import REPO, shared_path
from sapnet_jax.experiments import report, runner, tables


def _flat(config) -> dict:
  out = {}

  def walk(node, prefix):
    for k, v in node.items():
      if hasattr(v, "items") and not isinstance(v, dict):
        walk(v, f"{prefix}{k}.")
      else:
        out[f"{prefix}{k}"] = v
  walk(config, "")
  return out


def _differences(a, b) -> set[str]:
  fa, fb = _flat(a), _flat(b)
  return {k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k)}


@pytest.mark.parametrize("name", sorted(tables.TABLES))
def test_scales_change_no_rows_meaning(name):
  """At every scale, two rows differ in exactly the fields their configs differ in (what the
  rows mean); the scale sets the same fields for every row of a table, to the same values but
  for the schedule, which it maps from each row's own."""
  table = tables.TABLES[name]
  per_epoch = lambda cfg: 100 if cfg.data.patch_size < 100 else 1000  # no dataset needed
  for scale in tables.SCALES:
    configs, overrides = [], []
    for row in table.rows:
      config = tables.load_config(str(REPO / "configs"), row, scale)
      overrides.append(tables.scale_overrides(config, scale, per_epoch))
      tables.apply(config, overrides[-1])
      configs.append(config)
    schedule = {"optim.milestones", "loss.seg_start_epoch"}
    for o in overrides:
      assert set(o) == set(overrides[0]), (name, scale)
      assert {k: v for k, v in o.items() if k not in schedule} == {
          k: v for k, v in overrides[0].items() if k not in schedule}, (name, scale)
    bare = [tables.load_config(str(REPO / "configs"), row, scale) for row in table.rows]
    for k in range(1, len(configs)):
      assert _differences(configs[0], configs[k]) == _differences(bare[0], bare[k]), (
          name, scale, table.rows[k].name)
      assert _differences(configs[0], configs[k]), "rows that do not differ"


def test_scaled_schedule_keeps_its_fractions():
  row = tables.TABLES["components"].rows[-1]  # ours: lr decay and the seg term
  config = tables.load_config(str(REPO / "configs"), row, "demo")
  out = tables.scale_overrides(config, "demo", lambda cfg: 50)  # 240 steps = 4.8 epochs
  run_epochs = out["train.num_steps"] / 50
  assert out["optim.milestones"] == pytest.approx(
      tuple(m / 100 * run_epochs for m in (30, 50, 80)), abs=1e-4)
  assert out["loss.seg_start_epoch"] == pytest.approx(0.51 * run_epochs, abs=1e-4)
  with pytest.raises(ValueError, match="--scale='huge'"):
    tables.scale_overrides(config, "huge")


def test_summary_statistics():
  s = report.summarize([28.0, 29.0, 30.5])
  sd = math.sqrt(((28 - 29.1667) ** 2 + (29 - 29.1667) ** 2 + (30.5 - 29.1667) ** 2) / 2)
  assert s["mean"] == pytest.approx(29.1667, abs=1e-4) and s["sd"] == pytest.approx(sd, abs=1e-4)
  half = 4.302653 * sd / math.sqrt(3)  # t(0.975, 2), from a printed table
  assert s["ci95"] == pytest.approx([s["mean"] - half, s["mean"] + half], abs=1e-4)
  assert report.summarize([1.0])["ci95"] is None


def _welch(a, b) -> list[float]:
  a, b = np.asarray(a), np.asarray(b)
  va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
  df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
  half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
  d = a.mean() - b.mean()
  return [d - half, d + half]


def test_difference_to_the_reference_row():
  a, b = [24.1, 23.2, 24.9], [22.0, 21.5, 22.6]
  d = report.difference(a, b)
  assert d["diff"] == pytest.approx(np.mean(a) - np.mean(b))
  assert d["ci95"] == pytest.approx(_welch(a, b), rel=1e-9)
  assert d["ci95"][0] > 0  # these two are apart
  assert report.difference([1.0], [2.0, 3.0])["ci95"] is None


def test_failed_run_names_its_workdir_and_log(tmp_path):
  run = runner.Run("bad", 0, str(tmp_path / "bad" / "seed_0"),
                   ("--config=configs/no_such_config.py", f"--workdir={tmp_path}/bad/seed_0"), 6)
  with pytest.raises(RuntimeError, match=r"bad/seed_0.*exited with") as info:
    runner.train(run, str(REPO))
  assert "no_such_config" in str(info.value)
  assert not (tmp_path / "bad" / "seed_0" / runner.RUN_FILE).exists()


def _table_command(workdir):
  return [sys.executable, "-m", "sapnet_jax.experiments", "--table", "contrast", "--scale",
          "smoke", "--seeds", "2", "--workdir", str(workdir)]


def _means_of(run_dir: Path) -> dict[str, float]:
  out = {}
  for path in sorted((run_dir / "scores").glob("*/metrics.json")):
    summary = json.loads(path.read_text())
    assert summary["complete"] and summary["count"] == 2  # the smoke scale's 2 images per set
    out.update({f"{path.parent.name}/{k}": v for k, v in summary["means"].items()})
  return out


def test_contrast_table_smoke_resumes_and_matches_its_runs(tmp_path):
  shared_path("data/rain100h")
  shared_path("data/real_rainy")
  shared_path("weights/vgg16_imagenet")
  workdir = tmp_path / "table"
  first, second = workdir / "no_cl" / "seed_0", workdir / "no_cl" / "seed_1"
  proc = subprocess.Popen(_table_command(workdir), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 240
  # Kill the table once run 1 is finished and run 2 has saved its first checkpoint.
  while not (first / runner.RUN_FILE).exists() or not runner.checkpoint_steps(str(second)):
    assert proc.poll() is None, proc.stdout.read()
    assert time.time() < deadline, "no checkpoint of the second run in time"
    time.sleep(0.05)
  # Steps 4-6, a validation and a save are left: seconds, against 50 ms of polling.
  assert not (second / runner.RUN_FILE).exists()
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  record = (first / runner.RUN_FILE).read_text()
  stamp = (first / runner.RUN_FILE).stat().st_mtime_ns
  done = subprocess.run(_table_command(workdir), cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  assert "about" in done.stdout and "min left" in done.stdout  # progress with a time estimate
  # The finished run was not run again; the killed one resumed from its checkpoint.
  assert (first / runner.RUN_FILE).read_text() == record
  assert (first / runner.RUN_FILE).stat().st_mtime_ns == stamp
  resumed = json.loads((second / runner.RUN_FILE).read_text())
  assert resumed["resumed_from"] >= 3 and "resumed from step" in (second / "train.log").read_text()

  data = json.loads((workdir / "table.json").read_text())
  assert (workdir / "curves.png").stat().st_size > 1000
  assert data["seeds"] == [0, 1] and list(data["rows"]) == ["no_cl", "l1_cl", "pcl"]
  t = stats.t.ppf(0.975, 1)
  for name, row in data["rows"].items():
    assert row["config"].endswith(f"contrast_ablation.py:{name}")
    per_seed = [_means_of(workdir / name / f"seed_{s}") for s in (0, 1)]
    assert set(row["stats"]) == set(per_seed[0]) and len(per_seed[0]) >= 9
    assert {"synthetic_val/lpips_alex", "rain100h/psnr_rgb", "real/niqe"} <= set(row["stats"])
    for key, stat in row["stats"].items():
      values = np.array([m[key] for m in per_seed])
      mean, sd = values.mean(), values.std(ddof=1)
      assert stat["mean"] == pytest.approx(mean, rel=1e-9, abs=1e-12)
      assert stat["sd"] == pytest.approx(sd, rel=1e-9, abs=1e-12)
      assert stat["ci95"] == pytest.approx([mean - t * sd / math.sqrt(2),
                                            mean + t * sd / math.sqrt(2)], rel=1e-9, abs=1e-12)
    for s in (0, 1):
      run = row["runs"][str(s)]
      assert run["run"]["cpu_s"] > 0 and run["run"]["steps"] == 6
      assert [int(k) for k in run["curve"]] == [3, 6]
      val = json.loads((workdir / name / f"seed_{s}" / "eval" / "step_6" / "synthetic_val" /
                        "metrics.json").read_text())
      assert run["curve"]["6"] == val["means"]["psnr_rgb"]
  assert data["reference"] == "pcl" and "vs_reference" not in data["rows"]["pcl"]
  for name in ("no_cl", "l1_cl"):
    for key, d in data["rows"][name]["vs_reference"].items():
      mine = [_means_of(workdir / name / f"seed_{s}")[key] for s in (0, 1)]
      ref = [_means_of(workdir / "pcl" / f"seed_{s}")[key] for s in (0, 1)]
      assert d["diff"] == pytest.approx(np.mean(mine) - np.mean(ref), abs=1e-12)
      if d["ci95"] is not None:
        assert d["ci95"] == pytest.approx(_welch(mine, ref), rel=1e-9, abs=1e-12)
  assert data["rows"]["pcl"]["paper"]["rain100h/psnr_rgb"] == 29.46
  base = json.loads((workdir / "rainy_input" / "rain100h" / "metrics.json").read_text())
  assert data["rainy_input"]["rain100h/psnr_rgb"] == base["means"]["psnr_rgb"]
  md = (workdir / "table.md").read_text()
  assert "| pcl |" in md and "29.46 / 0.897" in md and "Differences to `pcl`" in md


def test_frozen_weight_files_come_from_their_flags_or_the_weights_dir(tmp_path, capsys):
  from sapnet_jax.experiments import __main__ as command
  (tmp_path / "lpips").mkdir()
  (tmp_path / "lpips" / "alex_v0.1.pth").write_bytes(b"")
  own = tmp_path / "my_vgg.npz"
  own.write_bytes(b"")
  args = argparse.Namespace(weights_dir=str(tmp_path), vgg_weights=str(own),
                            alexnet_weights=None, lpips_weights=None)
  files = command.weight_files(args)
  assert files == {"vgg_weights": str(own),
                   "alexnet_weights": str(tmp_path / "alexnet_imagenet" /
                                          "alexnet_features_hwio.npz"),
                   "lpips_weights": str(tmp_path / "lpips" / "alex_v0.1.pth")}
  assert command.weight_files(argparse.Namespace(weights_dir=None, vgg_weights=None,
                                                 alexnet_weights=None, lpips_weights=None)) == {
      "vgg_weights": None, "alexnet_weights": None, "lpips_weights": None}
  row = tables.TABLES["contrast"].rows[-1]
  config = tables.load_config(str(REPO / "configs"), row, "smoke")
  with pytest.raises(FileNotFoundError, match=r"alexnet_features_hwio\.npz: no such weights "
                     r"file \(for config\.loss\.alexnet_weights; --alexnet_weights"):
    tables.weight_overrides(config, files)
  files["alexnet_weights"] = str(own)
  assert tables.weight_overrides(config, files) == {f"loss.{k}": v for k, v in files.items()}
  msnet = tables.load_config(str(REPO / "configs"), tables.TABLES["msnet"].rows[0], "smoke")
  assert tables.weight_overrides(msnet, files) == {}
  # A file named on the command line that is not there: one line, exit status 2, no work.
  with pytest.raises(SystemExit) as info:
    command.main(["--table", "contrast", "--workdir", str(tmp_path / "w"),
                  "--lpips_weights", str(tmp_path / "gone.pth")])
  assert info.value.code == 2
  assert f"--lpips_weights: {tmp_path / 'gone.pth'}: no such file" in capsys.readouterr().err
  assert not (tmp_path / "w").exists()
