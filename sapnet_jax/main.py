"""Entry point for experiments: python -m sapnet_jax.main --config=configs/X.py --workdir=W.

    --mode=train  (default) trains the config in W, resuming from W/checkpoints if it holds any;
                  TensorBoard logs in W/tensorboard, validation reports in W/eval/step_N/.
    --mode=eval   evaluates the latest (or --config.eval.step) checkpoint in W/checkpoints on the
                  config's test sets and writes reports into W/eval/.
Config fields can be overridden on the command line: --config.train.num_steps=1000.
On several hosts (TPU pod slices, multi-node GPU) add --multihost: every process runs the same
command and jax.distributed.initialize() connects them (see launch/README.md).
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from sapnet_jax.evaluation import scoring
from sapnet_jax.runtime import cpu_memory
from sapnet_jax.training import loop

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory of the experiment's checkpoints and reports.")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "What to run.")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first (one process "
                  "per host; coordinator from the environment or the --coordinator flags).")
flags.DEFINE_string("coordinator", None, "host:port of process 0 (multi-host GPU; TPU VMs and "
                    "SLURM find it themselves).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host GPU).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host GPU).")
flags.DEFINE_bool("reuse_cpu_memory", True, "On CPU-only runs (JAX_PLATFORMS=cpu, or no GPU/TPU "
                  "plugin installed), keep XLA:CPU's per-step memory mapped between steps "
                  "instead of page-faulting it in every step (Linux with glibc; "
                  "sapnet_jax/runtime/cpu_memory.py says what it costs). Elsewhere it does "
                  "nothing.")
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/X.py[:variant]).",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.reuse_cpu_memory:  # before JAX starts its CPU client, which reads the dispatch mode
    applied, why = cpu_memory.reuse_step_memory()
    logging.info("keeping XLA's CPU step memory mapped: %s (%s)", applied, why)
  if FLAGS.multihost:
    jax.distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
  if jax.process_index() > 0:
    logging.set_verbosity(logging.WARNING)  # one host speaks
  logging.info("JAX process %d/%d, %d local / %d global devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  if FLAGS.mode == "train":
    loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  elif jax.process_index() == 0:  # scoring is one process's work; the others have none
    scoring.evaluate_workdir(FLAGS.config, FLAGS.workdir)


def run() -> None:
  """The `sapnet-train` console script (absl parses the flags from sys.argv)."""
  # absl's --help prints __main__'s docstring and key flags; under a console script __main__ is
  # the generated wrapper, which has neither.
  sys.modules["__main__"].__doc__ = __doc__
  for flag in FLAGS.get_key_flags_for_module(__name__):
    FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main)


if __name__ == "__main__":
  run()
