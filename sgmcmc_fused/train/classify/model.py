"""The sentence classifier: embedding → dropout → bidirectional DropConnectLSTM → dropout → linear.

Symbols: B sentences in a batch, T the longest of them (tokens), V vocabulary size, E embedding size,
H hidden size per direction, D directions (2 if bidirectional), L layers, C classes.

The architecture of Gan et al. (2017) for sentence classification: the final hidden states of the two
directions of the last layer are concatenated (D·H features) and classified by a linear softmax layer,
with dropout on the embeddings and on that vector. Padding is never read: a batch is packed
(`torch.nn.utils.rnn.pack_padded_sequence`), so each direction's final state is the state after the
sentence's own last (forward) or first (reverse) token, whatever the length of the batch's longest one.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from ...nn import DropConnectLSTM

#: Range of the uniform initialisation of word vectors not taken from a pretrained file (Kim 2014).
EMBEDDING_INIT = 0.25


class SentenceClassifier(nn.Module):
    """Bidirectional DropConnect-LSTM sentence classifier.

    Args:
        vocab_size: V.
        num_classes: C.
        embedding_dim: E (ignored when `embeddings` is given: its width).
        hidden_size: H, per direction.
        num_layers: L.
        bidirectional: D = 2 (default) or 1.
        dropout: probability of dropout on the embeddings, between LSTM layers, and on the final vector.
        dropconnect, mask, masked: DropConnect of the LSTM weights (see `DropConnectLSTM`).
        embeddings: optional float [V, E] initial word vectors (e.g. word2vec); otherwise U(±0.25).
        freeze_embeddings: keep the word vectors fixed (Kim's "static"; they are then not sampled either).
        lstm_seed: key of the DropConnect mask stream (docs/spec.md#stream-words).
        lstm_impl: DropConnectLSTM backend.
    """

    #: The modules of each part of the model that --prior-std names (`sgmcmc_fused.train.priors`).
    PRIOR_GROUPS: ClassVar[dict[str, tuple[str, ...]]] = {
        "embedding": ("embedding",),
        "lstm": ("lstm",),
        "output": ("output",),
    }

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        *,
        embedding_dim: int = 300,
        hidden_size: int = 200,
        num_layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.5,
        dropconnect: float = 0.0,
        mask: str = "bernoulli",
        masked: str = "hh",
        embeddings: torch.Tensor | None = None,
        freeze_embeddings: bool = False,
        lstm_seed: int | None = None,
        lstm_impl: str = "auto",
    ) -> None:
        super().__init__()
        if embeddings is not None:
            if embeddings.dim() != 2 or embeddings.shape[0] != vocab_size:
                raise ValueError(f"embeddings must be [{vocab_size}, E], got {tuple(embeddings.shape)}")
            embedding_dim = embeddings.shape[1]
        self.num_classes = num_classes
        self.dropout = float(dropout)
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        with torch.no_grad():
            if embeddings is None:
                self.embedding.weight.uniform_(-EMBEDDING_INIT, EMBEDDING_INIT)
            else:
                self.embedding.weight.copy_(embeddings)
        self.embedding.weight.requires_grad_(not freeze_embeddings)
        with warnings.catch_warnings():
            # One layer: the LSTM's between-layer dropout has no effect, as expected; ours still acts.
            warnings.simplefilter("ignore", UserWarning)
            self.lstm = DropConnectLSTM(
                embedding_dim, hidden_size, num_layers, dropout=dropout, bidirectional=bidirectional,
                dropconnect=dropconnect, mask=mask, masked=masked, impl=lstm_impl, seed=lstm_seed,
            )  # fmt: skip
        self.output = nn.Linear(self.lstm.num_directions * hidden_size, num_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens: [T, B] int64 ids, padded with any valid id after each sentence's end; lengths: [B]
        int64, each in [1, T]. Returns logits [B, C]."""
        emb = F.dropout(self.embedding(tokens), self.dropout, self.training)
        packed = pack_padded_sequence(emb, lengths.cpu(), enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)  # h_n: [L * D, B, H], in the batch's order
        d = self.lstm.num_directions
        final = torch.cat(list(h_n[-d:]), dim=1)  # last layer: forward (and reverse) final states [B, D * H]
        return self.output(F.dropout(final, self.dropout, self.training))


def pad_batch(sentences: list[torch.Tensor], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Time-major padded ids [T, B] (padding id 0, never read) and lengths [B] of 1-D id tensors."""
    lengths = torch.tensor([len(s) for s in sentences], dtype=torch.long)
    tokens = torch.zeros(int(lengths.max()), len(sentences), dtype=torch.long)
    for b, s in enumerate(sentences):
        tokens[: len(s), b] = s
    return tokens.to(device, non_blocking=True), lengths


@torch.no_grad()
def class_probabilities(
    model: SentenceClassifier, sentences: list[torch.Tensor], batch_size: int, device: torch.device | str
) -> torch.Tensor:
    """p(y = c | sentence n, θ) for every sentence, in eval mode: float64 CPU [N, C], rows in `sentences`'
    order. Sentences are batched by length (less padding); the result does not depend on `batch_size`
    beyond float rounding."""
    was_training = model.training
    model.eval()
    try:
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
        out = torch.empty(len(sentences), model.num_classes, dtype=torch.float64)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            tokens, lengths = pad_batch([sentences[i] for i in idx], device)
            logits = model(tokens, lengths)
            out[torch.tensor(idx)] = torch.softmax(logits.double(), dim=-1).cpu()
        return out
    finally:
        model.train(was_training)
