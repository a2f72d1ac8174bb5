"""Task shapes on top of layers: embedding, heads and pooling, masked losses, generation,
and the seq2seq encoder-decoder."""

from jaxrnn.models._embedding import Embedding, embedding
from jaxrnn.models._generate import (Generation, LanguageModel, generate, language_model,
                                     lm_step)
from jaxrnn.models._heads import (Dense, bidirectional_last, dense, last_valid, masked_mean,
                                  sequence_mask)
from jaxrnn.models._seq2seq import (BeamSearchResult, DecoderState, Memory, Seq2Seq,
                                    beam_search, greedy_decode, seq2seq)

__all__ = [
    "BeamSearchResult",
    "DecoderState",
    "Dense",
    "Embedding",
    "Generation",
    "LanguageModel",
    "Memory",
    "Seq2Seq",
    "beam_search",
    "bidirectional_last",
    "dense",
    "embedding",
    "generate",
    "greedy_decode",
    "language_model",
    "last_valid",
    "lm_step",
    "masked_mean",
    "seq2seq",
    "sequence_mask",
]
