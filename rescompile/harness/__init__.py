"""Backend-neutral training harness.

The pieces a training run needs that do not depend on a framework:

- :mod:`rescompile.harness.loop`: the driver behind ``rescompile train`` and ``rescompile plot``
  (data, schedule, loop, evaluation, logging, checkpoints, resume, summary).
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
