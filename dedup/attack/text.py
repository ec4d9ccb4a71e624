"""A small caption encoder trained jointly with the diffusion model (the Flickr8k setting in miniature).

Word-level vocabulary from the training captions, a few transformer layers, output one vector per token
for the UNet's cross-attention. Token 0 pads, 1 stands for unknown words, 2 begins every caption; the empty
caption (only the begin token) is the unconditional input of classifier-free guidance, which caption dropout
teaches the model.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

PAD, UNKNOWN, BEGIN = 0, 1, 2
_WORD = re.compile(r"[a-z0-9]+")


def words(caption: str) -> list[str]:
    return _WORD.findall(caption.lower())


class CaptionVocabulary:
    def __init__(self, vocabulary: Sequence[str], max_words: int):
        self.vocabulary = list(vocabulary)
        self.max_words = max_words
        self._ids = {word: BEGIN + 1 + i for i, word in enumerate(self.vocabulary)}

    @classmethod
    def build(cls, captions: Sequence[str], size: int, max_words: int) -> CaptionVocabulary:
        counts = Counter(word for caption in captions for word in words(caption))
        return cls([word for word, _ in counts.most_common(size)], max_words)

    def __len__(self) -> int:
        return BEGIN + 1 + len(self.vocabulary)

    @property
    def length(self) -> int:
        return self.max_words + 1

    def encode(self, captions: Sequence[str]) -> np.ndarray:
        """Token ids (n, max_words + 1): the begin token, the caption's words, padding."""
        tokens = np.full((len(captions), self.length), PAD, np.int64)
        tokens[:, 0] = BEGIN
        for row, caption in enumerate(captions):
            ids = [self._ids.get(word, UNKNOWN) for word in words(caption)][: self.max_words]
            tokens[row, 1 : 1 + len(ids)] = ids
        return tokens

    def empty(self, count: int = 1) -> np.ndarray:
        return self.encode([""] * count)

    def to_json(self) -> dict:
        return {"vocabulary": self.vocabulary, "max_words": self.max_words}


class CaptionEncoder(torch.nn.Module):
    def __init__(self, vocabulary_size: int, length: int, width: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.tokens = torch.nn.Embedding(vocabulary_size, width)
        self.positions = torch.nn.Parameter(torch.randn(length, width) * 0.02)
        layer = torch.nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.layers = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(width)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.tokens(token_ids) + self.positions[: token_ids.shape[1]]
        return self.norm(self.layers(hidden, src_key_padding_mask=token_ids == PAD))
