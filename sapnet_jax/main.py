"""Entry point for experiments: python -m sapnet_jax.main --config=configs/X.py --workdir=W.

    --mode=eval  evaluates the latest (or --config.eval.step) checkpoint in W/checkpoints on the
                 config's test sets and writes reports into W/eval/.
Config fields can be overridden on the command line: --config.eval.step=1000.
"""

from absl import app, flags
from ml_collections import config_flags

from sapnet_jax import evaluate

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory of the experiment's checkpoints and reports.")
flags.DEFINE_enum("mode", "eval", ["eval"], "What to run.")
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/X.py[:variant]).",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  evaluate.evaluate_workdir(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
