"""Caption decoding with the posterior: every step's word distribution is the model average of the
samples, p̄(w | image, prefix) = (1/S) Σ_s p(w | image, prefix, θ_s), and the S samples run together
in one batched forward per step (their weights stacked on a leading sample dimension, so a step is a
few batched matrix products, not a Python loop over models).

Symbols: S samples, B images (times the beam, while searching), F image-feature size, E embedding
size, H hidden size, V vocabulary size.

The LSTM here is the evaluation-mode `CaptionModel` (DropConnect masks have mean 1 and are off in
evaluation, so a sample's weights are used as they are; docs/spec.md#dropconnect-lstm).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .data import BOS, EOS, PAD
from .model import CaptionModel

#: The model's parameters, by the name they have in a `CaptionModel` state dict.
_PARAMETERS = (
    "image_proj.weight", "image_proj.bias", "embedding.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0",
    "lstm.bias_ih_l0", "lstm.bias_hh_l0", "output.weight", "output.bias",
)  # fmt: skip


class StackedCaptionModels:
    """S caption models (the posterior samples, or one model) with their weights stacked.

    Args:
        states: the samples' `CaptionModel` state dicts (S >= 1; any device).
        device: where the stacked weights live and the decoding runs.
        dtype: of the stacked weights and the computation (default float32).
    """

    def __init__(
        self,
        states: Sequence[Mapping[str, torch.Tensor]],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if not states:
            raise ValueError("StackedCaptionModels needs at least one sample")
        for i, state in enumerate(states):
            missing = [k for k in _PARAMETERS if k not in state]
            if missing:
                raise ValueError(f"sample {i} is not a CaptionModel state dict (missing {', '.join(missing)})")

        def stack(name: str) -> torch.Tensor:
            return torch.stack([s[name].to(device, dtype) for s in states])

        self.num_samples = len(states)
        self.proj_weight_t = stack("image_proj.weight").transpose(1, 2).contiguous()  # [S, F, E]
        self.proj_bias = stack("image_proj.bias")[:, None]  # [S, 1, E]
        self.embedding = stack("embedding.weight")  # [S, V, E]
        self.w_ih_t = stack("lstm.weight_ih_l0").transpose(1, 2).contiguous()  # [S, E, 4H]
        self.w_hh_t = stack("lstm.weight_hh_l0").transpose(1, 2).contiguous()  # [S, H, 4H]
        self.gate_bias = (stack("lstm.bias_ih_l0") + stack("lstm.bias_hh_l0"))[:, None]  # [S, 1, 4H]
        self.out_weight_t = stack("output.weight").transpose(1, 2).contiguous()  # [S, H, V]
        self.out_bias = stack("output.bias")[:, None]  # [S, 1, V]
        self.hidden_size = self.w_hh_t.shape[1]
        self.vocab_size = self.embedding.shape[1]
        self.device, self.dtype = torch.device(device), dtype

    @classmethod
    def from_model(cls, model: CaptionModel, dtype: torch.dtype = torch.float32) -> StackedCaptionModels:
        """One model (S = 1), on its own device."""
        return cls([model.state_dict()], next(model.parameters()).device, dtype)

    def _cell(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One LSTM step of every sample: x [S, B, E], h and c [S, B, H] -> (h, c); gates (i, f, g, o)
        as nn.LSTM."""
        gates = torch.baddbmm(torch.baddbmm(self.gate_bias, x, self.w_ih_t), h, self.w_hh_t)
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def _average(self, h: torch.Tensor) -> torch.Tensor:
        """The samples' averaged word distribution [B, V] from their hidden states h [S, B, H]."""
        logits = torch.baddbmm(self.out_bias, h, self.out_weight_t)
        probs = torch.softmax(logits, dim=-1).mean(0)
        if not bool(torch.isfinite(probs).all()):
            raise ValueError("the averaged word distribution holds NaN or inf: a sample's weights are not finite")
        return probs

    @torch.no_grad()
    def start(self, features: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Read the image and then <bos>: features [B, F] -> (state (h, c), each [S, B, H]; p̄ of the
        first word [B, V])."""
        s, b = self.num_samples, features.shape[0]
        if features.dim() != 2 or features.shape[1] != self.proj_weight_t.shape[1]:
            raise ValueError(f"features must be [B, {self.proj_weight_t.shape[1]}], got {tuple(features.shape)}")
        feats = features.to(self.device, self.dtype)[None].expand(s, b, -1)
        with self._weights_dtype():
            image = torch.baddbmm(self.proj_bias, feats, self.proj_weight_t)  # [S, B, E]
            zeros = torch.zeros(s, b, self.hidden_size, device=self.device, dtype=self.dtype)
            h, c = self._cell(image, zeros, zeros)
        return self.step((h, c), torch.full((b,), BOS, dtype=torch.long, device=self.device))

    @torch.no_grad()
    def step(
        self, state: tuple[torch.Tensor, torch.Tensor], tokens: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Read `tokens` int64 [B]: (the new state, p̄ of the next word [B, V])."""
        x = self.embedding[:, tokens.to(self.device)]  # [S, B, E]
        with self._weights_dtype():
            h, c = self._cell(x, *state)
            return (h, c), self._average(h)

    def _weights_dtype(self) -> torch.autocast:
        """Autocast off: decoding computes in the weights' dtype whatever autocast the caller (a trainer
        under --precision) has on, so the predictive averages stay fp32."""
        return torch.autocast(self.device.type, enabled=False)


def beam_search(
    models: StackedCaptionModels, features: torch.Tensor, *, beam: int = 3, max_len: int = 20
) -> list[list[int]]:
    """The most probable caption of each image under the averaged model, by beam search.

    A hypothesis's score is the sum of log p̄ of its tokens, <eos> included, divided by that number of
    tokens (length normalisation: without it, search favours short captions). Each image's search ends
    once it has `beam` finished captions; a caption reaches at most `max_len` words (<eos> is then the
    only choice). beam = 1 is greedy decoding.

    Args:
        features: float [B, F].
    Returns:
        B lists of word ids (no <bos>/<eos>).
    """
    if beam < 1 or max_len < 1:
        raise ValueError(f"need beam >= 1 and max_len >= 1, got beam={beam}, max_len={max_len}")
    device, k = models.device, beam
    b = features.shape[0]
    state, probs = models.start(features)
    # k live hypotheses per image; at first only one, the others at -inf (rows b * k + j).
    state = tuple(t.repeat_interleave(k, dim=1) for t in state)
    probs = probs.repeat_interleave(k, dim=0)
    scores = torch.full((b, k), -torch.inf, device=device, dtype=torch.float64)
    scores[:, 0] = 0.0
    seqs = torch.zeros(b, k, 0, dtype=torch.long, device=device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
    done = torch.zeros(b, dtype=torch.bool)
    vocab = probs.shape[1]
    for t in range(max_len + 1):
        logp = probs.double().clamp_min(torch.finfo(torch.float64).tiny).log().view(b, k, vocab)
        logp[..., PAD] = logp[..., BOS] = -torch.inf
        if t == max_len:  # the longest caption: it ends here
            eos = logp[..., EOS].clone()
            logp.fill_(-torch.inf)
            logp[..., EOS] = eos
        cand = (scores[..., None] + logp).view(b, k * vocab)
        values, index = cand.topk(2 * k, dim=1)  # at most k of them end with <eos>, so k go on
        origin, token = index // vocab, index % vocab
        is_eos = token == EOS
        # Captions that end here, among the top k candidates (those beyond cannot beat the live ones).
        ends = (is_eos & (torch.arange(2 * k, device=device) < k) & torch.isfinite(values)).cpu()
        for i, j in ends.nonzero().tolist():
            if not done[i]:
                words = seqs[i, origin[i, j]].tolist()
                finished[i].append((float(values[i, j]) / (len(words) + 1), words))
        done |= torch.tensor([len(f) >= k for f in finished])
        if bool(done.all()) or t == max_len:
            break
        # The k best candidates that do not end go on.
        rank = torch.arange(2 * k, device=device) + is_eos * (2 * k)
        keep = rank.argsort(dim=1)[:, :k]
        origin, token, scores = origin.gather(1, keep), token.gather(1, keep), values.gather(1, keep)
        seqs = torch.cat([seqs.gather(1, origin[..., None].expand(-1, -1, seqs.shape[2])), token[..., None]], 2)
        rows = (torch.arange(b, device=device)[:, None] * k + origin).flatten()
        state, probs = models.step(tuple(s[:, rows] for s in state), token.flatten())
    # The best finished caption (the first found on ties).
    return [max(f, key=lambda item: item[0])[1] for f in finished]


def greedy_decode(models: StackedCaptionModels, features: torch.Tensor, *, max_len: int = 20) -> list[list[int]]:
    """The caption that takes the most probable word under p̄ at each step (beam search with beam 1)."""
    return beam_search(models, features, beam=1, max_len=max_len)


def decode_in_batches(
    models: StackedCaptionModels, features: torch.Tensor, *, beam: int, max_len: int, batch_size: int
) -> list[list[int]]:
    """`beam_search` over features [N, F] in batches of `batch_size` images (bounded memory)."""
    out: list[list[int]] = []
    for start in range(0, len(features), batch_size):
        out.extend(beam_search(models, features[start : start + batch_size], beam=beam, max_len=max_len))
    return out
