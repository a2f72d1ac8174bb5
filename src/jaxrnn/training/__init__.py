"""Training: masked losses and metrics, the Optax step, the loop, truncated BPTT, checkpoints
and data parallelism. Every public name is re-exported from `jaxrnn`."""

from jaxrnn.training._checkpoint import Checkpointer
from jaxrnn.training._loop import FitResult, fit
from jaxrnn.training._losses import (bits_per_character, masked_accuracy, masked_cross_entropy,
                                     masked_mae, masked_mse, perplexity)
from jaxrnn.training._sharding import data_mesh, replicate, shard_batch
from jaxrnn.training._step import train_step
from jaxrnn.training._tbptt import tbptt_step

__all__ = [
    "Checkpointer",
    "FitResult",
    "bits_per_character",
    "data_mesh",
    "fit",
    "masked_accuracy",
    "masked_cross_entropy",
    "masked_mae",
    "masked_mse",
    "perplexity",
    "replicate",
    "shard_batch",
    "tbptt_step",
    "train_step",
]
