"""Code-generation targets: rescompile.backends.torch and rescompile.backends.flax."""
