"""Exports a de-raining network as portable StableHLO and ONNX files, with a JSON manifest.

    python -m sapnet_jax.export --weights sapnet-rain100h --out exported/
    python -m sapnet_jax.export --weights run/checkpoints --out gs://bucket/model --format onnx

Both files take float32 NHWC images in [0, 1] of any batch, height and width (symbolic dims
b, h, w) and return the de-rained images unclamped, as `sapnet_jax.infer.Derainer` does before
8-bit rounding. `model.stablehlo` is `jax.export`'s serialized form, lowered for several
platforms at once so one file runs on CPU, GPU and TPU; jax, numpy and flatbuffers alone run
it (examples/run_stablehlo.py). `model.onnx` is converted by jax2onnx (the `export` extra).
Exports always use the plain "reference" kernel set (models/ops.py): the CPU and GPU sets are
tuned for XLA's compilers of today and must not leak into a file another runtime runs.

Each file is checked before it is written: it runs on a small odd-sized random batch and must
match the package's own de-raining (StableHLO within 1e-5, ONNX within 1e-4); the largest
difference goes into `manifest.json` (docs/export.md lists its fields). Files are written
atomically, the manifest last, so a failed export leaves no half-written file. Exit status:
0 written, 2 a bad argument (format, weights, --out, missing `export` extra), 1 an export or
a check that failed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import sys
import time
import traceback
import warnings
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sapnet_jax import infer, models, pretrained
from sapnet_jax.utils import fileio, flags
from sapnet_jax.weights import download, model_files, pth, torch_layout

FORMATS = ("stablehlo", "onnx")
FILES = {"stablehlo": "model.stablehlo", "onnx": "model.onnx"}
MANIFEST = "manifest.json"
# Lowered together, so the one file runs on each (jax.export's multi-platform lowering).
PLATFORMS = ("cpu", "cuda", "tpu")
# Opset 21 (ONNX 1.16, 2024; onnxruntime >= 1.18) covers every op the networks use;
# jax2onnx's default (23) would shut out about a year of older runtimes for no op we need.
ONNX_OPSET = 21
DIMS = ("b", "h", "w")
# StableHLO runs the same XLA ops as the package, so only the summation order of the
# attention pool differs (the CPU kernel set sums 8 pixels at a time): measured <= 2.4e-7 on
# the shipped SAPNet. onnxruntime has its own kernels: measured <= 4.2e-7 (docs/export.md).
TOLERANCE = {"stablehlo": 1e-5, "onnx": 1e-4}
CHECK_SHAPE = (2, 19, 23, 3)  # odd sizes and a batch of two: the dims that are symbolic
EXPORT_EXTRA = 'pip install -e ".[export]"'


class ExportError(RuntimeError):
  """An export that failed, or whose output does not match the package's."""


class UsageError(ValueError):
  """A bad argument: format, weights, output folder, or a missing optional dependency."""


def export_model(model: nnx.Module) -> nnx.Module:
  """The same weights computed by the "reference" kernel set (no platform tuning)."""
  return models.with_config(model, impl="reference")


def forward_fn(model: nnx.Module) -> Callable[[jax.Array], jax.Array]:
  """images (N, H, W, 3) -> de-rained images, with the weights closed over as constants."""
  graphdef, state = nnx.split(model)

  def derain(images):
    return nnx.merge(graphdef, state)(images)

  return derain


def _where(error: BaseException, marker: str) -> str:
  """`path:line in function` of the innermost traceback frame whose file path has `marker`
  (the path from `marker` on: the model module, or the jax2onnx plugin named for its op)."""
  frames = [f for f in traceback.extract_tb(error.__traceback__) if marker in f.filename]
  if not frames:
    return ""
  f = frames[-1]
  path = f.filename[f.filename.rindex(marker):].replace(os.sep, "/")
  return f"{path}:{f.lineno} in {f.name}"


def _first_line(error: BaseException) -> str:
  return (str(error).strip().splitlines() or [""])[0]


def _family(model: nnx.Module) -> str:
  return models.config_to_dict(model.cfg)["family"]


def lower_portable(lower: Callable[[tuple[str, ...]], jax.export.Exported],
                   platforms: Sequence[str]) -> tuple[jax.export.Exported, dict[str, str]]:
  """`lower(platforms)`; if that fails, each platform alone, keeping those that lower.

  Returns the export and {platform: why it failed}; raises ExportError if none lowers."""
  try:
    return lower(tuple(platforms)), {}
  except Exception as e:  # noqa: BLE001 - any lowering failure: find which platform it is
    error = e
  ok, failed = [], {}
  for platform in platforms if len(platforms) > 1 else ():
    try:
      lower((platform,))
      ok.append(platform)
    except Exception as e:  # noqa: BLE001 - recorded per platform, reported below
      failed[platform] = f"{type(e).__name__}: {_first_line(e)}"
  if not ok:
    raise ExportError(f"cannot lower for {', '.join(platforms)}: {type(error).__name__}: "
                      f"{_first_line(error)}") from error
  logging.warning("lowering for %s failed (%s); the StableHLO file is for %s only",
                  ", ".join(failed), "; ".join(f"{p}: {w}" for p, w in failed.items()),
                  ", ".join(ok))
  return lower(tuple(ok)), failed


def export_stablehlo(model: nnx.Module, platforms: Sequence[str] = PLATFORMS
                     ) -> tuple[bytes, dict[str, str]]:
  """The serialized `jax.export` of the model with symbolic (b, h, w), and the platforms that
  could not be lowered for ({} when all could)."""
  model = export_model(model)
  fn = jax.jit(forward_fn(model))
  spec = jax.ShapeDtypeStruct((*jax.export.symbolic_shape(", ".join(DIMS)), 3), jnp.float32)
  try:
    exported, failed = lower_portable(lambda p: jax.export.export(fn, platforms=p)(spec),
                                      platforms)
  except ExportError as e:
    where = _where(e.__cause__, f"sapnet_jax{os.sep}models") if e.__cause__ else ""
    raise ExportError(f"{_family(model)} network{f' ({where})' if where else ''}: {e}") from e
  return bytes(exported.serialize()), failed


def _onnx_modules():
  """(jax2onnx, onnx, onnxruntime), or UsageError saying how to install them."""
  try:
    # Deferred: optional and heavy (the `export` extra); StableHLO export needs none of them.
    import jax2onnx  # deferred: optional (the `export` extra)
    import onnx  # deferred: optional (the `export` extra)
    import onnxruntime  # deferred: optional (the `export` extra)
  except ImportError as e:
    raise UsageError(f"ONNX export needs jax2onnx, onnx and onnxruntime ({e}): "
                     f"{EXPORT_EXTRA}") from None
  return jax2onnx, onnx, onnxruntime


def export_onnx(model: nnx.Module, opset: int = ONNX_OPSET):
  """The model as an onnx.ModelProto with dynamic (b, h, w), converted by jax2onnx.

  A network an op of which jax2onnx cannot express with symbolic sizes raises ExportError
  naming the op (the jax2onnx plugin that failed) and the model family."""
  jax2onnx, onnx, _ = _onnx_modules()
  model = export_model(model)
  # jax2onnx logs a line per value whose type it infers late; they say nothing to a user.
  logging.getLogger("onnx_ir.serde").setLevel(logging.ERROR)
  try:
    with warnings.catch_warnings():
      # jax2onnx reads flax's Linear through a deprecated accessor; no user can act on that.
      warnings.filterwarnings("ignore", category=DeprecationWarning, module="jax2onnx")
      proto = jax2onnx.to_onnx(forward_fn(model), inputs=[(*DIMS, 3)], opset=opset,
                               model_name=f"sapnet_jax_{_family(model)}",
                               input_names=["image"], output_names=["derained"])
  except Exception as e:  # noqa: BLE001 - any converter failure is reported with its op
    op = _where(e, f"jax2onnx{os.sep}plugins") or _where(e, "jax2onnx")
    raise ExportError(f"jax2onnx cannot convert the {_family(model)} network with dynamic "
                      f"b, h, w (failed in {op or 'the converter'}): "
                      f"{type(e).__name__}: {_first_line(e)}") from e
  onnx.checker.check_model(proto)
  return proto


def check_image(shape: Sequence[int] = CHECK_SHAPE, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).random(tuple(shape), dtype=np.float32)


def _compare(name: str, got: np.ndarray, want: np.ndarray) -> float:
  if got.shape != want.shape:
    raise ExportError(f"{name}: output shape {got.shape}, the package gives {want.shape}")
  diff = float(np.max(np.abs(got.astype(np.float64) - want)))
  if not diff <= TOLERANCE[name]:  # also catches NaN
    raise ExportError(f"{name}: max |difference| to the package's output is {diff:.3g}, over "
                      f"the tolerance {TOLERANCE[name]:g} (input {got.shape})")
  return diff


def check_stablehlo(blob: bytes, images: np.ndarray, want: np.ndarray) -> float:
  """Runs the serialized export on `images`; the max |difference| to `want`, the package's
  output for them."""
  got = np.asarray(jax.export.deserialize(bytearray(blob)).call(images))
  return _compare("stablehlo", got, want)


def run_onnx(proto_bytes: bytes, images: np.ndarray) -> np.ndarray:
  """images through the ONNX model in onnxruntime (CPU)."""
  _, _, ort = _onnx_modules()
  session = ort.InferenceSession(proto_bytes, providers=["CPUExecutionProvider"])
  return session.run(None, {session.get_inputs()[0].name: images})[0]


def check_onnx(proto_bytes: bytes, images: np.ndarray, want: np.ndarray) -> float:
  """Runs the ONNX model in onnxruntime; the max |difference| to `want`, the package's output
  for `images`."""
  return _compare("onnx", run_onnx(proto_bytes, images), want)


def weights_digest(path: str) -> str:
  """SHA-256 of a weights file, or of a folder's files (relative name and content of each,
  in sorted order), read through fileio so a URI works."""
  if not fileio.is_dir(path):
    return download.sha256_of(path)
  h = hashlib.sha256()

  def walk(folder: str, prefix: str) -> None:
    for name in fileio.listdir(folder):
      child = fileio.join(folder, name)
      if fileio.is_dir(child):
        walk(child, f"{prefix}{name}/")
      else:
        h.update(f"{prefix}{name}\0".encode())
        h.update(hashlib.sha256(fileio.read_bytes(child)).digest())

  walk(path, "")
  return h.hexdigest()


def _version(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return "unknown"


def write_exports(model: nnx.Module, out: str, *, formats: Sequence[str] = FORMATS,
                  name: str = "model", weights: str | None = None, source: str | None = None,
                  platforms: Sequence[str] = PLATFORMS, opset: int = ONNX_OPSET,
                  check: bool = True) -> dict[str, Any]:
  """Exports `model` in `formats` into the folder `out` and returns the manifest written.

  `weights` is the file or folder the model was read from (for its digest), `source` what the
  user named it by (a registered name or a path; default `weights`). Everything is
  exported and checked in memory first; then each file is written atomically, manifest last.
  """
  formats = parse_formats(",".join(formats))
  ref = export_model(model)
  images = check_image()
  # The package's own output, what every format is checked against.
  want = np.asarray(infer.Derainer(model).batch(images)) if check else None
  manifest: dict[str, Any] = {
      "format": "sapnet_jax export 1",
      "model": {"name": name, "architecture": models.preset_name(ref.cfg) or "custom pdu",
                "parameters": models.count_params(ref),
                "config": models.config_to_dict(ref.cfg)},
      "weights": {"source": source or weights,
                  "sha256": weights_digest(weights) if weights else None},
      "input": {"layout": "NHWC", "dtype": "float32", "range": [0.0, 1.0],
                "shape": [*DIMS, 3], "name": "image"},
      "output": {"layout": "NHWC", "dtype": "float32", "shape": [*DIMS, 3], "name": "derained",
                 "clamped": False,
                 "note": "clip to [0, 1] and round (x * 255 + 0.5) for an 8-bit image"},
      "symbolic_dims": {"b": "batch, >= 1", "h": "height, >= 1", "w": "width, >= 1"},
      "versions": {"jax": jax.__version__, "jaxlib": _version("jaxlib"),
                   "sapnet_jax": _version("sapnet_jax")},
      "files": {},
  }
  blobs: dict[str, bytes] = {}
  for fmt in formats:
    start = time.perf_counter()
    if fmt == "stablehlo":
      blob, failed = export_stablehlo(ref, platforms)
      exported = jax.export.deserialize(bytearray(blob))
      entry = {"platforms": list(exported.platforms), "platforms_failed": failed,
               "calling_convention_version": exported.calling_convention_version}
    else:
      proto = export_onnx(ref, opset)
      blob = proto.SerializeToString()
      entry = {"opset": opset, "converter": f"jax2onnx {_version('jax2onnx')}",
               "onnx_ir_version": proto.ir_version}
    entry = {"file": FILES[fmt], "bytes": len(blob),
             "sha256": hashlib.sha256(blob).hexdigest(),
             "export_seconds": round(time.perf_counter() - start, 2), **entry}
    if check:
      checker = check_stablehlo if fmt == "stablehlo" else check_onnx
      diff = checker(blob, images, want)
      entry["check"] = {"input_shape": list(images.shape), "max_abs_diff": diff,
                        "tolerance": TOLERANCE[fmt], "against": "sapnet_jax.infer.Derainer"}
    manifest["files"][fmt] = entry
    blobs[fmt] = blob
  for fmt, blob in blobs.items():
    fileio.write_bytes(fileio.join(out, FILES[fmt]), blob)
  fileio.write_bytes(fileio.join(out, MANIFEST),
                     (json.dumps(manifest, indent=2) + "\n").encode())
  return manifest


def parse_formats(text: str) -> tuple[str, ...]:
  formats = tuple(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))
  bad = [f for f in formats if f not in FORMATS]
  if bad or not formats:
    raise UsageError(f"--format: unknown format {', '.join(map(repr, bad)) or '(none)'}; "
                     f"choose from {', '.join(FORMATS)} (comma-separated)")
  return formats


def prepare_out(out: str) -> None:
  """Creates the local folder `out` and checks it can be written (URIs are written as given)."""
  if fileio.is_remote(out):
    return
  try:
    fileio.makedirs(out)
  except OSError as e:
    raise UsageError(f"--out {out}: cannot create the folder ({e.strerror or e})") from None
  if not os.path.isdir(out):
    raise UsageError(f"--out {out}: not a folder")
  if not os.access(out, os.W_OK | os.X_OK):
    raise UsageError(f"--out {out}: folder is not writable")


def load_weights(name_or_path: str) -> tuple[nnx.Module, str]:
  """(model, the file or folder it came from), with errors naming the weights."""
  try:
    path = pretrained.resolve(name_or_path)  # fetched and hash-checked once
    return pretrained.load(path), path
  except pretrained.UnknownWeightsError as e:
    raise UsageError(f"--weights: {e}") from None
  except (model_files.CheckpointError, torch_layout.ConversionError, pth.PthError, OSError) as e:
    raise UsageError(f"--weights {name_or_path}: {e}") from None


def main(argv: list[str] | None = None) -> int:
  parser = flags.command_parser("sapnet_jax.export", __doc__)
  flags.add_weights(parser, pretrained.DEFAULT, pretrained.WEIGHTS_HELP)
  parser.add_argument("--out", required=True, help="output folder (may be a URI)")
  parser.add_argument("--format", default=",".join(FORMATS),
                      help=f"comma-separated, from {', '.join(FORMATS)}; default both")
  parser.add_argument("--platforms", default=",".join(PLATFORMS),
                      help="platforms the StableHLO is lowered for; default %(default)s")
  parser.add_argument("--opset", type=int, default=ONNX_OPSET, help="ONNX opset (%(default)s)")
  parser.add_argument("--no-check", action="store_true",
                      help="skip running each export against the package's output")
  args = parser.parse_args(argv)
  try:
    formats = parse_formats(args.format)
    platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
    if not platforms:
      raise UsageError("--platforms: name at least one (e.g. cpu,cuda,tpu)")
    if "onnx" in formats:
      _onnx_modules()
    model, path = load_weights(args.weights)
    prepare_out(args.out)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  name = pretrained.display_name(args.weights)
  try:
    manifest = write_exports(model, args.out, formats=formats, name=name, weights=path,
                             source=args.weights,
                             platforms=platforms, opset=args.opset, check=not args.no_check)
  except ExportError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  for fmt, entry in manifest["files"].items():
    check = entry.get("check")
    print(f"wrote {fileio.join(args.out, entry['file'])} ({entry['bytes']:,} bytes, "
          f"{entry['export_seconds']} s" + (f", max |diff| {check['max_abs_diff']:.2g}"
                                             if check else ", not checked") + ")")
  print(f"wrote {fileio.join(args.out, MANIFEST)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
