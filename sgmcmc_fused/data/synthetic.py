"""A seeded random hidden Markov model: a word source whose best possible perplexity is known.

Symbols: K hidden states, V words, n tokens.

The source is a stationary HMM: a hidden Markov chain s_1, s_2, ... with transition matrix
A [K, K] started from its stationary distribution pi [K], emitting word x_t ~ E[s_t, :] (E [V]
per state). Rows of A and E are Dirichlet(concentration) draws, which for a small concentration
are sparse (each state moves to a few states and emits a few dozen words), so the structure is
learnable by a small LSTM; they are mixed with 1e-3 of the uniform distribution so that every
transition and every word has positive probability (the chain is ergodic and every log-probability
is finite).

What "Bayes-optimal" means here: no predictor of x_t from x_<t does better, in expected log loss,
than the true conditional p(x_t | x_<t), which the forward algorithm computes exactly
(`HMMSource.log_predictive`). Its average log loss on a long sample converges (Shannon-McMillan-
Breiman, the chain being ergodic) to the source's *entropy rate*
H = lim_n H(x_1..x_n) / n = lim_n H(x_n | x_<n), in nats per token, and exp(H) is the lowest
perplexity any model can reach on this source (`bayes_perplexity`). A language model trained on a
sample can at best approach it; the gap measures what the model and its training leave on the table.
The entropy rate has no closed form for an HMM; it is bracketed by
H(x_t | s_t) = sum_k pi_k H(E_k) <= H <= H(x_t | x_{t-1}).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .corpus import Corpus, Vocabulary

__all__ = ["HMMSource", "make_synthetic_corpus", "sample_synthetic_corpus"]

#: Weight of the uniform distribution mixed into every Dirichlet row.
_FLOOR = 1e-3


def _stationary(transition: np.ndarray) -> np.ndarray:
    """Stationary distribution pi of a row-stochastic matrix (pi A = pi), float64 [K]."""
    k = transition.shape[0]
    # Solve pi (A - I) = 0 with sum(pi) = 1 as a least-squares system; exact for an ergodic chain.
    m = np.vstack([transition.T - np.eye(k), np.ones((1, k))])
    rhs = np.zeros(k + 1)
    rhs[-1] = 1.0
    pi, *_ = np.linalg.lstsq(m, rhs, rcond=None)
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


@dataclass
class HMMSource:
    """A stationary hidden Markov model over word ids 0..V-1 (float64 parameters).

    Attributes:
        transition: [K, K], transition[i, j] = p(s_{t+1} = j | s_t = i); rows sum to 1.
        emission: [K, V], emission[k, w] = p(x_t = w | s_t = k); rows sum to 1.
        initial: [K], distribution of s_1 (the stationary distribution for `random` sources).
    """

    transition: np.ndarray
    emission: np.ndarray
    initial: np.ndarray

    def __post_init__(self):
        self.transition = np.asarray(self.transition, dtype=np.float64)
        self.emission = np.asarray(self.emission, dtype=np.float64)
        self.initial = np.asarray(self.initial, dtype=np.float64)
        k = self.transition.shape[0]
        if self.transition.shape != (k, k) or self.emission.shape[0] != k or self.initial.shape != (k,):
            raise ValueError(
                f"shapes must be transition [K, K], emission [K, V], initial [K]; got "
                f"{self.transition.shape}, {self.emission.shape}, {self.initial.shape}"
            )
        for name, m in (("transition", self.transition), ("emission", self.emission), ("initial", self.initial)):
            if (m < 0).any() or not np.allclose(m.sum(-1), 1.0, atol=1e-9):
                raise ValueError(f"{name} must be non-negative with rows summing to 1")

    @property
    def num_states(self) -> int:
        return self.transition.shape[0]

    @property
    def vocab_size(self) -> int:
        return self.emission.shape[1]

    @classmethod
    def random(cls, num_states: int, vocab_size: int, seed: int, concentration: float = 0.1) -> HMMSource:
        """A random source: Dirichlet(concentration) rows (1e-3 uniform mixed in), stationary start.

        Deterministic in `seed` (numpy's PCG64). Smaller `concentration` gives sparser rows and a
        lower entropy rate.
        """
        if num_states < 1 or vocab_size < 2:
            raise ValueError(f"need num_states >= 1 and vocab_size >= 2, got {num_states}, {vocab_size}")
        if not concentration > 0:
            raise ValueError(f"concentration must be > 0, got {concentration}")
        rng = np.random.default_rng(seed)
        a = rng.dirichlet(np.full(num_states, concentration), size=num_states)
        e = rng.dirichlet(np.full(vocab_size, concentration), size=num_states)
        a = (1 - _FLOOR) * a + _FLOOR / num_states
        e = (1 - _FLOOR) * e + _FLOOR / vocab_size
        a /= a.sum(1, keepdims=True)
        e /= e.sum(1, keepdims=True)
        return cls(a, e, _stationary(a))

    def sample(self, num_tokens: int, generator: torch.Generator) -> torch.Tensor:
        """A sample x_1..x_n of the source: LongTensor [num_tokens], ids in [0, V).

        All randomness comes from `generator` (two float64 uniform draws per token), so the same
        generator state gives the same sample on every machine.
        """
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        u = torch.rand(2, num_tokens, generator=generator, dtype=torch.float64).numpy()
        k = self.num_states
        cum_a = np.cumsum(self.transition, axis=1)
        cum_a[:, -1] = 1.0  # rounding: u < 1 must always land in a state
        cum_e = np.cumsum(self.emission, axis=1)
        cum_e[:, -1] = 1.0
        cum_0 = np.cumsum(self.initial)
        cum_0[-1] = 1.0
        # next_state[i][t]: the state after state i given the uniform u[0, t], for all i at once
        # (vectorised), so that the sequential part is one list lookup per token. Chunks bound the
        # memory of the K x chunk table.
        states = np.empty(num_tokens, dtype=np.int64)
        s = min(int(np.searchsorted(cum_0, u[0, 0], side="right")), k - 1)
        states[0] = s
        chunk = 1 << 16
        for c0 in range(1, num_tokens, chunk):
            uc = u[0, c0 : c0 + chunk]
            next_state = np.stack([np.searchsorted(cum_a[i], uc, side="right") for i in range(k)])
            next_state = np.minimum(next_state, k - 1).tolist()
            out = []
            for t in range(len(uc)):
                s = next_state[s][t]
                out.append(s)
            states[c0 : c0 + len(uc)] = out
        words = np.empty(num_tokens, dtype=np.int64)
        for i in range(k):
            mask = states == i
            words[mask] = np.searchsorted(cum_e[i], u[1, mask], side="right")
        np.minimum(words, self.vocab_size - 1, out=words)
        return torch.from_numpy(words)

    def log_predictive(self, tokens: torch.Tensor) -> torch.Tensor:
        """Exact log p(x_t | x_<t) of each token by the forward algorithm: float64 [n], nats.

        The state filter p(s_t | x_<=t) is kept as log-probabilities and renormalised at every
        step (log-sum-exp), so there is no underflow however long the sequence; the sum of the
        result is log p(x_1..x_n).
        """
        x = torch.as_tensor(tokens).reshape(-1).tolist()
        if x and (min(x) < 0 or max(x) >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got range [{min(x)}, {max(x)}]")
        log_e_cols = np.log(self.emission.T).copy()  # [V, K]: one contiguous row per word
        a = self.transition
        out = np.empty(len(x), dtype=np.float64)
        with np.errstate(divide="ignore"):
            log_pred = np.log(self.initial)  # log p(s_t | x_<t)
        for t, w in enumerate(x):
            joint = log_pred + log_e_cols[w]  # log p(s_t, x_t | x_<t)
            m = joint.max()
            p = np.exp(joint - m)
            z = p.sum()
            out[t] = m + math.log(z)
            # p / z is the filter p(s_t | x_<=t); one matrix-vector product predicts s_{t+1}.
            # The filter is normalised, so its largest entry is >= 1/K and the log is finite
            # up to states that are truly impossible (log 0 = -inf, harmless in the max above).
            with np.errstate(divide="ignore"):
                log_pred = np.log((p / z) @ a)
        return torch.from_numpy(out)

    def bayes_perplexity(self, tokens: torch.Tensor) -> float:
        """exp(-mean_t log p(x_t | x_<t)): the perplexity of the true predictive on `tokens`.

        On a long sample of the source this approaches exp(entropy rate), the lowest perplexity
        any model can reach (see the module docstring).
        """
        lp = self.log_predictive(tokens)
        if lp.numel() == 0:
            raise ValueError("bayes_perplexity needs at least one token")
        return float(torch.exp(-lp.mean()))

    def state_entropy_bounds(self) -> tuple[float, float]:
        """(H(x_t | s_t), H(x_t | x_{t-1})) in nats: lower and upper bounds on the entropy rate."""
        e, a, pi = self.emission, self.transition, self.initial
        h_given_state = float(-(pi[:, None] * e * np.log(e)).sum())
        # p(x_{t-1} = u, x_t = w) = sum_{i,j} pi_i E[i,u] A[i,j] E[j,w]
        joint = (e.T * pi) @ a @ e  # [V, V]
        marg = joint.sum(1, keepdims=True)
        h_bigram = float(-(joint * np.log(joint / marg)).sum())
        return h_given_state, h_bigram


def make_synthetic_corpus(
    seed: int = 0,
    num_states: int = 16,
    vocab_size: int = 200,
    train_tokens: int = 200_000,
    valid_tokens: int = 20_000,
    test_tokens: int = 20_000,
    concentration: float = 0.1,
) -> tuple[Corpus, float]:
    """A word-level Corpus sampled from `HMMSource.random(num_states, vocab_size, seed)`.

    train, valid and test are three independent samples (each from the stationary start) drawn in
    that order from ``torch.Generator().manual_seed(seed)``. Tokens are "w0".."w{V-1}" and the
    vocabulary maps "w{i}" to id i (no unknown token, no "<eos>"). Returns the corpus and the
    Bayes-optimal test perplexity (`HMMSource.bayes_perplexity` of the test split), the floor a
    model's test perplexity can approach from above. Deterministic in its arguments; about a
    second on one CPU core for the defaults.
    """
    corpus, source = sample_synthetic_corpus(
        seed, num_states, vocab_size, train_tokens, valid_tokens, test_tokens, concentration
    )
    return corpus, source.bayes_perplexity(corpus.test)


def sample_synthetic_corpus(
    seed: int = 0,
    num_states: int = 16,
    vocab_size: int = 200,
    train_tokens: int = 200_000,
    valid_tokens: int = 20_000,
    test_tokens: int = 20_000,
    concentration: float = 0.1,
) -> tuple[Corpus, HMMSource]:
    """The corpus of `make_synthetic_corpus` and the source it was drawn from, for callers that score
    other stretches of it than the whole test split (no forward pass here)."""
    source = HMMSource.random(num_states, vocab_size, seed, concentration)
    g = torch.Generator().manual_seed(seed)
    train = source.sample(train_tokens, g)
    valid = source.sample(valid_tokens, g)
    test = source.sample(test_tokens, g)
    vocab = Vocabulary([f"w{i}" for i in range(vocab_size)], unk=None)
    return Corpus(train, valid, test, vocab, "word"), source
