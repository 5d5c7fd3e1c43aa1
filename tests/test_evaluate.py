"""The evaluate command and main --mode=eval: reports, errors that name files, interruption."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from support.paths import REPO, shared_path
from sapnet_jax import evaluate, infer
from sapnet_jax.data.imageio import read_image
from sapnet_jax.evaluation import scoring
from sapnet_jax.metrics import full_reference
from sapnet_jax.models import pdu
from sapnet_jax.weights import model_files

CFG = pdu.PDUConfig(channels=4, reduction=2, stages=2, num_blocks=2)
RNG = np.random.default_rng(3)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  path = tmp_path_factory.mktemp("w") / "tiny.npz"
  model_files.save_model(pdu.PDUNet(CFG, rngs=nnx.Rngs(0)), path)
  return str(path)


def _pairs(root, n=4, size=(24, 30)):
  for sub in ("rainy", "clean"):
    (root / sub).mkdir(parents=True)
  for i in range(n):
    clean = RNG.integers(0, 256, size + (3,), dtype=np.uint8)
    rainy = np.clip(clean.astype(int) + RNG.integers(0, 60, clean.shape), 0, 255).astype(np.uint8)
    Image.fromarray(rainy).save(root / "rainy" / f"rain-{i:03d}.png")
    Image.fromarray(clean).save(root / "clean" / f"norain-{i:03d}.png")
  return root / "rainy", root / "clean"


def _run(tmp_path, weights, *extra):
  rainy, clean = tmp_path / "rainy", tmp_path / "clean"
  return evaluate.main(["--weights", weights, "--rainy", str(rainy), "--clean", str(clean),
                        "--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv"),
                        *extra])


def test_reports_and_values(tmp_path, weights, capsys):
  rainy, clean = _pairs(tmp_path)
  assert _run(tmp_path, weights, "--grid", str(tmp_path / "g.png"), "--grid-count", "2") == 0
  report = json.loads((tmp_path / "r.json").read_text())
  assert report["complete"] and report["count"] == 4 and not report["skipped"]
  assert set(report["means"]) == set(full_reference.KEYS) and set(report["conventions"]) == set(full_reference.KEYS)
  # Each row equals scoring the rounded output of the same model independently.
  derainer = infer.Derainer(model_files.load_model(weights))
  for row in report["images"]:
    x = read_image(rainy / row["name"])
    out = np.round(np.clip(derainer(x), 0, 1) * 255) / 255
    want = full_reference.score_pair(out, read_image(clean / row["name"].replace("rain-", "norain-")))
    for k in full_reference.KEYS:
      assert row[k] == pytest.approx(want[k], abs=1e-9)
  for k in full_reference.KEYS:
    assert report["means"][k] == pytest.approx(np.mean([r[k] for r in report["images"]]))
  rows = list(csv.DictReader(open(tmp_path / "r.csv")))
  assert len(rows) == 4 and set(full_reference.KEYS) <= set(rows[0])
  grid = Image.open(tmp_path / "g.png")
  assert grid.height == 2 * 204 and grid.width == 3 * (round(30 * 200 / 24) + 4)
  assert "psnr_rgb" in capsys.readouterr().out


def test_floor_quantization_differs(tmp_path, weights):
  _pairs(tmp_path)
  _run(tmp_path, weights)
  rounded = json.loads((tmp_path / "r.json").read_text())["means"]["psnr_rgb"]
  _run(tmp_path, weights, "--quantize", "floor")
  floored = json.loads((tmp_path / "r.json").read_text())["means"]["psnr_rgb"]
  assert rounded != floored


def test_missing_counterpart(tmp_path, weights, capsys):
  _pairs(tmp_path)
  (tmp_path / "clean" / "norain-002.png").unlink()
  assert _run(tmp_path, weights) == 2
  assert "rain-002.png: no clean counterpart" in capsys.readouterr().err
  assert _run(tmp_path, weights, "--skip-bad") == 0
  report = json.loads((tmp_path / "r.json").read_text())
  assert report["count"] == 3 and len(report["skipped"]) == 1


def test_size_mismatch_and_corrupt_keep_earlier_rows(tmp_path, weights, capsys):
  _pairs(tmp_path)
  Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "clean" / "norain-002.png")
  (tmp_path / "rainy" / "rain-003.png").write_bytes(b"broken")
  assert _run(tmp_path, weights) == 1
  err = capsys.readouterr().err
  assert "rain-002.png is 30x24 but" in err and "norain-002.png is 30x20" in err
  report = json.loads((tmp_path / "r.json").read_text())
  assert not report["complete"] and [r["name"] for r in report["images"]] == ["rain-000.png", "rain-001.png"]
  assert _run(tmp_path, weights, "--skip-bad") == 0
  report = json.loads((tmp_path / "r.json").read_text())
  assert report["count"] == 2 and any("rain-003.png" in s for s in report["skipped"])


def test_interrupt_keeps_rows(tmp_path, weights, monkeypatch):
  _pairs(tmp_path)
  calls = {"n": 0}
  real = infer.Derainer.__call__

  def flaky(self, image, **kw):
    calls["n"] += 1
    if calls["n"] == 3:
      raise KeyboardInterrupt
    return real(self, image, **kw)

  monkeypatch.setattr(infer.Derainer, "__call__", flaky)
  with pytest.raises(KeyboardInterrupt):
    _run(tmp_path, weights)
  report = json.loads((tmp_path / "r.json").read_text())
  assert report["count"] == 2 and not report["complete"]


def _photos(root, sizes=((120, 210), (131, 197))):
  """Textured stand-ins for real rainy photos, each holding two 96x96 NIQE blocks."""
  root.mkdir(parents=True)
  for i, (h, w) in enumerate(sizes):
    yy, xx = np.mgrid[0:h, 0:w]
    base = 110 + 60 * np.sin(xx / (7.0 + i)) * np.cos(yy / 11.0) + 30 * (xx > w // 3)
    img = np.clip(base[..., None] + RNG.normal(0, 9, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(root / f"photo-{i}.png")
  return root


def _run_noref(folder, out, *extra):
  return evaluate.main(["--weights", "identity", "--rainy", str(folder), "--json",
                        str(out / "r.json"), "--csv", str(out / "r.csv"), *extra])


def test_noref_reports_niqe_and_brisque(tmp_path, capsys):
  from sapnet_jax.metrics import no_reference
  folder = _photos(tmp_path / "real")
  assert _run_noref(folder, tmp_path) == 0
  report = json.loads((tmp_path / "r.json").read_text())
  assert report["complete"] and report["count"] == 2 and not report["skipped"]
  assert set(report["means"]) == set(scoring.NOREF_KEYS) == set(report["conventions"])
  for row in report["images"]:
    image = read_image(folder / row["name"])
    # identity + rounding to 8 bits reproduces the input, so every value is that of the file.
    assert row["niqe"] == no_reference.niqe(image) == row["niqe_input"]
    assert row["brisque"] == no_reference.brisque(image) == row["brisque_input"]
  assert report["images"][0]["niqe"] != report["images"][1]["niqe"]
  for k in scoring.NOREF_KEYS:
    assert report["means"][k] == pytest.approx(np.mean([r[k] for r in report["images"]]))
  rows = list(csv.DictReader(open(tmp_path / "r.csv")))
  assert [r["name"] for r in rows] == ["photo-0.png", "photo-1.png"]
  assert float(rows[0]["niqe"]) == pytest.approx(report["images"][0]["niqe"])
  assert "niqe" in capsys.readouterr().out


def test_noref_crop_border_and_too_small(tmp_path, capsys):
  from sapnet_jax.metrics import no_reference
  folder = _photos(tmp_path / "real", sizes=((120, 210), (60, 80)))
  assert _run_noref(folder, tmp_path, "--crop-border", "4") == 1
  assert "photo-1.png: niqe: the image must hold two 96x96 blocks" in capsys.readouterr().err
  assert _run_noref(folder, tmp_path, "--crop-border", "4", "--skip-bad") == 0
  report = json.loads((tmp_path / "r.json").read_text())
  assert report["count"] == 1 and "photo-1.png" in report["skipped"][0]
  image = read_image(folder / "photo-0.png")
  assert report["images"][0]["niqe"] == no_reference.niqe(image, crop_border=4)
  assert report["images"][0]["niqe"] != no_reference.niqe(image)
  assert report["images"][0]["brisque"] == no_reference.brisque(image[4:-4, 4:-4])


def _workdir(tmp_path, step):
  model = pdu.PDUNet(CFG, rngs=nnx.Rngs(1))
  model_files.save_model(model, tmp_path / "w" / "checkpoints", step=step)
  return tmp_path / "w"


def test_main_eval_writes_reports_for_the_latest_step(tmp_path):
  rainy, clean = _pairs(tmp_path / "data")
  workdir = _workdir(tmp_path, step=7)
  cmd = [sys.executable, "-m", "sapnet_jax.main", "--config=configs/default.py",
         f"--workdir={workdir}", "--mode=eval",
         "--config.eval.sets=" + json.dumps({"rain100h": {"rainy": str(rainy),
                                                          "clean": str(clean)}})]
  done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-2000:]
  out = workdir / "eval" / "step_7" / "rain100h"
  report = json.loads((out / "metrics.json").read_text())
  assert report["step"] == 7 and report["count"] == 4 and (out / "grid.png").exists()
  assert (out / "metrics.csv").exists() and "psnr_y_matlab" in done.stdout


def test_eval_step_selection(tmp_path):
  import importlib
  rainy, clean = _pairs(tmp_path / "data")
  workdir = _workdir(tmp_path, step=3)
  config = importlib.import_module("configs.default").get_config()
  config.eval.sets = {"rain100h": {"rainy": str(rainy), "clean": str(clean)}}
  config.eval.step = 4
  with pytest.raises(model_files.CheckpointError, match=r"no checkpoint at step 4; available steps: \[3\]"):
    scoring.evaluate_workdir(config, str(workdir))
  config.eval.step = 3
  assert scoring.evaluate_workdir(config, str(workdir))["rain100h"]["count"] == 4


def test_official_weights_on_rain100h_subset(tmp_path):
  rainy, clean = shared_path("data/rain100h/rainy"), shared_path("data/rain100h/clean")
  for sub, src in (("rainy", rainy), ("clean", clean)):
    (tmp_path / sub).mkdir()
    for n in ("001.png", "002.png"):
      (tmp_path / sub / n).write_bytes((src / n).read_bytes())
  assert _run(tmp_path, "sapnet-rain100h") == 0
  report = json.loads((tmp_path / "r.json").read_text())
  input_psnr = [full_reference.score_pair(read_image(rainy / n), read_image(clean / n))["psnr_rgb"]
                for n in ("001.png", "002.png")]
  assert report["means"]["psnr_rgb"] > np.mean(input_psnr) + 8


# --- built datasets and pretrained weights ---------------------------------------------------

@pytest.fixture(scope="module")
def rain100h_subset(tmp_path_factory):
  """The first 3 Rain100H test pairs of ../shared as folders, and built as the rain100h dataset
  (its builder pairs them by its own naming rule)."""
  import shutil
  from sapnet_jax.data import prepare
  src = shared_path("data/rain100h")
  root = tmp_path_factory.mktemp("rain100h")
  for sub in ("rainy", "clean"):
    (root / "manual" / sub).mkdir(parents=True)
    for name in sorted(p.name for p in (src / sub).iterdir())[:3]:
      shutil.copy(src / sub / name, root / "manual" / sub / name)
  prepare.build("rain100h", data_dir=str(root / "tfds"), manual_dir=str(root / "manual"))
  return root / "manual", str(root / "tfds")


def _rows(path):
  return {r["name"]: r for r in json.loads(path.read_text())["images"]}


def test_dataset_form_scores_what_the_folder_form_scores(rain100h_subset, tmp_path):
  folders, data_dir = rain100h_subset
  common = ["--weights", "identity", "--quantize", "none"]
  assert evaluate.main(common + ["--rainy", str(folders / "rainy"), "--clean",
                                 str(folders / "clean"), "--json", str(tmp_path / "f.json")]) == 0
  assert evaluate.main(common + ["--dataset", "rain100h:test", "--data_dir", data_dir,
                                 "--json", str(tmp_path / "d.json")]) == 0
  folder, dataset = _rows(tmp_path / "f.json"), _rows(tmp_path / "d.json")
  assert len(folder) == 3 and sorted(folder) == sorted(dataset)
  for name, row in folder.items():
    for key in full_reference.KEYS:
      assert dataset[name][key] == row[key], (name, key)
  assert json.loads((tmp_path / "d.json").read_text())["dataset"] == "rain100h:test"


def test_dataset_form_names_an_unbuilt_dataset(tmp_path, capsys):
  assert evaluate.main(["--weights", "identity", "--dataset", "rain100h:test",
                        "--data_dir", str(tmp_path)]) == 2
  assert "not built" in capsys.readouterr().err


def test_main_eval_scores_pretrained_weights_without_a_checkpoint(rain100h_subset, tmp_path):
  """The default config's eval set (the built rain100h:test) scored by main --mode=eval gives
  the folder form's per-image numbers."""
  folders, data_dir = rain100h_subset
  assert evaluate.main(["--weights", "sapnet-rain100h", "--rainy", str(folders / "rainy"),
                        "--clean", str(folders / "clean"), "--json", str(tmp_path / "f.json")]) == 0
  work = tmp_path / "work"
  proc = subprocess.run(
      [sys.executable, "-m", "sapnet_jax.main", f"--config={REPO / 'configs' / 'default.py'}",
       f"--workdir={work}", "--mode=eval", "--config.eval.weights=sapnet-rain100h",
       f"--config.data.data_dir={data_dir}"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not (work / "checkpoints").exists()
  report = work / "eval" / "weights_sapnet-rain100h" / "rain100h" / "metrics.json"
  got, want = _rows(report), _rows(tmp_path / "f.json")
  assert sorted(got) == sorted(want) and len(got) == 3
  for name, row in want.items():
    for key in full_reference.KEYS:
      assert got[name][key] == pytest.approx(row[key], abs=1e-9), (name, key)


@pytest.mark.parametrize("flags,message", [
    (["--tile", "48"], "--overlap 64 must be smaller than --tile 48"),
    (["--tile", "-1"], "--tile: must be >= 0, got -1"),
    (["--grid-count", "0", "--grid", "g.png"], "--grid-count: must be >= 1, got 0"),
])
def test_bad_flags_stop_before_any_work(tmp_path, weights, capsys, flags, message):
  _pairs(tmp_path)
  with pytest.raises(SystemExit) as exit_info:
    _run(tmp_path, weights, *flags)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert message in err.splitlines()[-1] and "Traceback" not in err
  assert not (tmp_path / "r.json").exists() and not (tmp_path / "r.csv").exists()


def test_outputs_never_replace_inputs(tmp_path, weights, capsys):
  rainy, clean = _pairs(tmp_path, n=2)
  before = {p: p.read_bytes() for p in [*rainy.iterdir(), *clean.iterdir()]}
  for extra in (["--save-outputs", str(rainy)], ["--grid", str(clean / "norain-000.png")]):
    with pytest.raises(SystemExit) as exit_info:
      _run(tmp_path, weights, *extra)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "would be overwritten" in err, err
  assert {p: p.read_bytes() for p in [*rainy.iterdir(), *clean.iterdir()]} == before
  assert not (tmp_path / "r.json").exists()
