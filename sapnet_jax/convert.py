"""Converts PyTorch checkpoints into sapnet_jax weights, without PyTorch.

De-raining networks (official SAPNet, PReNet, PRN) become a model checkpoint:

    python -m sapnet_jax.convert SRC.pth [--arch sapnet|prenet|prn] --out DIR|FILE.npz

The frozen networks of the losses (torchvision VGG-16 / AlexNet / ResNet-101, timm ResNet-101,
the LPIPS v0.1 linear layers) become a flat .npz in sapnet_jax's layout (`conv1_1/kernel`,
HWIO), which `config.loss.*_weights` can name; those fields also accept the original files:

    python -m sapnet_jax.convert resnet101-63fe2227.pth --arch resnet101 --out resnet101.npz
    python -m sapnet_jax.convert --download vgg16 --out vgg16.npz   # fetched, SHA-256 checked

Every tensor of the source must be used and every shape must match; otherwise the error names
the key. `sapnet_jax.weights.pth` reads .pth/.bin and .safetensors files. SRC and --out may be URIs
(gs://bucket/...).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from typing import Callable, Mapping

import jax
import numpy as np
from flax import nnx

from sapnet_jax import models
from sapnet_jax.weights import download, model_files
from sapnet_jax.models import pdu, vgg
from sapnet_jax.weights.pth import PthError, load_safetensors, load_state_dict

GATE_ORDER = ("i", "f", "g", "o")  # order of the fused ConvLSTM gate kernel's output blocks


class ConversionError(ValueError):
  """A state_dict that does not fit the requested architecture."""


def strip_prefix(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Drops the `module.` prefix that nn.DataParallel adds to every key."""
  return {re.sub(r"^module\.", "", k): v for k, v in state_dict.items()}


def infer_arch(state_dict: Mapping[str, np.ndarray]) -> str:
  """Tells SAPNet, PReNet and PRN checkpoints apart by their keys."""
  keys = strip_prefix(state_dict).keys()
  if any(".conv_du." in k for k in keys):
    return "sapnet"
  if any(k.startswith("conv_i.") for k in keys):
    return "prenet"
  if any(k.startswith("res_conv1.") for k in keys):
    return "prn"
  raise ConversionError(
      "cannot tell the architecture from the keys (expected SAPNet/PReNet/PRN keys such as "
      f"'conv0.0.weight', 'res_conv1.0.weight'); first keys: {sorted(keys)[:5]}")


def _conv(w: np.ndarray) -> np.ndarray:
  return np.transpose(w, (2, 3, 1, 0))  # OIHW -> HWIO


def _linear_1x1(w: np.ndarray) -> np.ndarray:
  return np.transpose(w[:, :, 0, 0], (1, 0))  # (out, in, 1, 1) -> (in, out)


def _torch_layout(cfg: pdu.PDUConfig) -> dict[str, tuple[str, Callable | None]]:
  """Maps each official key to (our flat parameter path, array transform)."""
  if cfg.attention not in ("cra", "none"):
    raise ConversionError(f"no official checkpoint layout for attention {cfg.attention!r}")
  layout = {"conv0.0.weight": ("conv0/kernel", _conv), "conv0.0.bias": ("conv0/bias", None),
            "conv.0.weight": ("out/kernel", _conv), "conv.0.bias": ("out/bias", None)}
  for g in GATE_ORDER if cfg.recurrent else ():
    layout[f"conv_{g}.0.weight"] = ("gates/kernel", _conv)
    layout[f"conv_{g}.0.bias"] = ("gates/bias", None)
  # Sequential indices of the second conv and the attention layers inside res_conv{k}.
  conv2, atts = (3, (1, 4)) if cfg.attention == "cra" else (2, ())
  for b in range(cfg.num_blocks):
    src, dst = f"res_conv{b + 1}", f"blocks/{b}"
    for idx, name in ((0, "conv1"), (conv2, "conv2")):
      layout[f"{src}.{idx}.weight"] = (f"{dst}/{name}/kernel", _conv)
      layout[f"{src}.{idx}.bias"] = (f"{dst}/{name}/bias", None)
    for idx, name in zip(atts, ("att1", "att2")):
      layout[f"{src}.{idx}.conv_du.0.weight"] = (f"{dst}/{name}/down/kernel", _linear_1x1)
      layout[f"{src}.{idx}.conv_du.2.weight"] = (f"{dst}/{name}/up/kernel", _linear_1x1)
      layout[f"{src}.{idx}.conv_1_1.weight"] = (f"{dst}/{name}/residual/kernel", _linear_1x1)
  return layout


def pdu_from_state_dict(state_dict: Mapping[str, np.ndarray], cfg: pdu.PDUConfig) -> pdu.PDUNet:
  """Builds a PDUNet with `cfg` and fills it from an official PyTorch state_dict."""
  sd = strip_prefix(state_dict)
  layout = _torch_layout(cfg)
  missing = sorted(set(layout) - set(sd))
  unused = sorted(set(sd) - set(layout))
  if missing or unused:
    parts = []
    if missing:
      parts.append(f"missing keys: {', '.join(missing)}")
    if unused:
      parts.append(f"unused keys: {', '.join(unused)}")
    raise ConversionError(f"state_dict does not match {_describe(cfg)}: " + "; ".join(parts))
  model = nnx.eval_shape(lambda: pdu.PDUNet(cfg, rngs=nnx.Rngs(0)))
  shapes = {k: v.shape for k, v in model_files.flatten(model_files.params_dict(model)).items()}
  flat: dict[str, np.ndarray] = {}
  gates: dict[str, list[np.ndarray]] = {"gates/kernel": [], "gates/bias": []}
  for key, (path, fn) in layout.items():
    value = np.asarray(sd[key])
    if fn is not None:
      if value.ndim != 4:
        raise ConversionError(f"{key}: expected a 4-d tensor, got shape {value.shape}")
      value = fn(value)
    expected = shapes[path]
    if path in gates:  # one of the four blocks of the fused gate parameter, in GATE_ORDER
      expected = expected[:-1] + (expected[-1] // 4,)
    if value.shape != tuple(expected):
      raise ConversionError(f"{key}: shape {value.shape} after conversion does not match the "
                            f"model's {tuple(expected)} at {path}")
    value = value.astype(np.float32)
    if path in gates:
      gates[path].append(value)
    else:
      flat[path] = value
  if cfg.recurrent:
    flat.update({path: np.concatenate(parts, axis=-1) for path, parts in gates.items()})
  return model_files.fill_params(model, model_files.unflatten(flat), _describe(cfg))


def _describe(cfg: pdu.PDUConfig) -> str:
  for name, preset in pdu.PRESETS.items():
    if dataclasses.replace(cfg, scan=preset.scan, dtype=preset.dtype) == preset:
      return name
  return str(cfg)


def load_pth(path: str, arch: str | None = None, **overrides) -> pdu.PDUNet:
  """Reads an official .pth and returns the converted model; `arch` is inferred if None.

  `overrides` replace fields of the architecture preset (e.g. scan=True, dtype="bfloat16").
  """
  sd = load_state_dict(path)
  arch = arch or infer_arch(sd)
  if arch not in pdu.PRESETS:
    raise ConversionError(f"--arch must be one of {sorted(pdu.PRESETS)}, got {arch!r}")
  try:
    cfg = dataclasses.replace(pdu.PRESETS[arch], **overrides)
    return pdu_from_state_dict(sd, models.resolve_impl(cfg, jax.local_devices()[0].platform))
  except ConversionError as e:
    raise ConversionError(f"{path}: {e}") from None


# --- Frozen networks of the losses -------------------------------------------------------

# Indices of the convolutions inside torchvision's `features` Sequential.
_VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_VGG16_NAMES = tuple(f"conv{b + 1}_{i + 1}" for b, n in enumerate(vgg.BLOCKS) for i in range(n))
_ALEXNET_CONVS = (0, 3, 6, 8, 10)
_BN = (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"), ("running_var", "var"))
_FPN_CONVS = (("toplayer", "latlayer1", "latlayer2", "latlayer3", "classify")
              + tuple(f"smooth{k}_{j}" for k in range(1, 5) for j in (1, 2)))
BACKBONES = ("vgg16", "alexnet", "resnet101", "resnet_fpn", "lpips_vgg", "lpips_alex")

# torchvision's ImageNet weights (the 8 hex digits in each name are the SHA-256 prefix that
# torchvision itself checks) and the LPIPS v0.1 linear layers; fetched only on request.
DOWNLOADS = {
    "vgg16": ("https://download.pytorch.org/models/vgg16-397923af.pth",
              "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0"),
    "alexnet": ("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                "7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02"),
    "resnet101": ("https://download.pytorch.org/models/resnet101-63fe2227.pth",
                  "63fe2227b86e8f1f2063f43a75c84d195911b6a0eace650907dd3dc62dd49a0a"),
    "lpips_vgg": ("https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/"
                  "v0.1/vgg.pth", "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868"),
    "lpips_alex": ("https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/"
                   "v0.1/alex.pth", "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0"),
}


def fetch_backbone(name: str) -> str:
  """Downloads torchvision/LPIPS weights `name` once into the cache (SHA-256 checked)."""
  if name not in DOWNLOADS:
    raise ConversionError(f"--download must be one of {sorted(DOWNLOADS)}, got {name!r}")
  url, sha256 = DOWNLOADS[name]
  # torchvision's own file names; the two LPIPS files share a base name, so they get ours.
  filename = f"{name}_v0.1.pth" if name.startswith("lpips") else url.rsplit("/", 1)[-1]
  return download.fetch(url, sha256, filename)


def read_weights(path: str) -> dict[str, np.ndarray]:
  """Reads .npz (flat), .safetensors, or PyTorch .pth/.pt/.bin files into {key: array}."""
  path = str(path)
  if path.endswith(".npz"):  # checked against its digest when it has one (convert writes it)
    try:
      return model_files.read_npz(path)
    except model_files.CheckpointError as e:
      raise ConversionError(str(e)) from None
  if path.endswith(".safetensors"):
    return load_safetensors(path)
  return load_state_dict(path)


def _take(sd: dict, used: set, key: str, transform=None) -> np.ndarray:
  if key not in sd:
    raise ConversionError(f"missing key {key!r}")
  used.add(key)
  value = np.asarray(sd[key], np.float32)
  if transform is not None:
    if value.ndim != 4:
      raise ConversionError(f"{key}: expected a 4-d conv weight, got shape {value.shape}")
    value = transform(value)
  return value


def _check_unused(sd: dict, used: set, ignore: tuple[str, ...], what: str) -> None:
  unused = sorted(k for k in sd if k not in used and not k.startswith(ignore)
                  and not k.endswith("num_batches_tracked"))
  if unused:
    raise ConversionError(f"{what}: unused keys {unused[:8]}{' ...' if len(unused) > 8 else ''}")


def _strip(sd: Mapping[str, np.ndarray], anchor: str) -> dict[str, np.ndarray]:
  """Drops whatever prefix (`module.`, `model.`, `resnet.` ...) comes before `anchor` keys."""
  for key in sd:
    if key.endswith(anchor):
      prefix = key[: -len(anchor)]
      return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
  raise ConversionError(f"no key ending in {anchor!r}; first keys: {sorted(sd)[:5]}")


def vgg16_from_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """torchvision VGG-16 (`features.N.weight`; the classifier is ignored) -> `conv1_1/kernel`."""
  sd, used, out = _strip(state_dict, "features.0.weight"), set(), {}
  for idx, name in zip(_VGG16_CONVS, _VGG16_NAMES):
    out[f"{name}/kernel"] = _take(sd, used, f"features.{idx}.weight", _conv)
    out[f"{name}/bias"] = _take(sd, used, f"features.{idx}.bias")
  _check_unused(sd, used, ("classifier.",), "VGG-16")
  return out


def alexnet_from_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """torchvision AlexNet (`features.N.weight`; the classifier is ignored) -> `conv1/kernel`."""
  sd, used, out = _strip(state_dict, "features.0.weight"), set(), {}
  for k, idx in enumerate(_ALEXNET_CONVS):
    out[f"conv{k + 1}/kernel"] = _take(sd, used, f"features.{idx}.weight", _conv)
    out[f"conv{k + 1}/bias"] = _take(sd, used, f"features.{idx}.bias")
  _check_unused(sd, used, ("classifier.",), "AlexNet")
  return out


def lpips_from_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """LPIPS v0.1 linear layers (`lin{k}.model.1.weight`, (1, C, 1, 1)) -> `lin{k}` of shape (C,)."""
  sd, used, out = dict(state_dict), set(), {}
  for k in range(5):
    key = next((c for c in (f"lin{k}.model.1.weight", f"lin{k}.model.0.weight") if c in sd), None)
    if key is None:
      raise ConversionError(f"missing key 'lin{k}.model.1.weight' (an LPIPS v0.1 linear layer)")
    w = _take(sd, used, key)
    if w.ndim != 4 or w.shape[0] != 1 or w.shape[2:] != (1, 1):
      raise ConversionError(f"{key}: expected shape (1, C, 1, 1), got {w.shape}")
    out[f"lin{k}"] = w[0, :, 0, 0]
  _check_unused(sd, used, (), "LPIPS")
  return out


def _resnet_depths(sd: Mapping[str, np.ndarray]) -> tuple[int, ...]:
  return tuple(1 + max([int(m.group(1)) for k in sd
                        if (m := re.match(rf"layer{s}\.(\d+)\.", k))], default=-1)
               for s in range(1, 5))


def resnet_from_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """torchvision or timm ResNet (Bottleneck) -> the encoder of models.resnet_fpn.ResNet.

  The fc classifier and `num_batches_tracked` are ignored. timm's plain `resnet101` uses
  torchvision's names; its deep-stem variants (resnet101d: `conv1.0.weight`) are refused.
  """
  if any(re.match(r"(.*\.)?conv1\.0\.weight$", k) for k in state_dict):
    raise ConversionError("deep-stem ResNet (timm 'resnetXXd', key 'conv1.0.weight') is not "
                          "the torchvision layout the segmentation net uses")
  sd, used, out = _strip(state_dict, "layer1.0.conv1.weight"), set(), {}

  def bn(src, dst):
    for a, b in _BN:
      out[f"{dst}/{b}"] = _take(sd, used, f"{src}.{a}")

  out["conv1/kernel"] = _take(sd, used, "conv1.weight", _conv)
  bn("bn1", "bn1")
  depths = _resnet_depths(sd)
  if min(depths) < 1:
    raise ConversionError(f"expected blocks in layer1..layer4, found depths {depths}")
  for s, depth in enumerate(depths, start=1):
    for b in range(depth):
      src, dst = f"layer{s}.{b}", f"layer{s}/{b}"
      for j in (1, 2, 3):
        out[f"{dst}/conv{j}/kernel"] = _take(sd, used, f"{src}.conv{j}.weight", _conv)
        bn(f"{src}.bn{j}", f"{dst}/bn{j}")
      if f"{src}.downsample.0.weight" in sd:
        out[f"{dst}/down_conv/kernel"] = _take(sd, used, f"{src}.downsample.0.weight", _conv)
        bn(f"{src}.downsample.1", f"{dst}/down_bn")
  _check_unused(sd, used, ("fc.",), "ResNet")
  return out


def fpn_from_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A whole official `fpn` state_dict (`resnet.*` encoder, `fpn.*` decoder) -> ResNetFPN."""
  sd = strip_prefix(state_dict)
  out = {f"resnet/{k}": v for k, v in
         resnet_from_state_dict({k: v for k, v in sd.items() if k.startswith("resnet.")}).items()}
  used: set = set()
  for name in _FPN_CONVS:
    out[f"fpn/{name}/kernel"] = _take(sd, used, f"fpn.{name}.weight", _conv)
    out[f"fpn/{name}/bias"] = _take(sd, used, f"fpn.{name}.bias")
  _check_unused(sd, used, ("resnet.",), "FPN")
  return out


_CONVERTERS = {"vgg16": vgg16_from_state_dict, "alexnet": alexnet_from_state_dict,
               "resnet101": resnet_from_state_dict, "resnet_fpn": fpn_from_state_dict,
               "lpips_vgg": lpips_from_state_dict, "lpips_alex": lpips_from_state_dict}


def load_backbone(path: str, kind: str) -> dict[str, np.ndarray]:
  """Flat weights in sapnet_jax's layout for `kind` (one of BACKBONES) from `path`.

  `path` is a converted .npz (keys like `conv1_1/kernel`, kept as they are) or an original
  torchvision / timm / LPIPS file, converted on the fly. Errors name the file.
  """
  if kind not in _CONVERTERS:
    raise ConversionError(f"unknown backbone {kind!r}; known: {BACKBONES}")
  try:
    sd = read_weights(path)
    if sd and all("/" in k or re.fullmatch(r"lin\d", k) for k in sd):  # already converted
      return {k: np.asarray(v) for k, v in sd.items()}
    return _CONVERTERS[kind](sd)
  except (ConversionError, PthError) as e:
    message = str(e)  # the readers' messages start with the path already
    raise ConversionError(message if message.startswith(f"{path}: ") else f"{path}: {e}") from None
  except OSError as e:
    raise ConversionError(f"{path}: cannot read ({e})") from None


def fill_module(module: nnx.Module, flat: Mapping[str, np.ndarray], source: str, *,
                prefix: str = "", partial: bool = False) -> nnx.Module:
  """Puts flat arrays into `module`'s variables (parameters and BatchNorm statistics).

  Keys are `prefix + path`; with `partial`, variables without a key keep their values (e.g. the
  randomly initialised FPN decoder beside a converted encoder). Names and shapes are checked.
  """
  state = nnx.state(module)
  current = model_files.flatten(nnx.to_pure_dict(state))
  got = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
  unknown = sorted(set(got) - set(current)) + sorted(k for k in flat if not k.startswith(prefix))
  missing = [] if partial else sorted(set(current) - set(got))
  if unknown or missing:
    raise ConversionError(f"{source}: weights do not fit the network (missing: {missing[:8]}, "
                          f"unexpected: {unknown[:8]})")
  for k, v in got.items():
    if tuple(np.shape(v)) != tuple(current[k].shape):
      raise ConversionError(f"{source}: {k} has shape {np.shape(v)}, the network needs "
                            f"{tuple(current[k].shape)}")
    current[k] = jax.numpy.asarray(v, current[k].dtype)
  nnx.replace_by_pure_dict(state, model_files.unflatten(current))
  nnx.update(module, state)
  return module


def _save_flat(arrays: dict[str, np.ndarray], out: str) -> None:
  if not out.endswith(".npz"):
    raise ConversionError(f"--out {out}: backbone weights are written as a FILE.npz")
  model_files.write_npz(out, arrays)  # with the digest that read_weights verifies


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m sapnet_jax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("src", nargs="?", help="PyTorch checkpoint (.pth/.bin/.safetensors)")
  parser.add_argument("--arch", choices=sorted(pdu.PRESETS) + list(BACKBONES),
                      help="architecture; for de-raining nets inferred from the keys when omitted")
  parser.add_argument("--download", choices=sorted(DOWNLOADS),
                      help="fetch these public weights (SHA-256 checked, cached in "
                           "$SAPNET_JAX_CACHE or ~/.cache/sapnet_jax) instead of reading SRC")
  parser.add_argument("--out", required=True,
                      help="output: an Orbax checkpoint directory or a FILE.npz (backbones: .npz)")
  args = parser.parse_args(argv)
  if (args.src is None) == (args.download is None):
    parser.error("give either SRC or --download NAME")
  try:
    src = fetch_backbone(args.download) if args.download else args.src
    arch = args.arch or args.download
    if arch in BACKBONES:
      arrays = load_backbone(src, arch)
      _save_flat(arrays, args.out)
      n = sum(int(np.size(v)) for v in arrays.values())
      print(f"wrote {args.out} ({arch}, {len(arrays)} arrays, {n:,} values)")
      return 0
    model = load_pth(src, arch)
  except (PthError, ConversionError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  model_files.save_model(model, args.out)
  print(f"wrote {args.out} ({_describe(model.cfg)}, {models.count_params(model):,} parameters)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
