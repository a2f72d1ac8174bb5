"""jaxrnn inside Flax: `jaxrnn.flax.linen` and `jaxrnn.flax.nnx` (install `jaxrnn[flax]`).

Importing this package imports nothing of Flax; each submodule imports it when it is imported.
"""
