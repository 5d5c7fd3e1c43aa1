"""The synthetic-rain record recipe (configs/synthetic_rain100h.py, launch/synthetic_record.sh).

The smoke variant runs the whole recipe as a user runs it: the script trains from an empty
data_dir (building the pool dataset from a folder of clean photos) and scores Rain100H pairs.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.paths import REPO, shared_path
from configs import default, synthetic_rain100h
from sapnet_jax.data import imageio


def test_gpu_variant_is_the_full_sapnet_with_the_papers_losses():
  config, paper = synthetic_rain100h.get_config("gpu"), default.get_config()
  assert config.model.to_dict() == paper.model.to_dict()  # 32 channels, 6 stages, CRA, dilation
  assert config.loss.contrast == "pcl" and config.loss.lpips_weight > 0
  assert config.loss.seg_weight > 0
  assert config.data.dataset == "synthetic_rain/pool_rain100h"
  assert config.data.manual_dir == "../shared/data/clean_pool"
  # Neither validation nor the best checkpoint sees Rain100H.
  assert "rain100h" not in json.dumps(config.eval.sets.to_dict()).replace("pool_rain100h", "")
  epochs = config.train.num_epochs
  assert [m / epochs for m in config.optim.milestones] == pytest.approx([0.3, 0.5, 0.8])
  assert config.loss.seg_start_epoch / epochs == pytest.approx(0.51)
  for key in ("vgg_weights", "alexnet_weights", "lpips_weights"):
    path = REPO / config.loss[key]  # relative to the repository root, where it runs
    if (REPO / "../shared/weights").exists():
      assert path.exists(), key
  with pytest.raises(ValueError, match="synthetic_rain100h.py:cpu"):
    synthetic_rain100h.get_config("cpu")


def _thumb(path: Path) -> np.ndarray:
  img = Image.open(path).convert("L")
  if img.height > img.width:
    img = img.transpose(Image.Transpose.ROTATE_90)
  return np.asarray(img.resize((48, 32), Image.Resampling.BILINEAR), np.float32) / 255


def test_training_photos_are_not_rain100h(tmp_path):
  """No clean_pool photo is a Rain100H ground truth (same scene at any size or rotation)."""
  pool, clean = shared_path("data/clean_pool"), shared_path("data/rain100h/clean")
  ours = [_thumb(Path(p)) for p in imageio.list_images(str(pool))]
  theirs = [_thumb(Path(p)) for p in imageio.list_images(str(clean))]
  assert len(ours) >= 100 and len(theirs) == 100
  a, b = np.stack(ours).reshape(len(ours), -1), np.stack(theirs).reshape(len(theirs), -1)
  closest = np.abs(a[:, None] - b[None]).mean(-1).min()
  flipped = np.abs(a[:, None] - b[None].reshape(-1, 32, 48)[:, ::-1, ::-1].reshape(
      len(theirs), -1)).mean(-1).min()
  assert min(closest, flipped) > 0.03, "a clean_pool photo looks like a Rain100H image"
  # The measure finds a copy: a Rain100H image re-saved at 70 % as JPEG is within 0.01.
  copy = Image.open(imageio.list_images(str(clean))[0]).convert("RGB")
  copy.resize((copy.width * 7 // 10, copy.height * 7 // 10)).save(tmp_path / "copy.jpg")
  near = np.abs(_thumb(tmp_path / "copy.jpg").reshape(1, -1) - b).mean(-1).min()
  assert near < 0.01, near


def test_smoke_recipe_trains_and_scores_rain100h(tmp_path):
  pool_src, r100h = shared_path("data/clean_pool"), shared_path("data/rain100h")
  shared_path("weights/vgg16_imagenet")
  pool, pairs = tmp_path / "pool", tmp_path / "rain100h"
  pool.mkdir()
  for p in imageio.list_images(str(pool_src))[:4]:  # a small pool: the same builder, faster
    shutil.copy(p, pool)
  for sub in ("rainy", "clean"):
    (pairs / sub).mkdir(parents=True)
    for name in ("001.png", "002.png", "003.png"):
      shutil.copy(Path(r100h) / sub / name, pairs / sub)
  workdir = tmp_path / "run"
  done = subprocess.run(
      ["bash", "launch/synthetic_record.sh", str(workdir), "smoke",
       f"--config.data.manual_dir={pool}", f"--config.data.data_dir={tmp_path / 'tfds'}"],
      cwd=REPO, capture_output=True, text=True, timeout=400,
      env={**os.environ, "RAIN100H": str(pairs)})
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
  report = json.loads((workdir / "rain100h.json").read_text())
  assert report["count"] == 3 and report["complete"]
  assert report["weights"] == f"{workdir}/checkpoints"
  assert {"psnr_rgb", "ssim_rgb", "psnr_y", "ssim_y", "psnr_y_matlab",
          "ssim_y_matlab"} <= set(report["means"])
  assert (workdir / "eval" / "step_6" / "synthetic_val" / "metrics.json").exists()
  assert "psnr_rgb" in done.stdout  # the means, printed


def test_recipe_names_a_missing_rain100h_folder(tmp_path):
  done = subprocess.run(["bash", "launch/synthetic_record.sh", str(tmp_path / "w"), "smoke"],
                        cwd=REPO, capture_output=True, text=True,
                        env={**os.environ, "RAIN100H": str(tmp_path / "nothing")})
  assert done.returncode == 2 and f"{tmp_path}/nothing/rainy" in done.stderr
  assert not (tmp_path / "w").exists()  # nothing trained before the check
