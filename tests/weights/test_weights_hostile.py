"""Weight files are checked before they are trusted: crafted, truncated and corrupt files.

The .pth cases are written by tests/support/pthfiles.py (torch's layout, any header); the npz and
Orbax cases are real files of a tiny model, then cut or bit-flipped. A reader that crashes the
process must fail a test instead of killing pytest, so the crafted headers and the fuzz run in a
subprocess with a memory limit; the commands are run as users run them (python -m ...).

Run as a script (`PYTHONPATH=tests python tests/weights/test_weights_hostile.py SEED COUNT DIR`)
this file is the fuzz worker: it mutates small valid files and prints one JSON line of outcomes.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from support import pthfiles
from support.paths import REPO, TESTS
from support.ports import free_port

IMAGE = REPO / "examples" / "rain-064.jpg"


def _python(*args: str, timeout: float = 300, cwd: Path | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
  # The tests folder first, so that a worker finds tests/support; the working directory decides
  # which sapnet_jax is imported (the tree under test, or another checkout).
  env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(
      [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])])}
  return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                        timeout=timeout, cwd=cwd or REPO, env=env)


def _one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
  """The command failed with exit 2 and exactly one stderr line, `error: ...` naming all
  `fragments`, and no traceback."""
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith("error: ")]
  assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert len(errors) == 1, lines
  for fragment in fragments:
    assert fragment in errors[0], (fragment, errors[0])
  return errors[0]


# ---- crafted .pth headers (in a subprocess: the unchecked reader segfaulted) --------------------
def _tensor(**fields) -> dict:
  return {"w": pthfiles.Tensor(np.arange(4, dtype=np.float32), **fields)}


HOSTILE_HEADERS = {
    # name: (tensors, what the error says)
    "negative_stride": (_tensor(size=(4,), stride=(-2**40,), offset=3), "negative stride"),
    "zero_stride_1gib": (_tensor(size=(2**14, 2**14), stride=(0, 0)), "zero stride"),
    "overlapping_4gib": (_tensor(size=(2**15, 2**15), stride=(1, 1)), "overruns"),
    "offset_past_end": (_tensor(size=(4,), offset=2), "overruns"),
    "negative_offset": (_tensor(size=(2,), offset=-3), "negative offset"),
    "negative_size": (_tensor(size=(-4,)), "negative offset or size"),
    "claims_more_elements": (_tensor(storage_numel=2**40), "storage 0"),
    "unknown_storage": (_tensor(storage_type="ComplexFloatStorage"), "unsupported tensor storage"),
    "huge_stride_size_one": (_tensor(size=(1, 4), stride=(2**62, 1)), None),  # valid: never moves
}


def _write_headers(folder: Path) -> dict[str, Path]:
  paths = {}
  for name, (tensors, _) in HOSTILE_HEADERS.items():
    for fmt, write in (("zip", pthfiles.zip_pth), ("legacy", pthfiles.legacy_pth)):
      paths[f"{name}.{fmt}"] = folder / f"{name}.{fmt}.pth"
      paths[f"{name}.{fmt}"].write_bytes(write(tensors))
  return paths


_LOAD_EACH = """
import json, os, resource, sys
from sapnet_jax.weights.pth import PthError, load_state_dict
# A bad header may not grow the process by 1 GiB (the unchecked reader made 1 and 4 GiB arrays).
with open("/proc/self/statm") as f:
  mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
resource.setrlimit(resource.RLIMIT_AS, (mapped + (1 << 30), resource.RLIM_INFINITY))
for path in sys.argv[1:]:
  try:
    shapes = {k: list(v.shape) for k, v in load_state_dict(path).items()}
    print(json.dumps([path, "ok", repr(shapes)]), flush=True)
  except PthError as e:
    print(json.dumps([path, "PthError", str(e)]), flush=True)
  except BaseException as e:
    print(json.dumps([path, type(e).__name__, str(e)[:200]]), flush=True)
"""


def test_crafted_pth_headers_are_refused_naming_the_file(tmp_path):
  paths = _write_headers(tmp_path)
  assert max(p.stat().st_size for p in paths.values()) < 700  # a few hundred bytes each
  result = _python("-c", _LOAD_EACH, *map(str, paths.values()), timeout=120)
  assert result.returncode == 0, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
  outcomes = {Path(p).name: (kind, msg) for p, kind, msg in map(json.loads,
                                                                result.stdout.splitlines())}
  assert len(outcomes) == len(paths)
  for key, path in paths.items():
    kind, message = outcomes[path.name]
    expected = HOSTILE_HEADERS[key.rsplit(".", 1)[0]][1]
    if expected is None:
      assert kind == "ok" and "[1, 4]" in message, (key, kind, message)
    else:
      assert kind == "PthError", (key, kind, message)
      assert message.startswith(f"{path}: ") and expected in message, (key, message)
      assert "\n" not in message


@pytest.mark.parametrize("command", ["derain", "serve"])
def test_negative_stride_pth_is_an_error_not_a_segfault(tmp_path, command, own_compile_cache):
  bad = tmp_path / "neg.pth"
  bad.write_bytes(pthfiles.legacy_pth(HOSTILE_HEADERS["negative_stride"][0]))
  args = ([str(IMAGE), "--out", str(tmp_path / "out")] if command == "derain"
          else ["--host", "127.0.0.1", "--port", str(free_port())])
  result = _python("-m", f"sapnet_jax.{command}", *args, "--weights", str(bad), timeout=120)
  _one_error_line(result, str(bad), "negative stride")


def _safetensors_header(header: dict) -> bytes:
  raw = json.dumps(header).encode()
  return struct.pack("<Q", len(raw)) + raw


@pytest.mark.parametrize("header", [
    b"\xff" * 8,  # a header of 2**64 - 1 bytes in a file of a few
    struct.pack("<Q", 2) + b"[]",
    _safetensors_header({"w": {"dtype": "F32", "shape": [4], "data_offsets": [8, -4]}}),
    _safetensors_header({"w": {"dtype": "F32", "shape": [2**40], "data_offsets": [0, 16]}}),
])
def test_crafted_safetensors_are_refused_naming_the_file(tmp_path, header):
  from sapnet_jax.weights.pth import PthError, load_safetensors
  path = tmp_path / "w.safetensors"
  path.write_bytes(header + bytes(16))
  with pytest.raises(PthError, match=r"w\.safetensors: "):
    load_safetensors(path)


def test_well_formed_written_files_read_back(tmp_path):
  # The writer above is torch's layout: its well-formed files read as their arrays.
  from sapnet_jax.weights.pth import load_state_dict
  tensors = pthfiles.small_state_dict()
  for fmt, write in (("zip", pthfiles.zip_pth), ("legacy", pthfiles.legacy_pth)):
    (tmp_path / f"{fmt}.pth").write_bytes(write(tensors))
    got, want = load_state_dict(tmp_path / f"{fmt}.pth"), pthfiles.expected_arrays(tensors)
    assert list(got) == list(want)
    for key in want:
      assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key]), key


# ---- truncated and corrupt weights through the commands --------------------------------------
@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
  """A tiny model saved as .npz and as an Orbax checkpoint, by this package."""
  from sapnet_jax import models
  from sapnet_jax.weights import model_files
  from sapnet_jax.models import pdu
  folder = tmp_path_factory.mktemp("weights")
  # Random weights put into the abstract model: building it eagerly costs far more time.
  model = model_files.abstract_model(models.config_to_dict(
      pdu.PDUConfig(channels=8, reduction=4, stages=2)))
  rng = np.random.default_rng(3)
  shapes = model_files.flatten(model_files.params_dict(model))
  model_files.fill_params(model, model_files.unflatten(
      {k: rng.normal(0, 0.1, v.shape).astype(np.float32) for k, v in shapes.items()}), "random")
  model_files.save_model(model, folder / "w.npz")
  model_files.save_model(model, folder / "ck")
  return folder


def _largest_file(folder: Path) -> Path:
  return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _orbax_data_files(step: Path) -> list[Path]:
  # The array chunks (OCDBT data files), largest first: where the weights' bytes are.
  files = [p for p in (step / "params").rglob("*") if p.is_file() and p.parent.name == "d"]
  return sorted(files, key=lambda p: -p.stat().st_size)


def _truncated(tiny_weights: Path, kind: str, dst: Path) -> Path:
  if kind == "npz":
    data = (tiny_weights / "w.npz").read_bytes()
    bad = dst / "cut.npz"
    bad.write_bytes(data[: len(data) // 2])
  elif kind == "orbax":
    bad = dst / "cut_ck"
    shutil.copytree(tiny_weights / "ck", bad)
    chunk = _orbax_data_files(bad / "0")[0]
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
  else:
    data = pthfiles.zip_pth(pthfiles.small_state_dict())
    bad = dst / "cut.pth"
    bad.write_bytes(data[: len(data) * 2 // 3])
  return bad


@pytest.mark.parametrize("kind", ["npz", "orbax", "pth"])
def test_truncated_weights_give_one_line_and_exit_2(tmp_path, tiny_weights, kind,
                                                    own_compile_cache):
  bad = _truncated(tiny_weights, kind, tmp_path)
  result = _python("-m", "sapnet_jax.derain", str(IMAGE), "--out", str(tmp_path / "out"),
                   "--weights", str(bad))
  _one_error_line(result, str(bad))
  assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_evaluate_with_truncated_weights(tmp_path, tiny_weights):
  bad = _truncated(tiny_weights, "npz", tmp_path)
  rainy = tmp_path / "rainy"
  rainy.mkdir()
  shutil.copy(IMAGE, rainy / "a.jpg")
  result = _python("-m", "sapnet_jax.evaluate", "--weights", str(bad), "--rainy", str(rainy))
  _one_error_line(result, str(bad), "truncated or corrupt")


# ---- integrity: a flipped bit is named, not de-rained ----------------------------------------
def _flip(path: Path, position: int, bit: int = 2) -> None:
  data = bytearray(path.read_bytes())
  data[position] ^= 1 << bit
  path.write_bytes(bytes(data))


def test_flipped_bits_in_orbax_weights_are_detected(tmp_path, tiny_weights, own_compile_cache):
  # Bits spread over the arrays' data file: each flip is a decoding error, a checksum mismatch,
  # or lands in bytes that no array uses; never other weights (the compressed chunks decode
  # most flips into other numbers, which is what gave a garbage image).
  from sapnet_jax.weights import model_files

  def weights(model):
    return {k: np.asarray(v) for k, v in model_files.flatten(model_files.params_dict(model)).items()}

  original = weights(model_files.load_model(tiny_weights / "ck"))
  size = _orbax_data_files(tiny_weights / "ck" / "0")[0].stat().st_size
  mismatches = []
  for k, position in enumerate(range(size // 9, size, size // 9)):
    copy = tmp_path / f"flip{k}"
    shutil.copytree(tiny_weights / "ck", copy)
    _flip(_orbax_data_files(copy / "0")[0], position)
    try:
      loaded = weights(model_files.load_model(copy))
    except model_files.CheckpointError as e:
      assert str(e).startswith(f"{copy}/0: "), e
      if "checksum mismatch" in str(e):
        mismatches.append(copy)
      continue
    assert all(np.array_equal(loaded[key], original[key]) for key in original), position
  assert mismatches, "no flip decoded into other numbers; the test no longer probes the digest"
  result = _python("-m", "sapnet_jax.derain", str(IMAGE), "--out", str(tmp_path / "out"),
                   "--weights", str(mismatches[0]))
  _one_error_line(result, str(mismatches[0]), "checksum mismatch")


def test_npz_digest_catches_a_consistent_rewrite(tmp_path, tiny_weights):
  # A change that keeps the zip's CRC-32 valid (the file rewritten with one value changed) is
  # caught by the digest of the arrays; the converter's backbone files carry it too.
  from sapnet_jax.weights import backbones, torch_layout
  from sapnet_jax.weights import model_files
  arrays = dict(np.load(tiny_weights / "w.npz"))
  assert model_files.DIGEST_KEY in arrays
  arrays["conv0/bias"] = arrays["conv0/bias"].copy()
  arrays["conv0/bias"].view(np.uint32)[0] ^= 1  # one bit of the mantissa
  np.savez(tmp_path / "rewritten.npz", **arrays)
  with pytest.raises(model_files.CheckpointError, match=r"rewritten\.npz: checksum mismatch"):
    model_files.load_model(tmp_path / "rewritten.npz")
  flat = {"conv1_1/kernel": np.ones((3, 3, 3, 4), np.float32), "conv1_1/bias": np.zeros(4)}
  model_files.write_npz(str(tmp_path / "vgg.npz"), flat)  # as `convert` writes backbones
  assert set(backbones.read_weights(str(tmp_path / "vgg.npz"))) == set(flat)
  stored = dict(np.load(tmp_path / "vgg.npz"))
  stored["conv1_1/bias"] = stored["conv1_1/bias"] + 1
  np.savez(tmp_path / "vgg.npz", **stored)
  with pytest.raises(torch_layout.ConversionError, match=r"vgg\.npz: checksum mismatch"):
    backbones.load_backbone(str(tmp_path / "vgg.npz"), "vgg16")


def test_shipped_weights_carry_a_verified_digest():
  from sapnet_jax.weights import registry
  from sapnet_jax.weights import model_files
  path = os.path.join(registry.WEIGHTS_DIR, "sapnet_rain100h.npz")
  with np.load(path) as raw:
    stored = str(raw[model_files.DIGEST_KEY])
    arrays = {k: raw[k] for k in raw.files if k != model_files.DIGEST_KEY}
  assert stored == model_files.arrays_digest(arrays)
  assert set(model_files.read_npz(path)) == set(arrays)


def test_training_resume_skips_a_corrupt_step(tmp_path):
  import jax.numpy as jnp

  from sapnet_jax.training import checkpoints
  params = {"conv": {"kernel": jnp.arange(4096, dtype=jnp.float32) / 7}}
  state = {"step": jnp.int32(0), "mu": jnp.ones(4096, jnp.float32) / 3}
  ckpts = checkpoints.TrainCheckpoints(str(tmp_path / "ck"), async_save=False)
  for step in (1, 2):
    ckpts.save(step, jax_tree_scale(params, step), {**state, "step": jnp.int32(step)},
               {"family": "pdu"}, {"seed": 0})
  ckpts.wait()
  # Flip bits spread over step 2's arrays until one decodes into other numbers: that step
  # must then be skipped for step 1, whose arrays come back exactly.
  data = _orbax_data_files(tmp_path / "ck" / "2")[0]
  original = data.read_bytes()
  for position in range(len(original) // 9, len(original), len(original) // 9):
    data.write_bytes(original)
    _flip(data, position)
    restored = ckpts.restore_latest(params, state, {"family": "pdu"})
    assert restored is not None and restored[0] in (1, 2)
    if restored[0] == 1:
      break
  else:
    pytest.fail("no flip in step 2 made it fall back to step 1")
  np.testing.assert_array_equal(np.asarray(restored[1]["conv"]["kernel"]),
                                np.asarray(params["conv"]["kernel"]))
  ckpts.close()


def jax_tree_scale(tree, factor):
  import jax
  return jax.tree.map(lambda a: a * factor, tree)


# ---- bounded mutation fuzz of the .pth and .npz readers --------------------------------------
FUZZ_SEED, FUZZ_COUNT = 20261206, 1500  # mutants per seed file; 4 seed files


def test_fuzzed_weight_files_never_crash(tmp_path):
  start = time.perf_counter()
  result = _python(str(Path(__file__)), str(FUZZ_SEED), str(FUZZ_COUNT), str(tmp_path),
                   timeout=240)
  elapsed = time.perf_counter() - start
  assert result.returncode == 0, (result.returncode, result.stdout[-3000:], result.stderr[-3000:])
  report = json.loads(result.stdout.splitlines()[-1])
  assert report["unexpected"] == [], report["unexpected"][:5]
  assert report["total"] == 4 * FUZZ_COUNT
  # Every kind of outcome happened: the mutations reach past the first check of each reader.
  for seed in ("zip.pth", "legacy.pth", "digest.npz", "compressed.npz"):
    outcomes = report["outcomes"][seed]
    assert outcomes.get("error", 0) > 0 and outcomes.get("ok", 0) > 0, (seed, outcomes)
  # Data changed inside a valid zip: the digest, not the CRC, is what refuses it.
  assert report["outcomes"]["digest.npz"].get("checksum mismatch", 0) > 0, report
  assert report["slowest_s"] < 5, report
  print(f"fuzz: {report['total']} mutants in {elapsed:.1f} s, {report}")


def _mutate(rng: np.random.Generator, data: bytes, other: bytes, inside: bool = True) -> bytes:
  """One random mutation: bit flips, interesting bytes or integers over a field,
  truncation, a splice from another file, an insertion or a deletion; for a zip, a third of
  the mutations go to one of its members (`inside`)."""
  if inside and data[:2] == b"PK" and rng.random() < 1 / 3:
    return _mutate_inside(rng, data, other)
  out = bytearray(data)
  kind = rng.integers(7)
  # Half of the edits of a whole file land in its last 200 bytes: the zip directory and the
  # sizes it holds.
  def where() -> int:
    if inside and rng.random() < 0.5 and len(out) > 200:
      return int(rng.integers(len(out) - 200, len(out)))
    return int(rng.integers(max(1, len(out))))
  if kind == 0:
    for _ in range(rng.integers(1, 5)):
      out[where() % len(out)] ^= 1 << int(rng.integers(8))
  elif kind == 1:
    out[where() % len(out)] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFF]))
  elif kind == 2:
    value = int(rng.choice([-1, 0, 2**31 - 1, -2**31, 2**63 - 1, 2**40, 255, 65535]))
    width = int(rng.choice([1, 2, 4, 8]))
    position = where() % len(out)
    raw = (value % (1 << (8 * width))).to_bytes(width, "little")
    out[position:position + width] = raw
  elif kind == 3:
    out = out[: int(rng.integers(len(out)))]
  elif kind == 4:
    begin = int(rng.integers(len(other)))
    chunk = other[begin: begin + int(rng.integers(1, 64))]
    position = where() % len(out)
    out[position:position + len(chunk)] = chunk
  elif kind == 5:
    position = where() % len(out)
    out[position:position] = rng.integers(0, 256, int(rng.integers(1, 16)), np.uint8).tobytes()
  else:
    position = where() % len(out)
    del out[position: position + int(rng.integers(1, 32))]
  return bytes(out)


def _mutate_inside(rng: np.random.Generator, data: bytes, other: bytes) -> bytes:
  """One member of a zip (the pickle, a storage, an .npy header or its data) mutated, and the
  archive rebuilt with valid CRCs: what reaches past zipfile's own checks to the readers'."""
  import io
  import zipfile
  with zipfile.ZipFile(io.BytesIO(data)) as zf:
    members = [(info, zf.read(info)) for info in zf.infolist()]
  target = int(rng.integers(len(members)))
  out = io.BytesIO()
  with zipfile.ZipFile(out, "w") as zf:
    for k, (info, content) in enumerate(members):
      if k == target:
        content = _mutate(rng, content, other, inside=False) or b"\0"
      zf.writestr(info, content)
  return out.getvalue()


def _fuzz(seed: int, count: int, folder: Path) -> dict:
  import resource
  import zipfile

  from sapnet_jax.weights import model_files
  from sapnet_jax.weights.pth import PthError, load_state_dict
  tensors = pthfiles.small_state_dict()
  rng = np.random.default_rng(seed)
  arrays = {"a/kernel": rng.standard_normal((3, 3, 2, 4)).astype(np.float32),
            "a/bias": np.arange(4, dtype=np.float64), "n": np.array(5, np.int64)}
  model_files.write_npz(str(folder / "digest.npz"), arrays)
  compressed = folder / "compressed.npz"
  np.savez_compressed(compressed, **arrays)
  seeds = {"zip.pth": pthfiles.zip_pth(tensors), "legacy.pth": pthfiles.legacy_pth(tensors),
           "digest.npz": (folder / "digest.npz").read_bytes(),
           "compressed.npz": compressed.read_bytes()}
  with zipfile.ZipFile(compressed) as zf:
    assert zf.infolist()[0].compress_type == zipfile.ZIP_DEFLATED
  # From here on, no allocation may grow the process by more than 1 GiB.
  with open("/proc/self/statm") as f:
    mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
  resource.setrlimit(resource.RLIMIT_AS, (mapped + (1 << 30), resource.RLIM_INFINITY))
  outcomes: dict = {name: {} for name in seeds}
  unexpected, slowest = [], 0.0
  path = folder / "case"
  for name, data in seeds.items():
    others = [d for n, d in seeds.items() if n != name]
    reader = load_state_dict if name.endswith(".pth") else model_files.read_npz
    expected = PthError if name.endswith(".pth") else model_files.CheckpointError
    for i in range(count):
      mutant = _mutate(rng, data, others[i % len(others)])
      target = path.with_suffix(Path(name).suffix)
      target.write_bytes(mutant)
      t0 = time.perf_counter()
      try:
        reader(target)
        outcome = "ok"
      except expected as e:
        message = str(e)
        outcome = "checksum mismatch" if "checksum mismatch" in message else "error"
        if not message.startswith(f"{target}: ") or "\n" in message:
          unexpected.append([name, i, "message", message[:200]])
      except BaseException as e:  # noqa: BLE001 - anything else is what the fuzz looks for
        unexpected.append([name, i, type(e).__name__, str(e)[:200], mutant[:64].hex()])
        outcome = "unexpected"
      slowest = max(slowest, time.perf_counter() - t0)
      outcomes[name][outcome] = outcomes[name].get(outcome, 0) + 1
  return {"total": sum(sum(o.values()) for o in outcomes.values()), "outcomes": outcomes,
          "unexpected": unexpected, "slowest_s": round(slowest, 4)}


if __name__ == "__main__":
  seed_, count_, folder_ = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
  t_start = time.perf_counter()
  report_ = _fuzz(seed_, count_, folder_)
  report_["seconds"] = round(time.perf_counter() - t_start, 2)
  print(json.dumps(report_))
