"""A table's statistics over seeds, written as W/table.json, W/table.md and W/curves.png.

For every metric of every row: the mean, the sample standard deviation (n - 1) and the 95%
confidence interval of the mean, mean ± t(0.975, n - 1) · sd / √n (Student's t: a handful of
seeds; no interval from one seed). The paper's figure sits beside ours where it has one. Each
row is also compared with the table's reference row (the paper's full model): the difference
of the means with its 95% Welch interval (unequal variances), which says whether a difference
is larger than the seeds' spread.
"""

from __future__ import annotations

import json
import math
from typing import Sequence

import numpy as np
from scipy import stats

from sapnet_jax.metrics import conventions
from sapnet_jax.utils import fileio

# Columns of table.md, in order ("set/metric"); table.json holds every metric.
MD_COLUMNS = ("synthetic_val/psnr_rgb", "synthetic_val/ssim_rgb", "synthetic_val/lpips_alex",
              "rain100h/psnr_rgb", "rain100h/ssim_rgb", "rain100h/lpips_alex",
              "real/niqe", "real/brisque")


def summarize(values: Sequence[float]) -> dict:
  v = np.asarray(values, np.float64)
  n = len(v)
  out = {"n": n, "mean": float(v.mean()), "values": [float(x) for x in v]}
  if n > 1:
    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    out.update(sd=sd, ci95=[out["mean"] - half, out["mean"] + half])
  else:
    out.update(sd=None, ci95=None)
  return out


def difference(values: Sequence[float], reference: Sequence[float]) -> dict:
  """Mean of `values` minus mean of `reference`, with the 95% Welch t-interval and p-value."""
  out = {"diff": float(np.mean(values) - np.mean(reference)), "ci95": None, "p": None}
  if len(values) > 1 and len(reference) > 1 and (np.std(values) > 0 or np.std(reference) > 0):
    test = stats.ttest_ind(values, reference, equal_var=False)
    ci = test.confidence_interval(0.95)
    out.update(ci95=[float(ci.low), float(ci.high)], p=float(test.pvalue))
  return out


def flatten_scores(results: dict[str, dict]) -> dict[str, float]:
  """{set: evaluation summary} -> {"set/metric": mean over the set's images}."""
  return {f"{s}/{k}": v for s, summary in results.items() for k, v in summary["means"].items()}


def build(table, scale: str, seeds: Sequence[int], rows: dict[str, dict],
          baseline: dict[str, float]) -> dict:
  """table.json's content. `rows[name]` holds "config", "runs" ({seed: {"scores": {...},
  "run": run.json record, "curve": {step: psnr}}})."""
  out_rows = {}
  for row in table.rows:
    r = rows[row.name]
    runs = [r["runs"][s] for s in seeds]
    keys = sorted(set.intersection(*(set(x["scores"]) for x in runs)))
    timed = [x["run"] for x in runs if not x["run"].get("adopted")]
    out_rows[row.name] = {
        "config": r["config"], "args": r["args"], "paper": row.paper,
        "stats": {k: summarize([x["scores"][k] for x in runs]) for k in keys},
        "runs": {str(s): r["runs"][s] for s in seeds},
        "wall_s": sum(x["wall_s"] for x in timed), "cpu_s": sum(x["cpu_s"] for x in timed),
        "adopted_runs": len(runs) - len(timed)}
  ref = out_rows[table.reference]["stats"]
  for name, r in out_rows.items():
    if name != table.reference:
      r["vs_reference"] = {k: difference(r["stats"][k]["values"], ref[k]["values"])
                           for k in r["stats"] if k in ref}
  return {"table": table.name, "title": table.title, "scale": scale, "seeds": list(seeds),
          "paper_source": table.paper_source, "reference": table.reference,
          "curve_set": rows[table.rows[0].name]["curve_set"],
          "rainy_input": baseline, "rows": out_rows,
          "wall_s": sum(r["wall_s"] for r in out_rows.values()),
          "cpu_s": sum(r["cpu_s"] for r in out_rows.values())}


def _cell(stat: dict | None, digits: int) -> str:
  if stat is None:
    return "—"
  text = f"{stat['mean']:.{digits}f}"
  if stat["sd"] is not None:
    lo, hi = stat["ci95"]
    text += f" ± {stat['sd']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
  return text


def markdown(data: dict) -> str:
  columns = [c for c in MD_COLUMNS
             if any(c in r["stats"] for r in data["rows"].values())]
  digits = {c: 2 if "psnr" in c or "brisque" in c else 3 for c in columns}
  arrows = {c: conventions.arrow(c.split("/")[1]) for c in columns}
  lines = [f"# {data['title']}", "",
           f"Scale `{data['scale']}`, seeds {', '.join(map(str, data['seeds']))}: mean ± sample "
           "standard deviation [95% confidence interval of the mean, Student's t]. Paper: "
           f"{data['paper_source']}.", "",
           "| row | " + " | ".join(f"{c} {arrows[c]}" for c in columns) + " | paper rain100h "
           "PSNR / SSIM | wall / CPU time |",
           "|---" * (len(columns) + 3) + "|"]
  base = data["rainy_input"]
  lines.append("| rainy input | " + " | ".join(
      f"{base[c]:.{digits[c]}f}" if c in base else "—" for c in columns) + " | — | — |")
  for name, r in data["rows"].items():
    paper = r["paper"]
    paper_text = (f"{paper['rain100h/psnr_rgb']:.2f} / {paper['rain100h/ssim_rgb']:.3f}"
                  if paper else "—")
    time_text = f"{r['wall_s'] / 60:.1f} / {r['cpu_s'] / 60:.1f} min"
    if r["adopted_runs"]:
      time_text += f" ({r['adopted_runs']} runs adopted, untimed)"
    lines.append(f"| {name} | " + " | ".join(_cell(r["stats"].get(c), digits[c])
                                            for c in columns) + f" | {paper_text} | {time_text} |")
  ref = data["reference"]
  lines += ["", f"Differences to `{ref}` (row − {ref}; 95% Welch interval; **bold**: the "
            "interval excludes 0, a difference larger than the seeds' spread):", "",
            "| row | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
  for name, r in data["rows"].items():
    if name == ref:
      continue
    cells = []
    for c in columns:
      d = r["vs_reference"].get(c)
      if d is None:
        cells.append("—")
        continue
      text = f"{d['diff']:+.{digits[c]}f}"
      if d["ci95"] is not None:
        lo, hi = d["ci95"]
        text += f" [{lo:+.{digits[c]}f}, {hi:+.{digits[c]}f}]"
        if lo > 0 or hi < 0:
          text = f"**{text}**"
      cells.append(text)
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines += ["", f"Total: wall {data['wall_s'] / 60:.1f} min, CPU {data['cpu_s'] / 60:.1f} min "
            "(training runs; scoring not included).", ""]
  return "\n".join(lines)


def plot_curves(data: dict, path: str) -> None:
  """Validation PSNR against step, one line per row (mean over seeds), seeds as a min-max band,
  and the rainy input's PSNR on the same set as a dashed line."""
  set_name = data["curve_set"]
  import matplotlib  # deferred: only the plot needs it (and it is slow to import)
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # deferred: as above
  fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
  for name, r in data["rows"].items():
    curves = [{int(k): v for k, v in run["curve"].items()} for run in r["runs"].values()]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    if not steps:
      continue
    values = np.array([[c[s] for s in steps] for c in curves])
    line, = ax.plot(steps, values.mean(0), marker="o", ms=3, label=name)
    ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
  base = data["rainy_input"].get(f"{set_name}/psnr_rgb")
  if base is not None:
    ax.axhline(base, color="grey", linestyle="--", linewidth=1, label="rainy input")
  ax.set_xlabel("step")
  ax.set_ylabel(f"{set_name} PSNR (RGB, dB)")
  ax.set_title(f"{data['table']} ({data['scale']}): mean over seeds {data['seeds']}, "
               "band = min..max", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  with fileio.atomic_write(path) as f:
    fig.savefig(f, format="png")
  plt.close(fig)


def write(data: dict, workdir: str) -> None:
  with fileio.atomic_write(fileio.join(workdir, "table.json")) as f:
    f.write(json.dumps(data, indent=1).encode())
  with fileio.atomic_write(fileio.join(workdir, "table.md")) as f:
    f.write(markdown(data).encode())
  plot_curves(data, fileio.join(workdir, "curves.png"))
