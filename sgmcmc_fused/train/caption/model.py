"""The caption model: image features → linear → the LSTM's first input; words → embedding → the same
DropConnectLSTM → dropout → softmax over the vocabulary.

Symbols: B captions in a batch, L tokens of the longest (with <bos> and <eos>), F image-feature size,
E embedding size, H hidden size, V vocabulary size.

Where the image enters: as the LSTM's input at step 0, before <bos> (Show and Tell, Vinyals et al.
2015; NeuralTalk). The image then conditions the caption through the same gates and weights as the
words, so the posterior over the LSTM's weights covers how the image is read too, and there is a
single projection (F → E) rather than two to the initial hidden and cell states. The output after the
image step predicts nothing; the output after token t predicts token t + 1.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ...nn import DropConnectLSTM
from .data import PAD

#: Range of the uniform initialisation of the word embeddings and the output layer (the reference
#: language-model code's).
INIT_RANGE = 0.1


class CaptionModel(nn.Module):
    """A one-layer DropConnect-LSTM caption generator conditioned on an image-feature vector.

    Args:
        vocab_size: V (ids of `data.Vocabulary`: 0 <pad>, 1 <bos>, 2 <eos>, 3 <unk>, then words).
        feature_dim: F, the size of an image's feature vector.
        embedding_dim: E (also the size of the projected image).
        hidden_size: H.
        dropout: probability of dropout on the LSTM's inputs (image and words) and on its outputs.
        dropconnect, mask, masked: DropConnect of the LSTM weights (see `DropConnectLSTM`).
        lstm_seed: key of the DropConnect mask stream (docs/spec.md#stream-words).
        lstm_impl: DropConnectLSTM backend.

    Parameters (names used by `decode.StackedCaptionModels`): ``image_proj.{weight [E, F], bias [E]}``,
    ``embedding.weight [V, E]``, ``lstm.{weight_ih_l0 [4H, E], weight_hh_l0 [4H, H], bias_ih_l0,
    bias_hh_l0 [4H]}``, ``output.{weight [V, H], bias [V]}``.
    """

    #: The modules of each part of the model that --prior-std names (`sgmcmc_fused.train.priors`).
    PRIOR_GROUPS: ClassVar[dict[str, tuple[str, ...]]] = {
        "embedding": ("image_proj", "embedding"),
        "lstm": ("lstm",),
        "output": ("output",),
    }

    def __init__(
        self,
        vocab_size: int,
        feature_dim: int,
        *,
        embedding_dim: int = 512,
        hidden_size: int = 512,
        dropout: float = 0.5,
        dropconnect: float = 0.0,
        mask: str = "bernoulli",
        masked: str = "hh",
        lstm_seed: int | None = None,
        lstm_impl: str = "auto",
    ) -> None:
        super().__init__()
        self.vocab_size, self.feature_dim = vocab_size, feature_dim
        self.dropout = float(dropout)
        self.image_proj = nn.Linear(feature_dim, embedding_dim)
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = DropConnectLSTM(
            embedding_dim, hidden_size, 1, dropconnect=dropconnect, mask=mask, masked=masked, impl=lstm_impl,
            seed=lstm_seed,
        )  # fmt: skip
        self.output = nn.Linear(hidden_size, vocab_size)
        with torch.no_grad():
            self.embedding.weight.uniform_(-INIT_RANGE, INIT_RANGE)
            self.output.weight.uniform_(-INIT_RANGE, INIT_RANGE)
            self.output.bias.zero_()

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """features: float [B, F]; tokens: int64 [B, L] (<bos> w_1 .. w_n <eos> <pad> ...).

        Returns logits [L - 1, B, V]: row t predicts tokens[:, t + 1] (time-major, as the LSTM).
        """
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"features must be [B, {self.feature_dim}], got {tuple(features.shape)}")
        if tokens.dim() != 2 or tokens.shape[0] != features.shape[0] or tokens.shape[1] < 2:
            raise ValueError(f"tokens must be [{features.shape[0]}, L >= 2], got {tuple(tokens.shape)}")
        image = self.image_proj(features)[None]  # [1, B, E]
        words = self.embedding(tokens[:, :-1].t())  # [L - 1, B, E]: <bos> .. the last word
        x = F.dropout(torch.cat([image, words]), self.dropout, self.training)
        out, _ = self.lstm(x)  # [L, B, H]
        return self.output(F.dropout(out[1:], self.dropout, self.training))


def caption_loss(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean negative log-likelihood per target token (nats; <pad> targets excluded) and the number of
    targets. logits [L - 1, B, V] of `CaptionModel.forward`, tokens int64 [B, L]."""
    targets = tokens[:, 1:].t()  # [L - 1, B]
    count = (targets != PAD).sum()
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=PAD)
    return loss, count


@torch.no_grad()
def target_probabilities(
    model: CaptionModel, features: torch.Tensor, tokens: torch.Tensor, batch_size: int, device: torch.device | str
) -> torch.Tensor:
    """p(token | image, earlier tokens, θ) of every non-<pad> target, teacher-forced, in eval mode.

    features [M, F], tokens int64 [M, L] (CPU). Returns float64 CPU [number of targets], captions in
    order and each caption's targets in order (what `PredictiveAverager` averages across samples).
    """
    was_training = model.training
    model.eval()
    try:
        out = [torch.zeros(0, dtype=torch.float64)]  # none with no caption (a rank's empty share)
        for start in range(0, len(tokens), batch_size):
            tok = tokens[start : start + batch_size]
            width = int((tok != PAD).sum(1).max())
            tok = tok[:, :width].to(device)
            logits = model(features[start : start + batch_size].to(device), tok)
            logp = torch.log_softmax(logits.double(), -1)
            targets = tok[:, 1:].t()
            picked = logp.gather(-1, targets[..., None])[..., 0].t()  # [B, L - 1], caption-major
            out.append(picked[(tok[:, 1:] != PAD)].exp().cpu())
        return torch.cat(out)
    finally:
        model.train(was_training)
