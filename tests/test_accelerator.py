"""benchmarks/accelerator.py: its --quick run on this CPU, and XLA's FLOP count against ours.

The FLOP counts below are independent of XLA: they count a 3x3 convolution's multiply-adds
(2 FLOPs each) from the layer's shapes. XLA's cost analysis counts only the kernel taps that
meet the image, not those over the zero padding, so the count is per tap: a tap offset by
(dy, dx) reaches (H - |dy|)(W - |dx|) output pixels, and the 9 taps of a dilation-d kernel
reach (3H - 2d)(3W - 2d) in all (9HW when the image is large against d). Biases, activations
and the attention are not in it.
"""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from support.paths import REPO
from sapnet_jax import models
from sapnet_jax.models import pdu

sys.path.insert(0, str(REPO / "benchmarks"))
import accelerator  # noqa: E402


def conv_flops(n: int, h: int, w: int, cin: int, cout: int, d: int = 1) -> int:
  """Multiply-adds x 2 of a 3x3, dilation-d, 'same'-padded convolution, over valid taps."""
  return 2 * n * cin * cout * (3 * h - 2 * d) * (3 * w - 2 * d)


def pdu_forward_flops(cfg: pdu.PDUConfig, n: int, h: int, w: int) -> int:
  """The convolutions of PDUNet's forward, from its config (models/pdu.py, stage by stage):
  conv0 6 -> C and out C -> 3 in every stage; the ConvLSTM gates C -> 4C in the first stage
  (h = 0, so only the x half of the kernel runs) and 2C -> 4C after; two C -> C convolutions
  per residual block at its dilation."""
  c, s = cfg.channels, cfg.stages
  total = s * (conv_flops(n, h, w, 6, c) + conv_flops(n, h, w, c, 3))
  if cfg.recurrent:
    total += conv_flops(n, h, w, c, 4 * c) + (s - 1) * conv_flops(n, h, w, 2 * c, 4 * c)
  total += s * sum(2 * conv_flops(n, h, w, c, c, d) for d in cfg.dilations)
  return total


def _xla_flops(fn, *args) -> float:
  return accelerator._flops(jax.jit(fn).lower(*args).compile())


@pytest.mark.parametrize("d", [1, 4, 16])
def test_one_convolution_matches_the_count_exactly(d):
  x, k = jnp.ones((2, 40, 48, 16)), jnp.ones((3, 3, 16, 24))
  conv = lambda x, k: jax.lax.conv_general_dilated(  # noqa: E731
      x, k, (1, 1), [(d, d), (d, d)], rhs_dilation=(d, d),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  # A convolution alone is nothing but multiply-adds: XLA's count equals ours.
  assert _xla_flops(conv, x, k) == conv_flops(2, 40, 48, 16, 24, d)
  # The naive 2*H*W*Cin*Cout*9 overcounts by the padded taps (at d=16 on 40x48 by half).
  assert conv_flops(2, 40, 48, 16, 24, d) < 2 * 2 * 40 * 48 * 16 * 24 * 9


@pytest.mark.parametrize("cfg", [pdu.SAPNET, pdu.PRENET, pdu.PDUConfig(channels=16, stages=3)],
                             ids=["sapnet", "prenet", "small"])
def test_whole_forward_matches_the_convolution_count(cfg):
  """XLA's count of the forward is the convolutions' plus the elementwise work (bias adds,
  ReLUs, the ConvLSTM's sigmoids and tanhs, attention pooling and scaling, the residual adds),
  about 1.5% for SAPNet at 32 channels: within 3% above, and never below."""
  n, h, w = 2, 48, 56
  model = models.build(cfg, nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  x = jnp.zeros((n, h, w, 3))
  ours = pdu_forward_flops(cfg, n, h, w)
  xla = _xla_flops(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
  assert 1.0 <= xla / ours <= 1.03, (xla, ours)


def test_peak_table_matches_device_kinds():
  assert accelerator.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16")[0] == 989.5
  assert accelerator.peak_tflops("NVIDIA H100 PCIe", "float32")[0] == 378.0
  assert accelerator.peak_tflops("TPU v5 lite", "bfloat16")[0] == 197.0
  assert accelerator.peak_tflops("TPU v5 lite", "float32")[0] is None
  assert accelerator.peak_tflops("cpu", "float32") == (None, None)
  for row in accelerator.PEAKS.values():
    assert row["source"].startswith("https://")


def test_quick_run_writes_json_and_markdown(tmp_path):
  out = tmp_path / "acc.json"
  r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "accelerator.py"), "--quick",
                      "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result["platform"] == "cpu" and result["quick"]
  for dtype in ("float32", "bfloat16"):
    assert result["matmul"][dtype]["tflops"] > 0
  points = {(p["loss"], p["dtype"], p["form"], p["remat"]): p for p in result["train"]}
  assert set(points) == {("ssim", "float32", "loop", False), ("ssim", "bfloat16", "scan", True),
                         ("full", "float32", "loop", False)}
  for p in points.values():
    assert "error" not in p and "skipped" not in p, p
    assert p["median_s"] > 0 and p["images_per_s"] == pytest.approx(p["batch"] / p["median_s"])
    assert 0 < p["mfu_matmul"] and p["mfu_peak"] is None  # no peak is known for a CPU
    assert p["tflops"] == pytest.approx(p["model_flops"] / p["median_s"] / 1e12)
  loop = points[("ssim", "float32", "loop", False)]
  assert loop["xla_flops"] == loop["model_flops"]
  # A scanned, rematerialised step's own XLA count is not the model's work (a while loop's body
  # may be counted once, remat adds recomputation): its MFU uses the loop form's count, compiled
  # for counting, which is the float32 loop point's count at the same batch and patch.
  scan = points[("ssim", "bfloat16", "scan", True)]
  assert scan["xla_flops"] > 0 and scan["model_flops"] != scan["xla_flops"]
  # (bfloat16 adds its converts to the count: 4% at the quick size)
  assert (scan["batch"], scan["patch"]) == (loop["batch"], loop["patch"])
  assert scan["model_flops"] == pytest.approx(loop["model_flops"], rel=0.1)
  # The paper's loss adds VGG, AlexNet and a ResNet to the step.
  assert points[("full", "float32", "loop", False)]["model_flops"] > 2 * loop["model_flops"]
  assert points[("full", "float32", "loop", False)]["notes"]  # random frozen nets, said
  assert [(i["batch"], i["dtype"]) for i in result["inference"]] == [(1, "float32"),
                                                                     (2, "bfloat16")]
  assert all(i["images_per_s"] > 0 for i in result["inference"])
  assert result["data"][0]["images_per_s"] > 0
  feeding = result["feeding"]
  assert feeding["starves"] == (feeding["pipeline_pixels_per_s"] < feeding["step_pixels_per_s"])
  md = (tmp_path / "acc.md").read_text()
  assert md.count("| ssim |") == 2 and md.count("| full |") == 1
  assert feeding["verdict"] in md and result["cpu"]["model"] in md


def test_a_failing_point_is_recorded_and_the_run_goes_on():
  bench = accelerator.Bench(quick=True, budget_s=60, repeats=1)
  bad = bench.guarded({"what": "bad"}, lambda: {"x": 1 / 0})
  assert "ZeroDivisionError" in bad["error"] and not bad["oom"]
  oom = bench.guarded({}, lambda: (_ for _ in ()).throw(
      RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")))
  assert oom["oom"]
  assert bench.guarded({}, lambda: {"ok": np.float32(1)})["ok"] == 1
  bench.budget_s = 0
  assert bench.guarded({"what": "late"}, lambda: {"x": 1})["skipped"] == "time budget spent"


def test_feeding_verdict_compares_pixels():
  step = {"loss": "ssim", "batch": 64, "patch": 200, "dtype": "bfloat16", "form": "loop",
          "remat": False, "images_per_s": 100.0}
  feed = {"workers": 4, "images_per_s": 300.0, "patch": 100}
  verdict = accelerator.feeding([step], [feed])
  assert verdict["starves"] and verdict["ratio"] == pytest.approx(0.75)
  assert not accelerator.feeding([dict(step, patch=100)], [feed])["starves"]
  assert accelerator.feeding([{"error": "OOM"}], [feed]) == {"verdict": "not measured"}
