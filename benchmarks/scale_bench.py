"""Scale-aware de-raining benchmark: rain rendered at several streak scales over held-out clean
photos, de-rained natively, at every fixed working scale, and with `auto`. Writes JSON and
prints a markdown table.

    python benchmarks/scale_bench.py [--images 12] [--sizes 384,768] [--out FILE]
    python benchmarks/scale_bench.py --large [--large-scale 4]   # the 4000x3000 photo
    python benchmarks/scale_bench.py --real-grid docs/images/scale_real.jpg
    python benchmarks/scale_bench.py --variants [--images 6]   # ways back to full size
    python benchmarks/scale_bench.py --rescore A.json [B.json ...]   # auto's current rule
    python benchmarks/scale_bench.py --fit benchmarks/results/scale_calibration.json

Rain: `rain_renderer.RAIN100H` magnified by the streak scale s (`rain_renderer.magnified`:
lengths, widths and defocus x s, drops per pixel / s^2), seed 1000 + 10 * image + scale index.
Photos: clean_pool files (../shared) with both sides >= 384, every 12th from the 3rd and from
the 9th (the calibration photos of `auto`, `CALIBRATION`, left out), centre-cropped to 384 x
384, and the same crops enlarged x2 (Lanczos) for the 768 size. Scores: RGB PSNR/SSIM of the
8-bit result (full_reference.score_pair), oracle = the best fixed scale per image. Seconds per
megapixel of the input, on this machine's CPU (named in the JSON), the first call of each shape
(its compile) left out.
`--large` runs `python -m sapnet_jax.derain --scale auto` on a 4000 x 3000 photo
(a clean photo enlarged, rain at --large-scale) in a subprocess and reports its wall time and
peak RSS. `--real-grid` draws every real rainy photo in ../shared (rainy | native | auto, with
the scale auto chose) into one image.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sapnet_jax import infer, pretrained  # noqa: E402
from sapnet_jax.metrics import full_reference
from sapnet_jax.runtime import xla_options
from sapnet_jax.data import rain_renderer  # noqa: E402

POOL = os.path.join(ROOT, "..", "shared", "data", "clean_pool")
STREAK_SCALES = (1.0, 1.5, 2.0, 3.0, 4.0)
# The photos `auto`'s rule was chosen on (every 19th from the 1st, 8th and 14th), never
# scored as held out.
CALIBRATION = (slice(0, None, 19), slice(7, None, 19), slice(13, None, 19))


def pool_files() -> list[str]:
  return sorted(f for f in os.listdir(POOL) if f.endswith(".jpg"))


def min_side(name: str) -> int:
  with Image.open(os.path.join(POOL, name)) as im:
    return min(im.size)


def calibration(count: int, side: int = 384) -> list[str]:
  """The CALIBRATION photos first (the first 15 are those infer.SCALE_WEIGHTS was fitted on),
  then every other photo outside the held-out slices, in name order."""
  files = pool_files()
  held = set(files[3::12] + files[9::12])
  names = [n for part in CALIBRATION for n in files[part]] + files
  return [n for n in dict.fromkeys(names) if n not in held and min_side(n) >= side][:count]


def held_out(count: int, side: int = 384) -> list[str]:
  files = pool_files()
  calibration = set(files[CALIBRATION[0]])
  return [n for n in files[3::12] + files[9::12]
          if n not in calibration and min_side(n) >= side][:count]


def load_crop(name: str, side: int, size: int) -> np.ndarray:
  with Image.open(os.path.join(POOL, name)) as im:
    im = im.convert("RGB")
    w, h = im.size
    im = im.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side,
                  (h - side) // 2 + side))
    if size != side:
      im = im.resize((size, size), Image.LANCZOS)
    return np.asarray(im, np.float32) / 255.0


def quantized(image: np.ndarray) -> np.ndarray:
  return np.round(np.clip(image, 0, 1) * 255) / 255


class Timer:
  """Seconds per call of `fn`, the first call of each input shape (a compile) run twice."""

  def __init__(self):
    self.seen = set()

  def __call__(self, key, fn):
    if key not in self.seen:
      self.seen.add(key)
      fn()
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def score(out, clean):
  s = full_reference.score_pair(quantized(out), clean)
  return {"psnr": s["psnr_rgb"], "ssim": s["ssim_rgb"]}


def run_grid(args) -> dict:
  derainer = infer.Derainer(pretrained.load(args.weights))
  timer = Timer()
  rows = []
  names = (calibration if args.calibration else held_out)(args.images)
  first = min(args.skip, len(names))
  fixed = [float(s) for s in infer.SCALES]
  for size in args.sizes:
    for i, name in enumerate(names[first:], start=first):
      clean = load_crop(name, 384, size)
      mp = clean.shape[0] * clean.shape[1] / 1e6
      for k, s in enumerate(STREAK_SCALES):
        rainy, _ = rain_renderer.add_rain(clean, seed=1000 + 10 * i + k,
                                          style=rain_renderer.magnified(rain_renderer.RAIN100H, s))
        row = {"photo": name, "size": size, "streak_scale": s, "rainy": score(rainy, clean),
               "fixed": {}}
        for f in fixed:
          out, sec = timer(("fixed", size, f), lambda: derainer(rainy, scale=f))
          row["fixed"][f"{f:g}"] = {**score(out, clean), "s_per_mp": sec / mp}
        (energy, coherence), est = timer(("estimate", size),
                                         lambda: derainer.scale_statistics(rainy))
        chosen = infer.choose_scale(energy, coherence)
        row["energy"], row["coherence"] = energy.tolist(), coherence.tolist()
        best = max(row["fixed"], key=lambda f: row["fixed"][f]["psnr"])
        row["oracle"] = {"scale": float(best), **row["fixed"][best]}
        row["auto"] = {"scale": chosen, **{m: row["fixed"][f"{chosen:g}"][m]
                                            for m in ("psnr", "ssim")},
                       "estimate_s": est,
                       "s_per_mp": row["fixed"][f"{chosen:g}"]["s_per_mp"] + est / mp}
        rows.append(row)
        print(f"{name[:28]:28s} {size} s={s:g} rainy {row['rainy']['psnr']:.2f} native "
              f"{row['fixed']['1']['psnr']:.2f} oracle {row['oracle']['psnr']:.2f}@{best} "
              f"auto {row['auto']['psnr']:.2f}@{chosen:g} ({est:.1f} s)", file=sys.stderr,
              flush=True)
  return {"rows": rows, "summary": summarize(rows, fixed)}


def rescore(rows) -> list[dict]:
  """Rows with `auto` chosen again by the current infer.choose_scale from their stored
  statistics (a fixed scale's result does not depend on the rule, so none is recomputed)."""
  for row in rows:
    energy, coherence = np.array(row["energy"]), np.array(row["coherence"])
    chosen = infer.choose_scale(energy, coherence)
    mp = (row["size"] ** 2) / 1e6
    fixed = row["fixed"][f"{chosen:g}"]
    row["auto"] = {"scale": chosen, "psnr": fixed["psnr"], "ssim": fixed["ssim"],
                   "estimate_s": row["auto"]["estimate_s"],
                   "s_per_mp": fixed["s_per_mp"] + row["auto"]["estimate_s"] / mp}
  return rows


def losses(row) -> np.ndarray:
  """Each fixed scale's PSNR minus the best one's: what `auto`'s regression predicts."""
  psnr = np.array([row["fixed"][f"{s:g}"]["psnr"] for s in infer.SCALES])
  return psnr - psnr.max()


def ridge(rows, lam: float) -> np.ndarray:
  x = np.array([infer.scale_features(np.array(r["energy"]), np.array(r["coherence"]))
                for r in rows])
  y = np.array([losses(r) for r in rows])
  return np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ y).T


def fit(rows) -> np.ndarray:
  """Leave-one-photo-out over ridge strengths, printed, then infer.SCALE_WEIGHTS fitted on
  every row at lambda 1 (the choice those figures led to)."""
  photos = sorted({r["photo"] for r in rows})
  for lam in (0.1, 1.0, 3.0, 10.0, 30.0):
    lost = {s: [] for s in STREAK_SCALES}
    for photo in photos:
      weights = ridge([r for r in rows if r["photo"] != photo], lam)
      for r in rows:
        if r["photo"] == photo:
          chosen = infer.choose_scale(np.array(r["energy"]), np.array(r["coherence"]),
                                      weights=weights)
          lost[r["streak_scale"]].append(losses(r)[infer.SCALES.index(chosen)])
    print(f"lambda {lam:g}: auto - oracle per streak scale " + ", ".join(
        f"{s:g}: {np.mean(v):+.2f}" for s, v in lost.items() if v))
  weights = ridge(rows, 1.0)
  print("SCALE_WEIGHTS = np.array([")
  for row in weights:
    print("    [" + ", ".join(f"{w:.3f}" for w in row) + "],")
  print("])")
  return weights


def summarize(rows, fixed) -> list[dict]:
  out = []
  for s in STREAK_SCALES:
    sel = [r for r in rows if r["streak_scale"] == s]
    if not sel:
      continue
    mean = lambda get: float(np.mean([get(r) for r in sel]))  # noqa: E731
    line = {"streak_scale": s, "images": len(sel),
            "rainy": mean(lambda r: r["rainy"]["psnr"])}
    for f in fixed:
      key = f"{f:g}"
      line[f"fixed_{key}"] = mean(lambda r: r["fixed"][key]["psnr"])
      line[f"fixed_{key}_ssim"] = mean(lambda r: r["fixed"][key]["ssim"])
      line[f"fixed_{key}_s_per_mp"] = mean(lambda r: r["fixed"][key]["s_per_mp"])
    for m in ("oracle", "auto"):
      line[m] = mean(lambda r: r[m]["psnr"])
      line[f"{m}_ssim"] = mean(lambda r: r[m]["ssim"])
      line[f"{m}_s_per_mp"] = mean(lambda r: r[m]["s_per_mp"])
    line["auto_scales"] = [r["auto"]["scale"] for r in sel]
    out.append(line)
  return out


def table(summary) -> str:
  fixed = [k[len("fixed_"):] for k in summary[0] if k.startswith("fixed_")
           and k.count("_") == 1]
  head = (["streak scale", "rainy", "native"] + [f"1/{f}" for f in fixed[1:]]
          + ["oracle", "auto", "auto - oracle", "auto - native", "auto s/MP", "native s/MP"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in summary:
    cells = [f"{r['streak_scale']:g}", f"{r['rainy']:.2f}"]
    cells += [f"{r['fixed_' + f]:.2f} / {r['fixed_' + f + '_ssim']:.3f}" for f in fixed]
    cells += [f"{r['oracle']:.2f} / {r['oracle_ssim']:.3f}",
              f"**{r['auto']:.2f}** / {r['auto_ssim']:.3f}",
              f"{r['auto'] - r['oracle']:+.2f}", f"{r['auto'] - r['fixed_1']:+.2f}",
              f"{r['auto_s_per_mp']:.1f}", f"{r['fixed_1_s_per_mp']:.1f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def run_large(args) -> dict:
  """The 4000 x 3000 photo through the command a user runs."""
  name = held_out(1)[0]
  clean = load_crop(name, 384, 384)
  big = np.asarray(Image.fromarray((clean * 255).round().astype(np.uint8)).resize(
      (4000, 3000), Image.LANCZOS), np.float32) / 255.0
  style = rain_renderer.magnified(rain_renderer.RAIN100H, args.large_scale)
  rainy, _ = rain_renderer.add_rain(big, seed=7, style=style)
  result = {"photo": name, "size": "4000x3000", "streak_scale": args.large_scale}
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "rainy.png")
    Image.fromarray((rainy * 255).round().astype(np.uint8)).save(path, compress_level=1)
    del big, rainy
    cmd = [sys.executable, "-m", "sapnet_jax.derain", path, "--out", os.path.join(tmp, "out"),
           "--scale", "auto", "--weights", args.weights]
    for run in ("first", "second"):  # the second finds its programs in the compile cache
      start = time.perf_counter()
      proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "SAPNET_JAX_CACHE": os.path.join(tmp, "cache")})
      wall = time.perf_counter() - start
      if proc.returncode != 0:
        raise SystemExit(f"derain failed:\n{proc.stderr}")
      result[f"{run}_wall_s"] = wall
      result["stderr_tail"] = proc.stderr.strip().splitlines()[-2:]
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
  return result


def real_grid(args) -> dict:
  """Rainy | native | auto for each real rainy photo, two photos per row, each cell 300 px
  wide; returns the scale auto chose per photo."""
  from PIL import ImageDraw
  folder = os.path.join(ROOT, "..", "shared", "data", "real_rainy")
  derainer = infer.Derainer(pretrained.load(args.weights))
  cell, cells, chosen = 300, [], {}
  for name in sorted(f for f in os.listdir(folder) if f.lower().endswith((".jpg", ".png"))):
    with Image.open(os.path.join(folder, name)) as im:
      rainy = np.asarray(im.convert("RGB"), np.float32) / 255.0
    scale = derainer.estimate_scale(rainy)
    chosen[name] = scale
    row = []
    for label, image in (("rainy " + name, rainy), ("native", derainer(rainy)),
                         (f"auto: scale {scale:g}", derainer(rainy, scale=scale))):
      im = Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
      im = im.resize((cell, round(im.height * cell / im.width)), Image.LANCZOS)
      ImageDraw.Draw(im).text((4, 4), label, fill=(255, 255, 0))
      row.append(im)
    cells.append(row)
    print(f"{name}: auto scale {scale:g}", file=sys.stderr, flush=True)
  rows = [cells[i:i + 2] for i in range(0, len(cells), 2)]
  heights = [max(r[0].height for r in pair) for pair in rows]
  grid = Image.new("RGB", (6 * cell + 10, sum(heights) + 4 * len(rows)), (255, 255, 255))
  y = 0
  for pair, h in zip(rows, heights):
    for j, row in enumerate(pair):
      for k, im in enumerate(row):
        grid.paste(im, (j * (3 * cell + 10) + k * cell, y))
    y += h + 4
  grid.save(args.real_grid, quality=72, optimize=True)
  crops_at_full_size(derainer, folder, os.path.splitext(args.real_grid)[0] + "_crops.jpg")
  return chosen


# Regions of three photos shown at 1:1 (the grid shrinks every photo to 300 px).
CROPS = (("1.jpg", (150, 60, 450, 300)), ("100.jpg", (200, 150, 500, 390)),
         ("105.jpg", (250, 100, 550, 340)))


def crops_at_full_size(derainer, folder, path):
  from PIL import ImageDraw
  rows = []
  for name, box in CROPS:
    with Image.open(os.path.join(folder, name)) as im:
      rainy = np.asarray(im.convert("RGB"), np.float32) / 255.0
    scale = derainer.estimate_scale(rainy)
    row = []
    for label, image in (("rainy " + name, rainy), ("native", derainer(rainy)),
                         (f"auto: scale {scale:g}", derainer(rainy, scale=scale))):
      im = Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).crop(box)
      ImageDraw.Draw(im).text((4, 4), label, fill=(255, 255, 0))
      row.append(im)
    rows.append(row)
  grid = Image.new("RGB", (sum(c.width for c in rows[0]) + 8, sum(r[0].height for r in rows) + 8),
                   (255, 255, 255))
  y = 0
  for row in rows:
    x = 0
    for im in row:
      grid.paste(im, (x, y))
      x += im.width + 4
    y += row[0].height + 4
  grid.save(path, quality=90)


def run_variants(args) -> dict:
  """Ways of bringing a result at the matched working scale back to full size, on streak
  scales 2 and 3, against the native result on scale-1 rain over the same photos (the gap)."""
  derainer = infer.Derainer(pretrained.load(args.weights))
  box, bic, lan = Image.BOX, Image.BICUBIC, Image.LANCZOS
  names = held_out(args.images)
  rows = {}

  def add(key, value):
    rows.setdefault(key, []).append(value)

  for i, name in enumerate(names):
    clean = load_crop(name, 384, 384)
    rainy1, _ = rain_renderer.add_rain(clean, seed=1000 + 10 * i, style=rain_renderer.RAIN100H)
    add("native result on scale-1 rain (the reference)", score(derainer(rainy1), clean)["psnr"])
    for s in (2.0, 3.0):
      k = STREAK_SCALES.index(s)
      rainy, _ = rain_renderer.add_rain(clean, seed=1000 + 10 * i + k,
                                        style=rain_renderer.magnified(rain_renderer.RAIN100H, s))
      shape = infer.scaled_shape(*clean.shape[:2], s)
      full = clean.shape[:2]
      for down_name, down in (("bicubic", bic), ("box", box)):
        small = infer.resize(rainy, shape, down)
        out = derainer(small)
        add(f"s{s:g}: shrink {down_name}, enlarge the de-rained image (bicubic)",
            score(infer.resize(out, full, bic), clean)["psnr"])
        for up_name, up in (("bicubic", bic), ("lanczos", lan)):
          add(f"s{s:g}: shrink {down_name}, rain layer back with {up_name}",
              score(rainy - infer.resize(small - out, full, up), clean)["psnr"])
        if down_name == "box":
          flips = [small - out]
          for axes in ((1,), (0,), (0, 1)):
            flipped = np.ascontiguousarray(np.flip(small, axes))
            flips.append(np.flip(flipped - derainer(flipped), axes))
          add(f"s{s:g}: shrink box, rain layer back with lanczos, 4 flips averaged",
              score(rainy - infer.resize(np.mean(flips, 0), full, lan), clean)["psnr"])
          clean_small = infer.resize(clean, shape, box)
          add(f"s{s:g}: shrink box, the TRUE rain layer back with lanczos (transfer bound)",
              score(rainy - infer.resize(small - clean_small, full, lan), clean)["psnr"])
          add(f"s{s:g}: shrink box, de-rained small image vs shrunk clean (at the small size)",
              score(out, clean_small)["psnr"])
    print(f"{name}: done", file=sys.stderr, flush=True)
  means = {k: float(np.mean(v)) for k, v in rows.items()}
  for k, v in means.items():
    print(f"| {k} | {v:.2f} |")
  return {"photos": names, "mean_psnr": means}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--images", type=int, default=12)
  parser.add_argument("--sizes", default="384,768")
  parser.add_argument("--weights", default=pretrained.DEFAULT)
  parser.add_argument("--skip", type=int, default=0,
                      help="leave out the first N photos (each keeps its seeds)")
  parser.add_argument("--calibration", action="store_true",
                      help="score calibration photos (never held out) instead")
  parser.add_argument("--large", action="store_true")
  parser.add_argument("--large-scale", type=float, default=4.0)
  parser.add_argument("--real-grid", metavar="PNG", default=None)
  parser.add_argument("--variants", action="store_true")
  parser.add_argument("--rescore", nargs="+", metavar="JSON", default=None)
  parser.add_argument("--fit", nargs="+", metavar="JSON", default=None,
                      help="fit auto's regression on these (calibration) rows")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  if args.fit:
    rows = []
    for path in args.fit:
      with open(path) as f:
        rows += json.load(f)["rows"]
    fit(rows)
    return
  if args.rescore:
    rows = []
    for path in args.rescore:
      with open(path) as f:
        rows += json.load(f)["rows"]
    summaries = {}
    for size in sorted({r["size"] for r in rows}):
      summaries[size] = summarize(rescore([r for r in rows if r["size"] == size]),
                                  [float(s) for s in infer.SCALES])
      print(f"size {size}:")
      print(table(summaries[size]))
    if args.out:
      with open(args.out, "w") as f:
        json.dump({"rescored_from": args.rescore, "rows": rows, "summary": summaries}, f,
                  indent=1)
    return
  args.sizes = [int(s) for s in args.sizes.split(",")]
  if not os.path.isdir(POOL):
    raise SystemExit(f"{POOL}: the clean photos are not there (../shared beside the repo)")
  result = {"cpu": xla_options.cpu_description(), "weights": args.weights,
            "command": "python benchmarks/scale_bench.py " + " ".join(sys.argv[1:])}
  if args.variants:
    result["variants"] = run_variants(args)
  elif args.real_grid:
    result["real_auto_scales"] = real_grid(args)
    print(json.dumps(result["real_auto_scales"], indent=1))
  elif args.large:
    result["large"] = run_large(args)
    print(json.dumps(result["large"], indent=1))
  else:
    result.update(run_grid(args))
    print(table(result["summary"]))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
