"""The frozen networks of the losses from their PyTorch files, without PyTorch: torchvision
VGG-16 / AlexNet / ResNet-101, timm ResNet-101, the FPN segmentation decoder and the LPIPS v0.1
linear layers, as flat arrays in sapnet_jax's layout (`conv1_1/kernel`, HWIO). Every tensor of
the source must be used and every shape must match; otherwise the error names the key."""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from sapnet_jax.models import vgg
from sapnet_jax.weights import download, model_files
from sapnet_jax.weights.pth import PthError, load_safetensors, load_state_dict
from sapnet_jax.weights.torch_layout import ConversionError, conv_kernel, strip_prefix


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
    out[f"{name}/kernel"] = _take(sd, used, f"features.{idx}.weight", conv_kernel)
    out[f"{name}/bias"] = _take(sd, used, f"features.{idx}.bias")
  _check_unused(sd, used, ("classifier.",), "VGG-16")
  return out


def alexnet_from_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """torchvision AlexNet (`features.N.weight`; the classifier is ignored) -> `conv1/kernel`."""
  sd, used, out = _strip(state_dict, "features.0.weight"), set(), {}
  for k, idx in enumerate(_ALEXNET_CONVS):
    out[f"conv{k + 1}/kernel"] = _take(sd, used, f"features.{idx}.weight", conv_kernel)
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

  out["conv1/kernel"] = _take(sd, used, "conv1.weight", conv_kernel)
  bn("bn1", "bn1")
  depths = _resnet_depths(sd)
  if min(depths) < 1:
    raise ConversionError(f"expected blocks in layer1..layer4, found depths {depths}")
  for s, depth in enumerate(depths, start=1):
    for b in range(depth):
      src, dst = f"layer{s}.{b}", f"layer{s}/{b}"
      for j in (1, 2, 3):
        out[f"{dst}/conv{j}/kernel"] = _take(sd, used, f"{src}.conv{j}.weight", conv_kernel)
        bn(f"{src}.bn{j}", f"{dst}/bn{j}")
      if f"{src}.downsample.0.weight" in sd:
        out[f"{dst}/down_conv/kernel"] = _take(sd, used, f"{src}.downsample.0.weight", conv_kernel)
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
    out[f"fpn/{name}/kernel"] = _take(sd, used, f"fpn.{name}.weight", conv_kernel)
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
