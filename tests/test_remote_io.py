"""The commands with gs:// inputs, outputs, reports and weights, on a real GCS-API server
(fake-gcs-server on localhost, tests/conftest.py:gcs_bucket): each remote run must give what
the same run on local folders gives, byte for byte where the output is a file."""

import csv
import importlib
import io
import json
import os

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from support.paths import FIXTURES, REPO, shared_path
from sapnet_jax import compare, convert, derain, evaluate, infer, pretrained
from sapnet_jax.data import imageio, pairs
from sapnet_jax.evaluation import comparison, scoring
from sapnet_jax.models import pdu
from sapnet_jax.utils import fileio
from sapnet_jax.weights import backbones, model_files, registry, torch_layout
from sapnet_jax.weights.pth import PthError, load_safetensors, load_state_dict

pytestmark = pytest.mark.usefixtures("own_compile_cache")  # derain.main turns the cache on

CFG = pdu.PDUConfig(channels=4, reduction=2, stages=2, num_blocks=2)
RNG = np.random.default_rng(11)
SIZE = (18, 22)  # one image size throughout, so the tiny network compiles once per run


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
  # A small random model: the commands do not care which, and it compiles in seconds.
  path = tmp_path_factory.mktemp("w") / "tiny.npz"
  model_files.save_model(pdu.PDUNet(CFG, rngs=nnx.Rngs(0)), path)
  return str(path)


def _rgb(size=SIZE):
  return RNG.integers(0, 256, size + (3,), dtype=np.uint8)


def _pairs(root, n=3):
  """rainy/rain-N.png + clean/norain-00N.png (keys pair across zero padding); rainy = clean +
  noise."""
  for sub in ("rainy", "clean"):
    (root / sub).mkdir(parents=True)
  for i in range(n):
    clean = _rgb()
    rainy = np.clip(clean.astype(int) + RNG.integers(0, 60, clean.shape), 0, 255).astype(np.uint8)
    Image.fromarray(rainy).save(root / "rainy" / f"rain-{i}.png")
    Image.fromarray(clean).save(root / "clean" / f"norain-{i:03d}.png")
  return root


def _same_files(remote, local):
  """The bucket folder holds the same names with the same bytes as the local folder."""
  names = sorted(os.listdir(local))
  assert names and fileio.listdir(remote) == names
  for name in names:
    assert fileio.read_bytes(fileio.join(remote, name)) == (local / name).read_bytes(), name


# ---- images: reading, listing, errors ----------------------------------------------------------
def test_image_listing_on_a_bucket_equals_the_local_listing(tmp_path, gcs_bucket):
  tree = tmp_path / "tree"
  (tree / "sub" / "deeper").mkdir(parents=True)
  (tree / ".hidden").mkdir()
  for rel in ("rain-10.png", "rain-2.jpg", "sub/a.png", "sub/deeper/b.bmp", ".hidden/c.png"):
    Image.fromarray(_rgb((3, 4))).save(tree / rel)
  (tree / ".dot.png").write_bytes(b"hidden file")
  (tree / "notes.txt").write_text("not an image")
  remote = fileio.join(gcs_bucket, "tree")
  fileio.upload_tree(tree, remote)
  for recursive in (False, True):
    got = imageio.image_names(remote, recursive=recursive)
    assert got == imageio.image_names(tree, recursive=recursive), recursive
  assert imageio.image_names(remote) == ["rain-2.jpg", "rain-10.png"]  # natural order
  assert imageio.image_names(remote, recursive=True)[-2:] == ["sub/a.png", "sub/deeper/b.bmp"]
  assert imageio.list_images(remote + "/") == [f"{remote}/rain-2.jpg", f"{remote}/rain-10.png"]
  assert imageio.image_names(fileio.join(gcs_bucket, "nothing")) == []
  with pytest.raises(FileNotFoundError, match=f"{gcs_bucket}/nothing: no such folder"):
    imageio.list_images(fileio.join(gcs_bucket, "nothing"))


def test_remote_image_reads_like_the_local_file(tmp_path, gcs_bucket):
  jpeg = (REPO / "examples" / "rain-064.jpg").read_bytes()
  uri = fileio.join(gcs_bucket, "x", "rain-064.jpg")
  fileio.write_bytes(uri, jpeg)
  np.testing.assert_array_equal(imageio.read_image(uri),
                                imageio.read_image(REPO / "examples" / "rain-064.jpg"))


def test_bad_remote_images_are_named_like_local_ones(gcs_bucket):
  folder = fileio.join(gcs_bucket, "bad")
  fileio.write_bytes(fileio.join(folder, "notes.png"), b"not an image")
  buf = io.BytesIO()
  Image.fromarray(_rgb((64, 64))).save(buf, format="PNG")
  fileio.write_bytes(fileio.join(folder, "cut.png"), buf.getvalue()[: len(buf.getvalue()) // 2])
  fileio.write_bytes(fileio.join(folder, "sub", "x.png"), buf.getvalue())
  cases = {"missing.png": "no such file", "cut.png": "cannot decode image",
           "notes.png": r"not an image file \(format not recognized\)", "sub": "is a directory"}
  for name, message in cases.items():
    with pytest.raises(imageio.ImageReadError, match=f"^{folder}/{name}: {message}"):
      imageio.read_image(fileio.join(folder, name))


def test_write_png_to_a_bucket(tmp_path, gcs_bucket):
  image = _rgb()
  uri = fileio.join(gcs_bucket, "o", "a.png")
  imageio.write_png(uri, image)
  imageio.write_png(tmp_path / "a.png", image)
  assert fileio.read_bytes(uri) == (tmp_path / "a.png").read_bytes()


# ---- derain -----------------------------------------------------------------------------------
def test_derain_bucket_to_bucket_equals_the_local_run(tmp_path, gcs_bucket, tiny_weights, capsys):
  local_in = tmp_path / "in"
  local_in.mkdir()
  for name in ("a.png", "b.png", "c.png"):
    Image.fromarray(_rgb()).save(local_in / name)
  (local_in / "README.txt").write_text("skipped in folders")
  remote_in, remote_out = fileio.join(gcs_bucket, "in"), fileio.join(gcs_bucket, "out")
  fileio.upload_tree(local_in, remote_in)
  remote_weights = fileio.join(gcs_bucket, "w", "tiny.npz")
  with open(tiny_weights, "rb") as f:
    fileio.write_bytes(remote_weights, f.read())
  flags = ["--weights", tiny_weights, "--tile", "0"]
  assert derain.main([str(local_in), "--out", str(tmp_path / "out"), *flags]) == 0
  assert derain.main([remote_in, "--out", remote_out, "--weights", remote_weights,
                      "--tile", "0"]) == 0, capsys.readouterr().err
  assert f"de-rained 3 of 3 images into {remote_out}" in capsys.readouterr().err
  _same_files(remote_out, tmp_path / "out")
  # A single remote file into a local folder, and a trailing slash on a remote folder.
  assert derain.main([fileio.join(remote_in, "b.png"), "--out", str(tmp_path / "one"), *flags]) == 0
  assert (tmp_path / "one" / "b.png").read_bytes() == (tmp_path / "out" / "b.png").read_bytes()
  assert derain.output_paths([remote_in + "/a.png"], remote_out + "/") == {
      remote_in + "/a.png": remote_out + "/a.png"}
  assert derain.find_inputs([remote_in + "/", fileio.join(gcs_bucket, "gone")]) == (
      {f"{remote_in}/{n}.png": f"{n}.png" for n in "abc"},
      [f"{gcs_bucket}/gone: no such file or directory"])


def test_derain_names_missing_and_bad_remote_inputs(tmp_path, gcs_bucket, tiny_weights, capsys):
  good, bad = fileio.join(gcs_bucket, "good.png"), fileio.join(gcs_bucket, "bad.jpg")
  gone, out = fileio.join(gcs_bucket, "gone.png"), fileio.join(gcs_bucket, "out")
  buf = io.BytesIO()
  Image.fromarray(_rgb()).save(buf, format="PNG")
  fileio.write_bytes(good, buf.getvalue())
  fileio.write_bytes(bad, b"\xff\xd8\xff\xe0 truncated jpeg")
  fileio.write_bytes(fileio.join(out, "bad.png"), b"previous result")  # must survive
  code = derain.main([bad, good, gone, "--out", out, "--weights", tiny_weights, "--tile", "0"])
  lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
  assert code == 1 and len(lines) == 2
  assert any(l.startswith(f"error: {bad}: ") for l in lines)
  assert f"error: {gone}: no such file or directory" in lines
  assert fileio.listdir(out) == ["bad.png", "good.png"]
  assert fileio.read_bytes(fileio.join(out, "bad.png")) == b"previous result"


# ---- evaluate and compare ---------------------------------------------------------------------
def _eval_args(weights, rainy, clean, out, join):
  return ["--weights", weights, "--rainy", str(rainy), "--clean", str(clean), "--tile", "0",
          "--json", join(out, "m.json"), "--csv", join(out, "m.csv"),
          "--grid", join(out, "grid.png"), "--grid-count", "2",
          "--save-outputs", join(out, "outputs")]


def test_evaluate_on_bucket_folders_equals_the_local_run(tmp_path, gcs_bucket, tiny_weights):
  local = _pairs(tmp_path / "data")
  remote = fileio.join(gcs_bucket, "data")
  fileio.upload_tree(local, remote)
  rainy, clean = fileio.join(remote, "rainy"), fileio.join(remote, "clean")
  by_local = {r: c for r, c in pairs.pair_folders(local / "rainy", local / "clean").pairs}
  assert pairs.pair_folders(rainy, clean).pairs == [
      (r.replace(str(local), remote), c.replace(str(local), remote)) for r, c in by_local.items()]

  def local_join(*parts):
    return os.path.join(*map(str, parts))
  assert evaluate.main(_eval_args(tiny_weights, local / "rainy", local / "clean",
                                  tmp_path / "out", local_join)) == 0
  out = fileio.join(gcs_bucket, "out")
  assert evaluate.main(_eval_args(tiny_weights, rainy, clean, out, fileio.join)) == 0
  got = json.loads(fileio.read_text(fileio.join(out, "m.json")))
  want = json.loads((tmp_path / "out" / "m.json").read_text())
  assert got["complete"] and got["count"] == 3 and got["rainy"] == rainy
  assert got["means"] == want["means"]
  assert [r["name"] for r in got["images"]] == ["rain-0.png", "rain-1.png", "rain-2.png"]
  rows = list(csv.DictReader(io.StringIO(fileio.read_text(fileio.join(out, "m.csv")))))
  local_rows = list(csv.DictReader(open(tmp_path / "out" / "m.csv")))
  assert [{k: v for k, v in r.items() if k != "seconds"} for r in rows] == \
      [{k: v for k, v in r.items() if k != "seconds"} for r in local_rows]
  grid = fileio.read_bytes(fileio.join(out, "grid.png"))
  assert grid == (tmp_path / "out" / "grid.png").read_bytes()
  _same_files(fileio.join(out, "outputs"), tmp_path / "out" / "outputs")


def test_evaluate_missing_remote_counterpart_is_named(tmp_path, gcs_bucket, tiny_weights, capsys):
  remote = fileio.join(gcs_bucket, "data")
  fileio.upload_tree(_pairs(tmp_path / "data", n=2), remote)
  fileio.write_bytes(fileio.join(remote, "rainy", "rain-9.png"), b"no partner")
  args = ["--weights", "identity", "--rainy", fileio.join(remote, "rainy"),
          "--clean", fileio.join(remote, "clean")]
  assert evaluate.main(args) == 2
  err = capsys.readouterr().err
  assert f"{remote}/rainy/rain-9.png: no clean counterpart in {remote}/clean" in err
  with pytest.raises(FileNotFoundError, match=f"{gcs_bucket}/none: no such folder"):
    pairs.pair_folders(fileio.join(gcs_bucket, "none"), fileio.join(remote, "clean"))


def test_evaluate_workdir_in_a_bucket(tmp_path, gcs_bucket):
  # main --mode=eval on a gs:// workdir: Orbax checkpoints and the reports both in the bucket.
  remote = fileio.join(gcs_bucket, "data")
  fileio.upload_tree(_pairs(tmp_path / "data"), remote)
  workdir = fileio.join(gcs_bucket, "run")
  model = pdu.PDUNet(CFG, rngs=nnx.Rngs(0))
  model_files.save_model(model, fileio.join(workdir, "checkpoints"), step=5)
  config = importlib.import_module("configs.default").get_config()
  config.eval.sets = {"rain100h": {"rainy": fileio.join(remote, "rainy"),
                                   "clean": fileio.join(remote, "clean")}}
  config.eval.tile = 0
  results = scoring.evaluate_workdir(config, workdir)
  out = f"{workdir}/eval/step_5/rain100h"
  assert fileio.listdir(out) == ["grid.png", "metrics.csv", "metrics.json"]
  report = json.loads(fileio.read_text(f"{out}/metrics.json"))
  assert report["step"] == 5 and report["checkpoint"] == f"{workdir}/checkpoints/5"
  assert report["count"] == 3 and report["means"] == results["rain100h"]["means"]
  ev = config.eval
  ev.sets = {"rain100h": {"rainy": str(tmp_path / "data" / "rainy"),
                          "clean": str(tmp_path / "data" / "clean")}}
  local = scoring.evaluate_sets(infer.Derainer(model), ev, str(tmp_path / "eval"), {})
  assert local["rain100h"]["means"] == report["means"]


def test_compare_on_a_bucket_equals_the_local_run(tmp_path, gcs_bucket, tiny_weights):
  local = _pairs(tmp_path / "data", n=2)
  remote = fileio.join(gcs_bucket, "data")
  fileio.upload_tree(local, remote)
  out = fileio.join(gcs_bucket, "cmp")
  common = ["--model", f"tiny={tiny_weights}", "--count", "2", "--tile", "0"]
  assert compare.main(["--rainy", str(local / "rainy"), "--clean", str(local / "clean"),
                       "--out", str(tmp_path / "cmp"), *common]) == 0
  assert compare.main(["--rainy", fileio.join(remote, "rainy"), "--clean",
                       fileio.join(remote, "clean"), "--out", out, *common]) == 0
  got = json.loads(fileio.read_text(fileio.join(out, "comparison.json")))
  assert got["means"] == json.loads((tmp_path / "cmp" / "comparison.json").read_text())["means"]
  for name in ("comparison.md", "grid.png"):
    assert fileio.read_bytes(fileio.join(out, name)) == (tmp_path / "cmp" / name).read_bytes()
  _same_files(fileio.join(out, "tiny", "outputs"), tmp_path / "cmp" / "tiny" / "outputs")
  assert comparison.parse_model("gs://b/runs/semi/") == ("semi", "gs://b/runs/semi/")


# ---- weights ----------------------------------------------------------------------------------
def test_weights_files_read_from_a_bucket(tmp_path, gcs_bucket):
  shipped = os.path.join(registry.WEIGHTS_DIR, "sapnet_rain100h.npz")
  uri = fileio.join(gcs_bucket, "w", "sapnet.npz")
  with open(shipped, "rb") as f:
    fileio.write_bytes(uri, f.read())
  assert pretrained.resolve(uri) == uri
  got = model_files.flatten(model_files.params_dict(pretrained.load(uri)))
  want = model_files.flatten(model_files.params_dict(pretrained.load("sapnet-rain100h")))
  assert got.keys() == want.keys()
  assert all(np.array_equal(np.asarray(got[k]), np.asarray(want[k])) for k in want)
  with pytest.raises(pretrained.UnknownWeightsError, match=f"{gcs_bucket}/w/none.npz"):
    pretrained.resolve(fileio.join(gcs_bucket, "w", "none.npz"))
  got, want = backbones.read_weights(uri), backbones.read_weights(shipped)
  assert sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want)
  for fmt in ("zip", "legacy"):  # both .pth formats, from a file object
    remote = fileio.join(gcs_bucket, "w", f"{fmt}.pth")
    fileio.write_bytes(remote, (FIXTURES / f"pth_{fmt}.pth").read_bytes())
    got, want = load_state_dict(remote), load_state_dict(FIXTURES / f"pth_{fmt}.pth")
    assert list(got) == list(want) and all(np.array_equal(got[k], want[k]) for k in want), fmt
  header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
  remote = fileio.join(gcs_bucket, "w", "m.safetensors")
  fileio.write_bytes(remote, len(header).to_bytes(8, "little") + header
                     + np.array([1.5, -2], np.float32).tobytes())
  np.testing.assert_array_equal(load_safetensors(remote)["a"], [1.5, -2])
  fileio.write_bytes(fileio.join(gcs_bucket, "w", "bad.pth"), b"garbage")
  with pytest.raises(PthError, match=f"^{gcs_bucket}/w/bad.pth: not a readable"):
    load_state_dict(fileio.join(gcs_bucket, "w", "bad.pth"))
  with pytest.raises(torch_layout.ConversionError, match=f"^{gcs_bucket}/w/bad.pth"):
    backbones.load_backbone(fileio.join(gcs_bucket, "w", "bad.pth"), "vgg16")


def test_convert_cli_reads_and_writes_a_bucket(tmp_path, gcs_bucket, capsys):
  heads = {f"lin{k}": RNG.random(c).astype(np.float32)
           for k, c in enumerate((64, 192, 384, 256, 256))}
  buf = io.BytesIO()
  np.savez(buf, **heads)
  src, out = fileio.join(gcs_bucket, "lpips.npz"), fileio.join(gcs_bucket, "conv", "o.npz")
  fileio.write_bytes(src, buf.getvalue())
  assert convert.main([src, "--arch", "lpips_alex", "--out", out]) == 0
  assert f"wrote {out} (lpips_alex, 5 arrays" in capsys.readouterr().out
  again = backbones.load_backbone(out, "lpips_alex")
  assert sorted(again) == sorted(heads) and all(np.array_equal(again[k], heads[k]) for k in heads)


def test_pretrained_load_of_a_remote_pth(gcs_bucket):
  local = shared_path("weights/prenet/Rain100H/PRN6/net_latest.pth")
  uri = fileio.join(gcs_bucket, "prn", "net_latest.pth")
  fileio.write_bytes(uri, local.read_bytes())
  got = model_files.flatten(model_files.params_dict(pretrained.load(uri)))
  want = model_files.flatten(model_files.params_dict(pretrained.load(str(local))))
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)

