"""Backend-neutral training harness.

The pieces a training run needs that do not depend on a framework:

- :mod:`rescompile.harness.loop`: the driver behind ``rescompile train`` (the loop, evaluation
  and checkpoint cadence, resume, Ctrl-C, divergence); around it :mod:`~rescompile.harness.config`
  (the configuration, its checks and the run's plan), :mod:`~rescompile.harness.reporter` (the
  progress bar and log lines) and :mod:`~rescompile.harness.records` (the run directory's files:
  config.json, summary.json, the run lock).
- :mod:`rescompile.harness.evaluate`, :mod:`~rescompile.harness.init`: ``rescompile eval`` and
  ``train --init-from`` (fine-tuning); :mod:`~rescompile.harness.recipes`: recipe files.
- :mod:`rescompile.harness.images`, :mod:`~rescompile.harness.shards`: streamed image folders and
  tar shards.
- :mod:`rescompile.harness.runtime`: the protocol a backend's runtime implements
  (``rescompile.backends.<name>.training``) and the options it receives.
- :mod:`rescompile.harness.data`: datasets (CIFAR-10/100 from local files, scikit-learn's
  digits, synthetic), numpy augmentation and a resumable, deterministic batch order.
- :mod:`rescompile.harness.schedules`: learning-rate schedules and the named training recipes.
- :mod:`rescompile.harness.metrics`: the ``metrics.jsonl`` log and its reader.
- :mod:`rescompile.harness.checkpoint`: the portable safetensors + JSON checkpoint format.
- :mod:`rescompile.harness.plots`: training curves in the style of He et al. (2016), Figure 6.
- :mod:`rescompile.harness.safepickle`: unpickling restricted to numpy arrays and plain data.

Nothing here imports torch, jax or flax; a backend supplies the train and eval steps.
Submodules are imported on demand, so ``import rescompile.harness`` stays cheap.
"""
