"""A rain synthesizer: streaks of random angle, length, width, density and brightness, blurred
by motion and defocus, over a clean photo, with optional haze (veiling).

Why this model: the synthetic benchmarks (Rain100H/L, Rain1400) were made by rendering
motion-blurred noise in Photoshop and blending it over clean photos; Rain100H has several streak
directions (its paper's model also has a veil, which its test pairs do not show: see RAIN100H).
Here each streak layer is a sparse field of drops convolved with one anti-aliased line kernel (a
drop smeared along its fall direction: the motion blur; its Gaussian profile across the line:
the width plus defocus), all layers in one batched FFT. Layers are screen-blended over the clean
image (rain only brightens, never pushes a pixel past 1), or added and clipped as in Rain100H
(`RAIN100H`), then a veil `I t + A (1 - t)` is mixed in with a grey airlight A.

Everything is NumPy, vectorized over pixels and layers, and deterministic: the same seed gives
the same image on every run (`rng = np.random.default_rng(seed)`; NumPy keeps its generators'
streams stable across releases).

    rainy, params = add_rain(clean, seed=3)             # clean: float (H, W, 3) in [0, 1]

`python -m sapnet_jax.data.demo --grid docs/images/synthetic_rain.png` draws the README grid
(`--style rain100h` the rain of the fine-tuning pairs).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


BLENDS = ("screen", "add")


@dataclasses.dataclass(frozen=True)
class RainStyle:
  """The ranges rain parameters are drawn from (uniformly). Lengths are in pixels."""

  layers: tuple[int, int] = (1, 3)             # streak layers, each its own direction/size
  angle_deg: tuple[float, float] = (-30.0, 30.0)  # main fall direction, from vertical
  angle_spread_deg: float = 8.0                 # per-layer deviation from the main direction
  length: tuple[float, float] = (8.0, 40.0)     # streak length (motion blur)
  width: tuple[float, float] = (0.6, 1.8)       # streak thickness (Gaussian FWHM)
  blur: tuple[float, float] = (0.0, 1.2)        # extra defocus, Gaussian sigma
  density: tuple[float, float] = (0.001, 0.008)  # drops per pixel per layer
  brightness: tuple[float, float] = (0.35, 0.85)  # peak streak intensity
  haze_probability: float = 0.5                 # chance of a veil at all
  haze: tuple[float, float] = (0.05, 0.3)       # veil amount 1 - t
  airlight: tuple[float, float] = (0.7, 0.95)   # veil colour (grey level)
  blend: str = "screen"                         # screen | add (clean + rain, clipped at 1)

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if isinstance(value, tuple) and (len(value) != 2 or value[0] > value[1]):
        raise ValueError(f"RainStyle.{field.name} must be a (low, high) range, got {value}")
    if self.layers[0] < 1:
      raise ValueError(f"RainStyle.layers must start at >= 1, got {self.layers}")
    if self.blend not in BLENDS:
      raise ValueError(f"RainStyle.blend must be one of {BLENDS}, got {self.blend!r}")
    if not 0.0 <= self.haze_probability <= 1.0:
      raise ValueError(f"RainStyle.haze_probability must be in [0, 1], got "
                       f"{self.haze_probability}")


LIGHT = RainStyle(layers=(1, 2), density=(0.0005, 0.003), brightness=(0.25, 0.6),
                  haze_probability=0.2)
HEAVY = RainStyle(layers=(2, 4), density=(0.004, 0.012), brightness=(0.5, 0.9),
                  haze_probability=0.8, haze=(0.15, 0.4))
# Rain100H's rain as its 100 test pairs show it (rainy - clean): added, never darkening, no veil
# (the residual does not depend on the clean intensity until it clips at 1); long thin streaks in
# one or two directions over most of the image. Calibrated on its residuals (docs/fidelity.md,
# Data; tests/data/test_rain_renderer.py checks the quantiles).
RAIN100H = RainStyle(layers=(1, 2), angle_deg=(-20.0, 20.0), angle_spread_deg=15.0,
                     length=(40.0, 120.0), width=(1.0, 2.0), blur=(0.0, 0.5),
                     density=(0.003, 0.007), brightness=(0.2, 0.45), haze_probability=0.0,
                     blend="add")


def magnified(style: RainStyle, factor: float) -> RainStyle:
  """The same rain seen `factor` times larger (a photo of more pixels, or a closer camera):
  lengths, widths and defocus multiplied by `factor`, drops per pixel divided by its square,
  so streaks cover the same fraction of the image."""
  if not factor > 0:
    raise ValueError(f"magnified: factor must be > 0, got {factor}")
  return dataclasses.replace(
      style, length=tuple(v * factor for v in style.length),
      width=tuple(v * factor for v in style.width), blur=tuple(v * factor for v in style.blur),
      density=tuple(v / factor**2 for v in style.density))


STYLES = {"default": RainStyle(), "light": LIGHT, "heavy": HEAVY, "rain100h": RAIN100H}


@dataclasses.dataclass(frozen=True)
class RainParams:
  """One draw from a RainStyle: per-layer arrays, plus the veil."""

  angle_deg: np.ndarray
  length: np.ndarray
  width: np.ndarray
  blur: np.ndarray
  density: np.ndarray
  brightness: np.ndarray
  haze: float
  airlight: float

  def to_dict(self) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v)
            for k, v in dataclasses.asdict(self).items()}


def sample_params(rng: np.random.Generator, style: RainStyle = RainStyle()) -> RainParams:
  n = int(rng.integers(style.layers[0], style.layers[1] + 1))
  main = rng.uniform(*style.angle_deg)

  def draw(bounds):
    return rng.uniform(bounds[0], bounds[1], size=n)

  angle = main + rng.uniform(-style.angle_spread_deg, style.angle_spread_deg, size=n)
  length, width, blur = draw(style.length), draw(style.width), draw(style.blur)
  density, brightness = draw(style.density), draw(style.brightness)
  hazy = rng.random() < style.haze_probability
  haze = float(rng.uniform(*style.haze)) if hazy else 0.0
  airlight = float(rng.uniform(*style.airlight))
  return RainParams(angle, length, width, blur, density, brightness, haze, airlight)


def streak_kernels(params: RainParams) -> np.ndarray:
  """One peak-1 line kernel per layer, (layers, K, K), K odd and shared by all layers.

  A kernel value is the Gaussian of the distance to a segment of the layer's length along
  its fall direction; the Gaussian's sigma combines the width and the defocus blur, and its
  peak is scaled by width/sigma_total so defocus spreads the same light wider, not brighter.
  """
  sigma_w = params.width / 2.3548  # FWHM -> sigma
  sigma = np.sqrt(sigma_w**2 + params.blur**2)
  half = int(math.ceil(float(np.max(params.length / 2 + 3 * sigma)))) + 1
  k = np.arange(-half, half + 1, dtype=np.float64)
  y, x = np.meshgrid(k, k, indexing="ij")
  theta = np.deg2rad(params.angle_deg)[:, None, None]
  along = x[None] * np.sin(theta) + y[None] * np.cos(theta)
  across = x[None] * np.cos(theta) - y[None] * np.sin(theta)
  beyond = np.maximum(np.abs(along) - params.length[:, None, None] / 2, 0.0)
  dist2 = beyond**2 + across**2
  s = sigma[:, None, None]
  return np.exp(-dist2 / (2 * s**2)) * (sigma_w / sigma)[:, None, None]


def rain_layer(shape: tuple[int, int], params: RainParams, rng: np.random.Generator
               ) -> np.ndarray:
  """The rain intensity (H, W) in [0, 1]: sparse drops of random strength, each smeared into a
  streak by its layer's kernel (FFT convolution of all layers at once), summed and clipped."""
  h, w = shape
  kernels = streak_kernels(params)
  n, kh, _ = kernels.shape
  pad = kh // 2
  # Drops also fall just outside the frame, so streaks enter it from every side.
  ph, pw = h + 2 * pad, w + 2 * pad
  fh, fw = ph + kh - 1, pw + kh - 1  # linear (not circular) convolution size
  drops = rng.random((n, ph, pw)) < params.density[:, None, None]
  strength = drops * rng.uniform(0.6, 1.0, size=(n, ph, pw))
  spec = np.fft.rfft2(strength, s=(fh, fw)) * np.fft.rfft2(kernels, s=(fh, fw))
  full = np.fft.irfft2(spec, s=(fh, fw))
  # Crop so output pixel (i, j) is centred on padded drop (i + pad, j + pad).
  layers = full[:, 2 * pad: 2 * pad + h, 2 * pad: 2 * pad + w]
  layers = np.clip(layers, 0.0, 1.0) * params.brightness[:, None, None]
  return np.clip(layers.sum(axis=0), 0.0, 1.0).astype(np.float32)


def compose(clean: np.ndarray, rain: np.ndarray, haze: float, airlight: float,
            blend: str = "screen") -> np.ndarray:
  """Blends the rain over `clean` (screen, or added and clipped) and mixes in the veil;
  float32 in [0, 1]."""
  if blend == "add":
    rainy = clean + rain[..., None]
  else:
    rainy = 1.0 - (1.0 - clean) * (1.0 - rain[..., None])
  if haze > 0:
    rainy = rainy * (1.0 - haze) + airlight * haze
  return np.clip(rainy, 0.0, 1.0).astype(np.float32)


def add_rain(clean: np.ndarray, seed: int | np.random.Generator,
             style: RainStyle = RainStyle()) -> tuple[np.ndarray, RainParams]:
  """Returns (rainy float32 (H, W, 3) in [0, 1], the parameters drawn) for a clean image.

  `clean` is float in [0, 1] (uint8 is converted); the same seed gives the same result.
  """
  clean = np.asarray(clean)
  if clean.dtype == np.uint8:
    clean = clean.astype(np.float32) / 255.0
  if clean.ndim != 3 or clean.shape[-1] != 3:
    raise ValueError(f"add_rain: expected an (H, W, 3) image, got shape {clean.shape}")
  rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
  params = sample_params(rng, style)
  rain = rain_layer(clean.shape[:2], params, rng)
  return compose(clean.astype(np.float32), rain, params.haze, params.airlight,
                 style.blend), params
