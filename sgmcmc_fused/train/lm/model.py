"""The language model: embedding → dropout → DropConnectLSTM → dropout → linear softmax.

Symbols: T time steps, B batch, V vocabulary size, H hidden size, L layers.

This is Zaremba et al.'s (2014) architecture, as used by Gan et al. (2017): dropout on the non-recurrent
connections (the embedding output, between LSTM layers, before the softmax), DropConnect masks on the
LSTM weights (recurrent by default), every parameter initialised U(-init_scale, init_scale).
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ...data import successive_batches
from ...nn import DropConnectLSTM

#: Hidden state of the LSTM: (h, c), each [L, B, H].
Hidden = tuple[torch.Tensor, torch.Tensor]


class LanguageModel(nn.Module):
    """Word- or character-level LSTM language model.

    Args:
        vocab_size: V.
        hidden_size: H, also the embedding size (as Zaremba et al.).
        num_layers: L.
        dropout: probability of dropout on the embedding output, between layers and before the softmax.
        dropconnect: DropConnect probability (Bernoulli) or noise level (Gaussian) of the LSTM weights.
        mask: "bernoulli" or "gaussian".
        masked: which LSTM matrices are masked: "hh" (recurrent), "ih" (input) or "both".
        init_scale: every parameter is drawn U(-init_scale, init_scale).
        lstm_seed: key of the DropConnect mask stream (docs/spec.md#stream-words).
        lstm_impl: DropConnectLSTM backend ("auto", "cpu", "cuda", "triton", "eager").
    """

    #: The modules of each part of the model that --prior-std names (`sgmcmc_fused.train.priors`).
    PRIOR_GROUPS: ClassVar[dict[str, tuple[str, ...]]] = {
        "embedding": ("embedding",),
        "lstm": ("lstm",),
        "output": ("decoder",),
    }

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        num_layers: int,
        *,
        dropout: float = 0.0,
        dropconnect: float = 0.0,
        mask: str = "bernoulli",
        masked: str = "hh",
        init_scale: float = 0.1,
        lstm_seed: int | None = None,
        lstm_impl: str = "auto",
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = float(dropout)
        self.embedding = nn.Embedding(vocab_size, hidden_size)
        with warnings.catch_warnings():
            # dropout with one layer: the LSTM's own (between-layer) dropout has no effect, which is
            # expected here; the model's dropout still acts on the embedding and before the softmax.
            warnings.simplefilter("ignore", UserWarning)
            self.lstm = DropConnectLSTM(
                hidden_size, hidden_size, num_layers, dropout=dropout, dropconnect=dropconnect,
                mask=mask, masked=masked, impl=lstm_impl, seed=lstm_seed,
            )  # fmt: skip
        self.decoder = nn.Linear(hidden_size, vocab_size)
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-init_scale, init_scale)

    def forward(self, x: torch.Tensor, hidden: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
        """x: [T, B] token ids (int64). Returns logits [T, B, V] and the final (h, c), each [L, B, H]."""
        emb = F.dropout(self.embedding(x), self.dropout, self.training)
        out, hidden = self.lstm(emb, hidden)
        out = F.dropout(out, self.dropout, self.training)
        return self.decoder(out), hidden


def detach_hidden(hidden: Hidden | None) -> Hidden | None:
    """Cut the graph at a minibatch boundary (truncated BPTT keeps the values, not the history)."""
    return None if hidden is None else (hidden[0].detach(), hidden[1].detach())


@torch.no_grad()
def target_probabilities(
    model: LanguageModel, data_tb: torch.Tensor, bptt: int, device: torch.device | str
) -> torch.Tensor:
    """Per-token probability p(y_t | y_<t) of every target of a batchified split, in eval mode.

    Args:
        data_tb: [T, B] token ids (a split batchified into B parallel streams). The hidden state is
            carried across chunks of `bptt` steps and starts at zero, so every target but the first of
            each stream is predicted with its full history in the stream.
        bptt: chunk length (memory only; the result does not depend on it).
    Returns:
        float64 CPU tensor [(T - 1) * B] of target probabilities, time-major (chunk by chunk, then
        t, then b): the same order for every parameter sample, so samples' probabilities can be averaged.
    """
    was_training = model.training
    model.eval()
    try:
        out = []
        hidden = None
        for x, y in successive_batches(data_tb, bptt):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits, hidden = model(x, hidden)
            logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
            out.append(logp.reshape(-1).double().exp().cpu())
        return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)
    finally:
        model.train(was_training)
