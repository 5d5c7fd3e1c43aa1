"""sapnet_jax.export: portable StableHLO and ONNX files that compute what the package computes.

Reference output: `infer.Derainer(model)`, the package's de-raining before 8-bit rounding (on
CPU it runs the "cpu" kernel set; the exports run the "reference" one). Tolerances:
StableHLO 1e-5 (the same XLA ops; only the attention pool's summation order differs, measured
<= 2.4e-7 on the shipped SAPNet), ONNX 1e-4 (onnxruntime's own kernels, measured <= 1e-6).
Most tests use a tiny random PDU model (seconds); the shipped sapnet-rain100h, what users
export, is checked once at full size.
"""

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import pytest
from flax import nnx

from support.paths import REPO
from sapnet_jax import export, infer, models, pretrained
from sapnet_jax.models import msnet, pdu
from sapnet_jax.utils import fileio
from sapnet_jax.weights import model_files

EXAMPLE = REPO / "examples" / "run_stablehlo.py"
ODD_SIZES = ((37, 53), (1, 1), (17, 64))
# A conditional in the lowered program: the "cpu" kernel set's `materialize` is one.
CONDITIONAL = re.compile(r"stablehlo\.(case|if|while)\b")
RNG = np.random.default_rng(3)


def _images(h, w, n=1):
  return RNG.random((n, h, w, 3), dtype=np.float32)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
  # A small random model keeps compile times short. Saved with the CPU kernel set, so the
  # exports must switch it to "reference" themselves.
  path = tmp_path_factory.mktemp("w") / "tiny.npz"
  cfg = pdu.PDUConfig(channels=4, reduction=2, stages=2, num_blocks=2, impl="cpu")
  model_files.save_model(pdu.PDUNet(cfg, rngs=nnx.Rngs(0)), path)
  return str(path)


@pytest.fixture(scope="module")
def tiny_model(tiny_weights):
  model = pretrained.load(tiny_weights)
  assert model.cfg.impl == "cpu"
  return model


@pytest.fixture(scope="module")
def tiny_export(tiny_weights, tmp_path_factory):
  """The CLI's output for the tiny model: (folder, manifest)."""
  out = tmp_path_factory.mktemp("export")
  assert export.main(["--weights", tiny_weights, "--out", str(out)]) == 0
  return out, json.loads((out / export.MANIFEST).read_text())


def test_cli_writes_files_and_manifest(tiny_export, tiny_weights):
  out, manifest = tiny_export
  assert sorted(p.name for p in out.iterdir()) == sorted(
      [export.MANIFEST, *export.FILES.values()])
  digest = hashlib.sha256(Path(tiny_weights).read_bytes()).hexdigest()
  assert manifest["weights"]["sha256"] == digest
  assert manifest["weights"]["source"] == tiny_weights
  assert manifest["model"]["name"] == "tiny.npz"
  assert manifest["model"]["config"]["impl"] == "reference"
  assert manifest["model"]["config"]["channels"] == 4
  assert manifest["input"]["layout"] == "NHWC" and manifest["input"]["range"] == [0.0, 1.0]
  assert manifest["input"]["dtype"] == "float32" and manifest["output"]["clamped"] is False
  assert manifest["input"]["shape"] == ["b", "h", "w", 3]
  assert manifest["versions"]["jax"] == jax.__version__
  assert manifest["versions"]["jaxlib"] == importlib.metadata.version("jaxlib")
  files = manifest["files"]
  assert files["stablehlo"]["platforms"] == list(export.PLATFORMS)
  assert files["stablehlo"]["platforms_failed"] == {}
  assert files["onnx"]["opset"] == export.ONNX_OPSET
  for fmt, entry in files.items():
    blob = (out / entry["file"]).read_bytes()
    assert entry["bytes"] == len(blob) and entry["sha256"] == hashlib.sha256(blob).hexdigest()
    assert entry["check"]["max_abs_diff"] <= export.TOLERANCE[fmt]
    assert entry["check"]["input_shape"] == list(export.CHECK_SHAPE)
  deserialized = jax.export.deserialize(bytearray((out / "model.stablehlo").read_bytes()))
  assert deserialized.platforms == export.PLATFORMS
  assert [str(d) for d in deserialized.in_avals[0].shape] == ["b", "h", "w", "3"]


def _jax_only_venv() -> Path:
  """A virtualenv holding jax, jaxlib (this process's versions), numpy and flatbuffers (which
  jax.export.deserialize needs and jax does not install), nothing of ours; built once under
  the cache and renamed into place, so a half-built one is never used."""
  jax_version, jaxlib_version = jax.__version__, importlib.metadata.version("jaxlib")
  root = Path(fileio.cache_dir()) / "test-venvs"
  python = f"py{sys.version_info.major}.{sys.version_info.minor}"
  final = root / f"jax-{jax_version}-flatbuffers-{python}"
  if (final / "bin" / "python").exists():
    return final
  root.mkdir(parents=True, exist_ok=True)
  building = Path(tempfile.mkdtemp(prefix=".building.", dir=root))
  try:
    subprocess.run([sys.executable, "-m", "venv", str(building / "venv")], check=True,
                   capture_output=True)
    pip = subprocess.run(
        [str(building / "venv" / "bin" / "python"), "-m", "pip", "install", "-q",
         "--disable-pip-version-check", f"jax=={jax_version}", f"jaxlib=={jaxlib_version}",
         "numpy", "flatbuffers"], capture_output=True, text=True, timeout=900)
    if pip.returncode:
      reason = (pip.stderr.strip().splitlines() or ["no output"])[-1]
      pytest.skip(f"pip could not install jax=={jax_version} into a fresh venv (is a package "
                  f"index reachable?): {reason}")
    try:
      os.rename(building / "venv", final)  # a venv runs from where it is renamed to
    except OSError:
      if not (final / "bin" / "python").exists():  # else another process finished first
        raise
  finally:
    shutil.rmtree(building, ignore_errors=True)
  return final


def test_stablehlo_runs_with_jax_and_numpy_alone(tiny_export, tiny_model, tmp_path):
  venv_python = str(_jax_only_venv() / "bin" / "python")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env.update(PYTHONNOUSERSITE="1", JAX_PLATFORMS="cpu")
  for module in ("sapnet_jax", "flax"):  # the loader really needs neither
    run = subprocess.run([venv_python, "-c", f"import {module}"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert run.returncode != 0 and "ModuleNotFoundError" in run.stderr, module
  out, _ = tiny_export
  derainer = infer.Derainer(tiny_model)
  for h, w in ODD_SIZES:
    image = _images(h, w)[0]
    np.save(tmp_path / "in.npy", image)  # one (H, W, 3) image: the script's single-image path
    run = subprocess.run([venv_python, str(EXAMPLE), str(out / "model.stablehlo"),
                          str(tmp_path / "in.npy"), str(tmp_path / "out.npy")],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    got = np.load(tmp_path / "out.npy")
    want = derainer(image, tile=None)
    assert got.shape == want.shape == (h, w, 3) and got.dtype == np.float32
    assert np.max(np.abs(got - want)) <= 1e-5, (h, w)


def test_onnx_dynamic_sizes_in_onnxruntime(tiny_export, tiny_model):
  import onnxruntime as ort  # the test extra has it
  out, _ = tiny_export
  proto = onnx.load(str(out / "model.onnx"))
  onnx.checker.check_model(proto, full_check=True)
  assert {o.domain: o.version for o in proto.opset_import}[""] == export.ONNX_OPSET
  dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
  assert dims == ["b", "h", "w", 3]
  # The CPU kernel set's conditional (`materialize`) would become an If node here.
  assert "If" not in {node.op_type for node in proto.graph.node}
  session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
  derainer = infer.Derainer(tiny_model)
  for (h, w), n in zip(ODD_SIZES, (1, 3, 2)):  # one session, several sizes and batches
    images = _images(h, w, n)
    got = session.run(None, {"image": images})[0]
    want = np.asarray(derainer.batch(images))
    assert got.shape == (n, h, w, 3)
    assert np.max(np.abs(got - want)) <= 1e-4, (n, h, w)


def test_cpu_kernel_set_does_not_leak(tiny_model):
  spec = jax.ShapeDtypeStruct((*jax.export.symbolic_shape("b, h, w"), 3), jnp.float32)
  raw = jax.export.export(jax.jit(export.forward_fn(tiny_model)), platforms=("cpu",))(spec)
  assert CONDITIONAL.search(raw.mlir_module())  # the check below can see the CPU set
  # One platform: the multi-platform file dispatches on the platform with `case` ops itself.
  blob, _ = export.export_stablehlo(tiny_model, platforms=("cpu",))
  assert not CONDITIONAL.search(jax.export.deserialize(bytearray(blob)).mlir_module())


def test_platform_fallback_names_the_platform():
  def lower(platforms):
    if "tpu" in platforms:
      raise NotImplementedError("no rule for tpu")
    return jax.export.export(jax.jit(jnp.sin), platforms=platforms)(
        jax.ShapeDtypeStruct((2,), jnp.float32))

  exported, failed = export.lower_portable(lower, ("cpu", "cuda", "tpu"))
  assert exported.platforms == ("cpu", "cuda")
  assert list(failed) == ["tpu"] and "no rule for tpu" in failed["tpu"]
  with pytest.raises(export.ExportError, match="cannot lower for tpu: NotImplementedError"):
    export.lower_portable(lower, ("tpu",))


def test_check_fails_loudly_on_a_different_model(tiny_model):
  other = models.build(dataclasses.replace(tiny_model.cfg, impl="reference"), nnx.Rngs(1))
  blob, _ = export.export_stablehlo(other, platforms=("cpu",))
  with pytest.raises(export.ExportError, match=r"stablehlo: max \|difference\|.*over"):
    images = export.check_image((1, 5, 7, 3))
    export.check_stablehlo(blob, images, np.asarray(infer.Derainer(tiny_model).batch(images)))


@pytest.mark.parametrize("cfg", [
    pdu.PDUConfig(attention="none", dilation=False, channels=4, stages=2, num_blocks=2),
    pdu.PDUConfig(attention="none", dilation=False, recurrent=False, channels=4, stages=2,
                  num_blocks=2)], ids=["prenet", "prn"])
def test_prenet_and_prn_export(cfg, tmp_path):
  manifest = export.write_exports(models.build(cfg, nnx.Rngs(0)), str(tmp_path), name="x")
  for fmt, entry in manifest["files"].items():
    assert entry["check"]["max_abs_diff"] <= export.TOLERANCE[fmt]
  assert (tmp_path / "model.onnx").exists() and (tmp_path / "model.stablehlo").exists()


def test_msnet_stablehlo_exports_and_onnx_is_refused_naming_the_op(tmp_path):
  model = models.build(msnet.MSNetConfig(units=2, scales=2, cclb_depth=1, channels=4,
                                         feature_layers=1), nnx.Rngs(0))
  # StableHLO: ceil-mode pooling and the upsampling straight to (h, w) lower with symbolic
  # sizes, and the export checks itself against Derainer on CHECK_SHAPE.
  manifest = export.write_exports(model, str(tmp_path / "hlo"), formats=("stablehlo",), name="ms")
  assert manifest["files"]["stablehlo"]["check"]["max_abs_diff"] <= export.TOLERANCE["stablehlo"]
  # ONNX: jax2onnx's resize plugin cannot take symbolic sizes; the error names the plugin.
  with pytest.raises(export.ExportError, match=r"jax2onnx cannot convert the msnet network"
                                               r".*plugins/.*\.py"):
    export.export_onnx(model)
  with pytest.raises(export.ExportError):
    export.write_exports(model, str(tmp_path / "out"), name="ms")
  assert not (tmp_path / "out").exists()  # nothing half-written


def test_shipped_sapnet_full_size(tmp_path):
  model = pretrained.load(pretrained.DEFAULT)
  weights = pretrained.resolve(pretrained.DEFAULT)
  # Checks on CHECK_SHAPE (2 x 19 x 23) inside, and raises over tolerance.
  manifest = export.write_exports(model, str(tmp_path), name=pretrained.DEFAULT,
                                  weights=weights, source=pretrained.DEFAULT)
  assert manifest["weights"]["sha256"] == hashlib.sha256(Path(weights).read_bytes()).hexdigest()
  assert manifest["model"]["architecture"] == "sapnet"
  spec = importlib.util.spec_from_file_location("run_stablehlo", EXAMPLE)
  loader = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(loader)
  image = _images(37, 53)
  want = infer.Derainer(model)(image[0], tile=None)
  got = loader.derain(str(tmp_path / "model.stablehlo"), image)[0]
  assert np.max(np.abs(got - want)) <= 1e-5
  got = export.run_onnx((tmp_path / "model.onnx").read_bytes(), image)[0]
  assert np.max(np.abs(got - want)) <= 1e-4


@pytest.mark.parametrize("args, message", [
    (["--format", "stablehlo,pdf"], "--format: unknown format 'pdf'"),
    (["--weights", "no-such-weights"], "--weights: 'no-such-weights' is neither"),
    (["--out", "{file}/sub"], "--out {file}/sub: cannot create the folder"),
])
def test_bad_arguments_exit_2_naming_them(args, message, tiny_weights, tmp_path, capsys):
  (tmp_path / "file").write_text("a file, not a folder")
  out = str(tmp_path / "out")
  args = [a.format(file=tmp_path / "file") for a in args]
  argv = ["--weights", tiny_weights, "--out", out] + args
  assert export.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and message.format(file=tmp_path / "file") in err, err
  assert not Path(out).exists()


def test_missing_onnx_dependencies_say_how_to_install(tiny_weights, tmp_path, monkeypatch,
                                                      capsys):
  monkeypatch.setitem(sys.modules, "jax2onnx", None)  # what `import` sees when not installed
  out = tmp_path / "out"
  assert export.main(["--weights", tiny_weights, "--out", str(out), "--format", "onnx"]) == 2
  assert 'pip install -e ".[export]"' in capsys.readouterr().err
  assert not out.exists() or not any(out.iterdir())


def test_folder_digest_covers_names_and_contents(tmp_path):
  (tmp_path / "w" / "sub").mkdir(parents=True)
  (tmp_path / "w" / "a").write_bytes(b"1")
  (tmp_path / "w" / "sub" / "b").write_bytes(b"2")
  first = export.weights_digest(str(tmp_path / "w"))
  assert first == export.weights_digest(str(tmp_path / "w"))
  (tmp_path / "w" / "sub" / "b").write_bytes(b"3")
  changed = export.weights_digest(str(tmp_path / "w"))
  (tmp_path / "w" / "sub" / "b").rename(tmp_path / "w" / "sub" / "c")
  assert len({first, changed, export.weights_digest(str(tmp_path / "w"))}) == 3


def test_doc_shows_the_example_loader():
  doc = (REPO / "docs" / "export.md").read_text()
  blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
  assert EXAMPLE.read_text() in blocks
