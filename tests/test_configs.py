"""Every experiment config builds the architecture it names."""

import importlib
import re

import pytest
from flax import nnx

from support.paths import REPO
from sapnet_jax import models
from sapnet_jax.models import msnet, pdu


@pytest.mark.parametrize("name,preset", [("default", pdu.SAPNET), ("prenet", pdu.PRENET),
                                         ("prn", pdu.PRN)])
def test_config_model_block(name, preset):
  config = importlib.import_module(f"configs.{name}").get_config()
  cfg = models.config_from_dict(config.model.to_dict())
  assert cfg.impl == "auto"  # resolved by train/infer for their platform
  cfg = models.resolve_impl(cfg, "tpu")
  assert cfg == preset
  model = nnx.eval_shape(lambda: models.build(cfg, nnx.Rngs(0)))
  assert isinstance(model, pdu.PDUNet)


@pytest.mark.parametrize("name,matching_weight,real", [("msnet_semi", 1.0, "real_rain"),
                                                        ("msnet_supervised", 0.0, "")])
def test_msnet_configs(name, matching_weight, real):
  config = importlib.import_module(f"configs.{name}").get_config()
  cfg = models.resolve_impl(models.config_from_dict(config.model.to_dict()), "tpu")
  assert cfg == msnet.MSNET
  assert isinstance(nnx.eval_shape(lambda: models.build(cfg, nnx.Rngs(0))), msnet.MSNet)
  assert config.loss.matching_weight == matching_weight and config.data.real_dataset == real
  # Paper §4.1: 64x64 patches, batch 16, Adam lr 5e-4.
  assert (config.data.patch_size, config.data.global_batch_size, config.optim.lr) == (64, 16, 5e-4)


def _flat(config) -> dict:
  out = {}

  def walk(d, prefix):
    for k, v in d.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}.")
      else:
        out[prefix + k] = v
  walk(config.to_dict(), "")
  return out


def _diff(a, b) -> set[str]:
  fa, fb = _flat(a), _flat(b)
  return {k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k)}


def test_components_ablation_adds_one_component_per_step():
  """Paper Table 4: M1 (CRA) + seg, + PCL, + dilation, + lr decay, + LPIPS = the default."""
  mod = importlib.import_module("configs.components_ablation")
  default = importlib.import_module("configs.default").get_config()
  added = ["loss.seg_weight", "loss.contrast", "model.dilation", "optim.milestones",
           "loss.lpips_weight"]
  for i, variant in enumerate(mod.ORDER):
    assert _diff(mod.get_config(variant), default) == set(added[i:]), variant


@pytest.mark.parametrize("variant,attention", [("se", "se"), ("ca", "ca"), ("conv", "none")])
def test_attention_ablation_changes_only_the_attention(variant, attention):
  config = importlib.import_module("configs.attention_ablation").get_config(variant)
  assert _diff(config, importlib.import_module("configs.default").get_config()) == {
      "model.attention"}
  assert config.model.attention == attention


@pytest.mark.parametrize("module", ["attention_ablation", "components_ablation",
                                    "contrast_ablation", "demo", "finetune"])
def test_unknown_variant_names_the_file_and_the_choices(module):
  with pytest.raises(ValueError, match=rf"configs/{module}.py:nope: unknown variant"):
    importlib.import_module(f"configs.{module}").get_config("nope")


_CONFIG_ARG = re.compile(r"--config[= ](configs/\w+\.py)((?::\w+)(?:\s*\|\s*:\w+)*)?")


def _documented_commands(path):
  """(config file, variant or "", main's flag names in the line) for each `--config` a config
  file's docstring shows; `a.py:x | :y` names two variants."""
  doc = importlib.import_module(f"configs.{path.stem}").__doc__ or ""
  for line in doc.splitlines():
    for m in _CONFIG_ARG.finditer(line):
      variants = re.findall(r":(\w+)", m.group(2) or "") or [""]
      names = re.findall(r"\s--(\w+)", line) if "sapnet_jax.main" in line else []
      for variant in variants:
        yield m.group(1), variant, names


@pytest.mark.parametrize("path", sorted(p for p in (REPO / "configs").glob("*.py")
                                        if p.name != "__init__.py"), ids=lambda p: p.stem)
def test_every_documented_command_loads_and_builds(path):
  """A user copies the docstring's command: main's flags must exist, the config (and variant)
  must load through main's --config flag, and its model must build."""
  from absl import flags
  from ml_collections import config_flags
  import sapnet_jax.main  # noqa: F401  (defines main's flags)
  commands = list(_documented_commands(path))
  assert commands, f"{path}: the docstring shows no --config=configs/...py command"
  for name, variant, flag_names in commands:
    assert name == f"configs/{path.name}", f"{path}: its command runs {name}"
    unknown = [f for f in flag_names if f not in flags.FLAGS]
    assert not unknown, f"{path}: sapnet_jax.main has no flag {unknown}"
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv)
    fv(["main", f"--config={REPO / name}" + (f":{variant}" if variant else "")])
    cfg = models.resolve_impl(models.config_from_dict(fv.config.model.to_dict()), "cpu")
    model = nnx.eval_shape(lambda: models.build(cfg, nnx.Rngs(0)))  # noqa: B023
    family = {"pdu": pdu.PDUNet, "msnet": msnet.MSNet}[fv.config.model.family]
    assert isinstance(model, family), f"{name}:{variant} built {type(model).__name__}"


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_finetune_starts_from_the_shipped_official_weights(variant):
  import numpy as np
  from sapnet_jax import pretrained
  from sapnet_jax.training import loop
  from sapnet_jax.weights import model_files
  config = importlib.import_module("configs.finetune").get_config(variant)
  got = model_files.flatten(model_files.params_dict(loop.initial_model(config, "cpu")))
  want = model_files.flatten(model_files.params_dict(pretrained.load("sapnet-rain100h")))
  assert got.keys() == want.keys()
  for key in want:
    np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=key)
  assert "rain100h" in config.eval.sets and config.optim.lr == 1e-5
  from sapnet_jax.data import prepare
  # Rain100H-like rain (docs/fidelity.md), built from the package alone on a fresh machine.
  assert config.data.dataset == "synthetic_rain/shipped_rain100h"
  assert config.data.dataset in prepare.NO_MANUAL_DIR


@pytest.mark.parametrize("variant,batch", [("pool", 12), ("cpu_pool", 4)])
def test_finetune_pool_variants_add_the_clean_pool_at_a_smaller_lr(variant, batch):
  from sapnet_jax.data import prepare
  config = importlib.import_module("configs.finetune").get_config(variant)
  base = importlib.import_module("configs.finetune").get_config(
      "cpu" if variant.startswith("cpu") else "gpu")
  assert _diff(config, base) == {"data.dataset", "data.manual_dir", "eval.sets.synthetic_val",
                                 "optim.lr"}
  assert config.data.dataset == "synthetic_rain/pool_rain100h"
  assert config.data.dataset not in prepare.NO_MANUAL_DIR
  assert config.eval.sets.synthetic_val == "synthetic_rain/pool_rain100h:validation"
  assert config.optim.lr == 1e-6 and config.data.global_batch_size == batch


def test_weight_files_and_fractional_epochs_are_settable_from_the_command_line():
  """Fields that default to None take a path from the command line (configs/tpu_pod.py's
  docstring shows one), and the seg term's start may be fractional (shortened schedules)."""
  from ml_collections import config_flags
  from absl import flags
  argv = ["main", f"--config={REPO / 'configs/default.py'}", "--config.loss.vgg_weights=gs://b/v.npz",
          "--config.loss.seg_encoder_weights=r101.pth", "--config.loss.seg_start_epoch=0.55"]
  fv = flags.FlagValues()  # the overrides are read from sys_argv (default: sys.argv)
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=argv)
  fv(argv)
  assert fv.config.loss.vgg_weights == "gs://b/v.npz"
  assert fv.config.loss.seg_encoder_weights == "r101.pth"
  assert fv.config.loss.seg_start_epoch == 0.55
  assert fv.config.loss.alexnet_weights is None  # unset: still None, as the losses expect


@pytest.mark.parametrize("name,batch", [("gpu", 48), ("tpu_pod", 64)])
def test_accelerator_configs_keep_the_paper_schedule_and_scale_the_lr(name, batch):
  """configs/gpu.py and tpu_pod.py: SAPNet with the paper's losses and epochs, bfloat16
  compute, and Adam's lr by the square-root rule from the paper's 1e-3 at batch 12."""
  config = importlib.import_module(f"configs.{name}").get_config()
  default = importlib.import_module("configs.default").get_config()
  cfg = models.resolve_impl(models.config_from_dict(config.model.to_dict()), "gpu")
  assert models.architecture(models.config_to_dict(cfg)) == models.architecture(
      models.config_to_dict(models.resolve_impl(pdu.SAPNET, "gpu")))
  assert config.model.dtype == "bfloat16" and config.data.global_batch_size == batch
  assert config.optim.lr == pytest.approx(1e-3 * (batch / 12) ** 0.5)
  changed = _diff(config, default)
  assert not changed & {"train.num_epochs", "optim.milestones", "optim.decay_factor",
                        "loss.ssim_weight", "loss.contrast_weight", "loss.lpips_weight",
                        "loss.seg_weight", "data.patch_size", "data.stride"}, changed
