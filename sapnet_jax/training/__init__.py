"""Training a model: the train state and sharded step, the loop with validation, the helpers
for work one process does for all, run checkpoints (Orbax) and summaries.

May import: utils, models, metrics, weights, losses, data, runtime, infer, evaluation.
"""
