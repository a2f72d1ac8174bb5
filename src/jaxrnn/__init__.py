"""jaxrnn: functional recurrent networks for JAX.

A cell is a NamedTuple of pure functions over an explicit parameter pytree; `jr.scan` runs it
over time with `jax.lax.scan`; layers compose cells into sequence models.
"""

from jaxrnn import diagnostics, interop
from jaxrnn._types import Cell, Layer, LinearRecurrence, LSTMState
from jaxrnn._streaming import step_layer, stream
from jaxrnn.cells import (ZoneoutState, conv_gru, conv_lstm, gru, indrnn, layer_norm_gru,
                          layer_norm_lstm, linear_indrnn, lru, lstm, min_gru, min_lstm, simple_rnn,
                          variational_dropout, weight_drop, with_carries, zoneout)
from jaxrnn.drivers import (NewtonInfo, newton_scan, parallel_scan, scan, scan_plan,
                            static_unroll)
from jaxrnn.layers import (bidirectional, dropout, flip_sequences, learned_initial_carry, rnn,
                           stack)
from jaxrnn import testing
from jaxrnn.models import (BeamSearchResult, DecoderState, Dense, Embedding, Generation,
                           LanguageModel, Memory, Seq2Seq, beam_search, bidirectional_last,
                           dense, embedding,
                           generate, greedy_decode, language_model, last_valid, lm_step,
                           masked_mean, seq2seq, sequence_mask)
from jaxrnn.training import (Checkpointer, FitResult, bits_per_character, data_mesh, fit,
                             masked_accuracy, masked_cross_entropy, masked_mae, masked_mse,
                             perplexity, replicate, shard_batch, tbptt_step, train_step)

__version__ = "0.1.0"

__all__ = [
    "BeamSearchResult",
    "Cell",
    "Checkpointer",
    "DecoderState",
    "Dense",
    "Embedding",
    "FitResult",
    "Generation",
    "LanguageModel",
    "Layer",
    "LinearRecurrence",
    "LSTMState",
    "Memory",
    "NewtonInfo",
    "Seq2Seq",
    "ZoneoutState",
    "beam_search",
    "bidirectional",
    "bidirectional_last",
    "bits_per_character",
    "conv_gru",
    "conv_lstm",
    "data_mesh",
    "dense",
    "diagnostics",
    "dropout",
    "embedding",
    "fit",
    "flip_sequences",
    "generate",
    "greedy_decode",
    "gru",
    "indrnn",
    "interop",
    "language_model",
    "last_valid",
    "layer_norm_gru",
    "layer_norm_lstm",
    "learned_initial_carry",
    "linear_indrnn",
    "lm_step",
    "lru",
    "lstm",
    "masked_accuracy",
    "masked_cross_entropy",
    "masked_mae",
    "masked_mean",
    "masked_mse",
    "min_gru",
    "min_lstm",
    "newton_scan",
    "parallel_scan",
    "perplexity",
    "replicate",
    "rnn",
    "scan",
    "scan_plan",
    "seq2seq",
    "sequence_mask",
    "shard_batch",
    "simple_rnn",
    "stack",
    "static_unroll",
    "step_layer",
    "stream",
    "tbptt_step",
    "testing",
    "train_step",
    "variational_dropout",
    "weight_drop",
    "with_carries",
    "zoneout",
]
