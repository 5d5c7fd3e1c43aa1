"""The derain command: every odd input kind, errors that name files, atomic outputs."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx
from PIL import Image, ImageCms

from support import hostile
from support.paths import REPO, shared_path
from support.imagefiles import odd_images
from sapnet_jax import derain
from sapnet_jax.data.imageio import read_image
from sapnet_jax.models import pdu
from sapnet_jax.runtime import compile_cache
from sapnet_jax.weights import model_files

RNG = np.random.default_rng(1)


pytestmark = pytest.mark.usefixtures("own_compile_cache")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
  # A small random model keeps compile times short; the command does not care which.
  path = tmp_path_factory.mktemp("w") / "tiny.npz"
  cfg = pdu.PDUConfig(channels=4, reduction=2, stages=2, num_blocks=2)
  model_files.save_model(pdu.PDUNet(cfg, rngs=nnx.Rngs(0)), path)
  return str(path)


def _odd_inputs(folder):
  """One file per odd kind; returns {stem: expected (height, width)}."""
  shapes = odd_images(folder, RNG)
  (folder / "README.txt").write_text("not an image, and not named .png: skipped in folders")
  return {os.path.splitext(name)[0]: hw for name, hw in shapes.items()}


def test_every_odd_kind(tmp_path, tiny_weights, capsys):
  expected = _odd_inputs(tmp_path / "in")
  code = derain.main([str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--weights", tiny_weights])
  assert code == 0, capsys.readouterr().err
  written = sorted(p.name for p in (tmp_path / "out").iterdir())
  assert written == sorted(f"{stem}.png" for stem in expected)
  for stem, (h, w) in expected.items():
    im = Image.open(tmp_path / "out" / f"{stem}.png")
    assert im.mode == "RGB" and im.size == (w, h), stem


def test_bad_files_are_named_and_others_still_done(tmp_path, tiny_weights, capsys):
  good = tmp_path / "good.png"
  Image.fromarray(RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(good)
  corrupt = tmp_path / "corrupt.jpg"
  corrupt.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
  text = tmp_path / "notes.txt"
  text.write_text("hello")
  out = tmp_path / "out"
  out.mkdir()
  (out / "corrupt.png").write_bytes(b"previous result")  # must survive the failed file
  code = derain.main([str(corrupt), str(good), str(text), str(tmp_path / "gone.png"),
                      "--out", str(out), "--weights", tiny_weights])
  err = capsys.readouterr().err
  assert code == 1
  lines = [line for line in err.splitlines() if line.startswith("error:")]
  assert len(lines) == 3 and all(len(line.splitlines()) == 1 for line in lines)
  assert any("corrupt.jpg" in line for line in lines)
  assert any("notes.txt: not an image" in line for line in lines)
  assert any("gone.png: no such file" in line for line in lines)
  assert (out / "good.png").exists()
  assert (out / "corrupt.png").read_bytes() == b"previous result"
  assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_name_clash_stops_before_writing(tmp_path, tiny_weights, capsys):
  for sub in ("a", "b"):
    (tmp_path / sub).mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / sub / "x.png")
  code = derain.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "out"),
                      "--weights", tiny_weights])
  assert code == 2
  assert "would both be written to" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_unknown_weights(tmp_path, capsys):
  assert derain.main([str(REPO / "examples"), "--out", str(tmp_path), "--weights", "nope"]) == 2
  assert "registered weights name" in capsys.readouterr().err


def test_tiling_flags_match_whole_image_on_local_net(tmp_path, capsys):
  cfg = pdu.PDUConfig(attention="none", dilation=False, stages=1, num_blocks=1, channels=4)
  weights = tmp_path / "local.npz"
  model_files.save_model(pdu.PDUNet(cfg, rngs=nnx.Rngs(0)), weights)
  Image.fromarray(RNG.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(tmp_path / "big.png")
  overlap = 4 * cfg.receptive_radius + 4
  for name, flags in (("whole", ["--tile", "0"]), ("tiled", ["--tile", str(overlap + 8), "--overlap", str(overlap)])):
    assert derain.main([str(tmp_path / "big.png"), "--out", str(tmp_path / name),
                        "--weights", str(weights), *flags]) == 0
  whole = np.asarray(Image.open(tmp_path / "whole" / "big.png")).astype(int)
  tiled = np.asarray(Image.open(tmp_path / "tiled" / "big.png")).astype(int)
  assert np.abs(whole - tiled).max() <= 1  # equal up to rounding of float sums at a level edge


def test_official_weights_remove_rain_on_rain100h(tmp_path):
  rainy = shared_path("data/rain100h/rainy")
  names = ["001.png", "050.png", "100.png"]
  assert derain.main([str(rainy / n) for n in names] + ["--out", str(tmp_path)]) == 0
  for n in names:
    clean = read_image(rainy.parent / "clean" / n)
    before = 10 * np.log10(1 / np.mean((read_image(rainy / n) - clean) ** 2))
    after = 10 * np.log10(1 / np.mean((read_image(tmp_path / n) - clean) ** 2))
    assert after > before + 8, (n, before, after)


def _tree(folder):
  return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_recursive_mirrors_folders_and_skips_hidden_and_its_output(tmp_path, tiny_weights, capsys):
  photos = tmp_path / "photos"
  for rel in ("a.png", "trip/b.jpg", "trip/day 2/a.png", ".thumbs/c.png", "trip/.git/d.png"):
    (photos / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (9, 13, 3), dtype=np.uint8)).save(photos / rel)
  out = photos / "derained"  # inside the input: a second run must not de-rain the first's results
  want = ["a.png", "trip/b.png", "trip/day 2/a.png"]
  for _ in range(2):
    assert derain.main([str(photos), "-r", "--out", str(out), "--weights", tiny_weights]) == 0
    assert _tree(out) == want
    assert "de-rained 3 of 3 images" in capsys.readouterr().err
  assert derain.main([str(photos), "--out", str(tmp_path / "flat"), "--weights", tiny_weights]) == 0
  assert _tree(tmp_path / "flat") == ["a.png"]  # without --recursive: the folder's own files


def test_recursive_name_clash_is_per_relative_path(tmp_path, tiny_weights, capsys):
  for rel in ("one/sub/x.png", "two/sub/x.jpg", "two/x.png"):
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / rel)
  code = derain.main([str(tmp_path / "one"), str(tmp_path / "two"), "-r", "--out",
                      str(tmp_path / "out"), "--weights", tiny_weights])
  assert code == 2 and not (tmp_path / "out").exists()
  err = capsys.readouterr().err
  assert f"would both be written to {tmp_path / 'out' / 'sub' / 'x.png'}" in err
  assert derain.output_paths(
      [str(tmp_path / "two/x.png"), str(tmp_path / "two/sub/x.jpg")], "O", ".jpg",
      {str(tmp_path / "two/x.png"): "x.png", str(tmp_path / "two/sub/x.jpg"): "sub/x.jpg"}) == {
          str(tmp_path / "two/x.png"): os.path.join("O", "x.jpg"),
          str(tmp_path / "two/sub/x.jpg"): os.path.join("O", "sub", "x.jpg")}


def _camera_jpeg(path):
  """A camera-like JPEG: stored 21x34 with orientation 6 (shown 34x21), EXIF make, model and
  date, and an sRGB ICC profile."""
  exif = Image.Exif()
  exif.update({0x010F: "RainCam", 0x0110: "Model 7", 0x0132: "2024:05:06 07:08:09", 0x0112: 6})
  icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
  Image.fromarray(RNG.integers(0, 256, (21, 34, 3), dtype=np.uint8)).save(
      path, quality=95, exif=exif, icc_profile=icc)
  return icc


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_exif_and_icc_kept_upright(tmp_path, tiny_weights, fmt):
  icc = _camera_jpeg(tmp_path / "photo.jpg")
  assert derain.main([str(tmp_path / "photo.jpg"), "--out", str(tmp_path / "out"), "--format",
                      fmt, "--weights", tiny_weights]) == 0
  with Image.open(tmp_path / "out" / f"photo.{fmt}") as im:
    assert im.format == {"png": "PNG", "jpg": "JPEG"}[fmt] and im.size == (21, 34)
    exif = im.getexif()
    assert (exif.get(0x010F), exif.get(0x0110), exif.get(0x0132)) == (
        "RainCam", "Model 7", "2024:05:06 07:08:09")
    assert exif.get(0x0112, 1) == 1  # the pixels are upright: no rotation left to apply
    assert im.info.get("icc_profile") == icc


def test_jpeg_quality_is_used_and_checked(tmp_path, tiny_weights, capsys):
  Image.fromarray(RNG.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "n.png")
  sizes = {}
  for q in (10, 95):
    assert derain.main([str(tmp_path / "n.png"), "--out", str(tmp_path / str(q)), "--format",
                        "jpg", "--quality", str(q), "--weights", tiny_weights]) == 0
    sizes[q] = (tmp_path / str(q) / "n.jpg").stat().st_size
  assert sizes[10] < sizes[95] / 2
  for bad in ("0", "101"):
    with pytest.raises(SystemExit) as exit_info:
      derain.main([str(tmp_path / "n.png"), "--out", str(tmp_path), "--quality", bad])
    assert exit_info.value.code == 2
    assert f"--quality: must be in 1..100, got {bad}" in capsys.readouterr().err


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_tile_bar_on_a_terminal_and_quiet_in_logs(tmp_path, tiny_weights, monkeypatch, capsys):
  Image.fromarray(RNG.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(tmp_path / "big.png")
  Image.fromarray(RNG.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "small.png")
  args = [str(tmp_path / "big.png"), str(tmp_path / "small.png"), "--out", str(tmp_path / "out"),
          "--weights", tiny_weights, "--tile", "40", "--overlap", "8"]  # big: 2 x 3 tiles
  assert derain.main(args) == 0
  logged = capsys.readouterr().err
  assert logged.splitlines()[-1].startswith("de-rained 2 of 2 images")
  assert "/6" not in logged and "de-raining" not in logged  # stderr is not a terminal here
  terminal = _Terminal()
  monkeypatch.setattr(sys, "stderr", terminal)
  assert derain.main(args) == 0
  shown = terminal.getvalue()
  assert "big.png:   0%|          | 0/6 [00:00<?, ?tile/s]" in shown  # tqdm throttles the rest
  assert "small.png:" not in shown  # one tile: the image bar is enough
  assert "de-raining: 100%" in shown and "2/2" in shown


def _cache_run(folder, cache, *flags, env=None):
  env = {**{k: v for k, v in os.environ.items() if k != compile_cache.ENV},
         "SAPNET_JAX_CACHE": str(cache), "JAX_PLATFORMS": "cpu", "JAX_LOG_COMPILES": "1",
         "SAPNET_JAX_CPU_CONVS": "default", **(env or {})}  # no kernel measurement: seconds
  proc = subprocess.run([sys.executable, "-m", "sapnet_jax.derain", str(folder / "in.png"),
                         "--out", str(folder / "out"), *flags], env=env, capture_output=True,
                        text=True, cwd=REPO, check=False)
  assert proc.returncode == 0, proc.stderr
  return proc.stderr


def _entries(folder):
  return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_compile_cache_across_runs(tmp_path, tiny_weights):
  Image.fromarray(RNG.integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(tmp_path / "in.png")
  cache, folder = tmp_path / "cache", tmp_path / "cache" / "jax_compile"
  first = _cache_run(tmp_path, cache, "--weights", tiny_weights)
  entries = _entries(folder)
  assert entries and "Persistent compilation cache hit" not in first
  second = _cache_run(tmp_path, cache, "--weights", tiny_weights)
  assert _entries(folder) == entries  # nothing new to compile
  # JAX_LOG_COMPILES logs every program that is compiled or loaded, and each cache hit.
  programs = second.count("WARNING:jax._src.interpreters.pxla:Compiling ")
  assert programs >= 2 and second.count("Persistent compilation cache hit") == programs
  # Off: nothing written, even where JAX itself would read $JAX_COMPILATION_CACHE_DIR.
  off = _cache_run(tmp_path, tmp_path / "other", "--weights", tiny_weights, "--no-compile-cache",
                   env={compile_cache.ENV: str(tmp_path / "env_cache")})
  assert not (tmp_path / "other" / "jax_compile").exists() and not (tmp_path / "env_cache").exists()
  assert "Persistent compilation cache hit" not in off


def _snapshot(folder):
  return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_never_writes_over_its_inputs(tmp_path, tiny_weights, capsys):
  photos = tmp_path / "photos"
  photos.mkdir()
  for name in ("a.png", "b.png"):
    Image.fromarray(RNG.integers(0, 256, (9, 13, 3), dtype=np.uint8)).save(photos / name)
  (tmp_path / "link").symlink_to(photos, target_is_directory=True)
  before = _snapshot(photos)
  # The folder itself, a link to it, and a single file whose result lands on another input.
  for args in ([str(photos), "--out", str(photos)],
               [str(photos), "--out", str(tmp_path / "link")],
               [str(photos / "a.png"), str(tmp_path / "link" / "b.png"), "--out",
                str(photos)]):
    assert derain.main([*args, "--weights", tiny_weights]) == 2, args
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "would overwrite an input" in err, err
    assert _snapshot(photos) == before  # byte-identical, and no new file (a temporary one)


def test_metadata_jpeg_cannot_hold_is_dropped_and_the_batch_goes_on(tmp_path, tiny_weights,
                                                                    capsys):
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "big_exif.png").write_bytes(hostile.png_with_big_exif())
  Image.fromarray(RNG.integers(0, 256, (9, 13, 3), dtype=np.uint8)).save(tmp_path / "in" / "z.png")
  out = tmp_path / "out"
  assert derain.main([str(tmp_path / "in"), "--out", str(out), "--format", "jpg", "--weights",
                      tiny_weights]) == 0
  err = capsys.readouterr().err
  warnings = [line for line in err.splitlines() if line.startswith("warning:")]
  assert len(warnings) == 1 and "big_exif.jpg: EXIF metadata" in warnings[0], err
  assert "Traceback" not in err and "error:" not in err
  with Image.open(out / "big_exif.jpg") as im:
    assert im.format == "JPEG" and im.size == (24, 16) and not im.info.get("exif")
  assert (out / "z.jpg").exists()


def test_undocumented_formats_are_refused_by_name(tmp_path, tiny_weights, capsys):
  folder = tmp_path / "in"
  written = hostile.write_corpus(folder, ("unsupported",))
  Image.fromarray(RNG.integers(0, 256, (9, 13, 3), dtype=np.uint8)).save(folder / "good.png")
  assert derain.main([str(folder), "--out", str(tmp_path / "out"), "--weights",
                      tiny_weights]) == 1
  lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
  assert len(lines) == len(written)
  for name in written:
    fmt = name.split("_")[0].upper()
    assert any(f"{name}: {fmt} images are not accepted" in line for line in lines), (name, lines)
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png"]


def test_a_file_name_cannot_forge_a_line(tmp_path, tiny_weights, capsys):
  folder = tmp_path / "in"
  folder.mkdir()
  (folder / hostile.FORGING_NAME).write_bytes(hostile.not_an_image())
  (folder / "cut\r.png").write_bytes(hostile.truncated(hostile.png(32, 32)))
  Image.fromarray(RNG.integers(0, 256, (9, 13, 3), dtype=np.uint8)).save(folder / "ok.png")
  assert derain.main([str(folder), "--out", str(tmp_path / "out"), "--weights",
                      tiny_weights]) == 1
  err = capsys.readouterr().err
  lines = err.splitlines()
  assert "\r" not in err
  assert len([line for line in lines if line.startswith("error:")]) == 2  # one per bad file
  assert any("evil\\nerror: fake.png: not an image" in line for line in lines), lines
  assert any("cut\\r.png: cannot decode" in line for line in lines), lines
  assert lines[-1] == f"de-rained 1 of 3 images into {tmp_path / 'out'}"


def test_a_failed_write_is_one_error_and_the_others_are_written(tmp_path, tiny_weights, capsys):
  for name in ("a.png", "b.png"):
    Image.fromarray(RNG.integers(0, 256, (9, 13, 3), dtype=np.uint8)).save(tmp_path / name)
  out = tmp_path / "out"
  (out / "a.png").mkdir(parents=True)  # a folder where a's result would go
  assert derain.main([str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--out", str(out),
                      "--weights", tiny_weights]) == 1
  lines = capsys.readouterr().err.splitlines()
  assert [line for line in lines if line.startswith("error:")] == [
      line for line in lines if line.startswith(f"error: {out / 'a.png'}: cannot write")]
  assert len(lines) == 2 and (out / "b.png").is_file() and (out / "a.png").is_dir()
  assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("flags,message", [
    (["--tile", "48"], "--overlap 64 must be smaller than --tile 48"),
    (["--tile", "-1"], "argument --tile: must be >= 0, got -1"),
    (["--tile", "32", "--overlap", "-4"], "argument --overlap: must be >= 0, got -4"),
    (["--scale", "0.5"], "argument --scale: must be 'auto' or a number from 1 to 16, got '0.5'"),
    (["--scale", "big"], "argument --scale: must be 'auto' or a number from 1 to 16, got 'big'"),
    (["--stages", "0"], "argument --stages: must be in 1..6, got 0"),
])
def test_bad_flags_stop_before_any_work(tmp_path, capsys, flags, message):
  Image.fromarray(RNG.integers(0, 256, (9, 13, 3), dtype=np.uint8)).save(tmp_path / "a.png")
  with pytest.raises(SystemExit) as exit_info:
    derain.main([str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), *flags])
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err.splitlines()[-1]
  assert not (tmp_path / "out").exists()


def test_more_stages_than_the_model_has_is_one_line(tmp_path, tiny_weights, capsys):
  Image.fromarray(RNG.integers(0, 256, (9, 13, 3), dtype=np.uint8)).save(tmp_path / "a.png")
  code = derain.main([str(tmp_path / "a.png"), "--out", str(tmp_path / "out"),
                      "--weights", tiny_weights, "--stages", "3"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and err == ["error: stages must be from 1 to 2 (the stages this model was "
                               "trained with), got 3"]


@pytest.mark.parametrize("scale", ["auto", "2.5"])
def test_scale_keeps_every_size_and_auto_says_its_choice(tmp_path, tiny_weights, capsys, scale):
  expected = _odd_inputs(tmp_path / "in")
  code = derain.main([str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--weights",
                      tiny_weights, "--scale", scale, "--stages", "1"])
  err = capsys.readouterr().err
  assert code == 0, err
  for stem, (h, w) in expected.items():
    assert read_image(tmp_path / "out" / f"{stem}.png").shape == (h, w, 3)
  said = [line for line in err.splitlines() if line.endswith("(auto)")]
  assert len(said) == (len(expected) if scale == "auto" else 0), err
