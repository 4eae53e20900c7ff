"""Posterior samples, model averaging and predictive uncertainty
(docs/spec.md#posterior-averaging, docs/spec.md#uncertainty-metrics).

Symbols: S samples θ_1..θ_S, N evaluation items (tokens or sentences), C classes.

After `burn_in` steps, every `thin` steps, a sample of the parameters is kept (`SampleCollector`).
Predictions average *probabilities* over samples, p̄(y|x) = (1/S) Σ_s p(y|x, θ_s) (the Bayesian
predictive), and perplexity = exp(-mean_n log p̄(y_n|x_n)). `PredictiveAverager` keeps that mean
online (no samples stored); the uncertainty functions work on a stack of per-sample class
probabilities [S, N, C]. Entropies are in nats.
"""

from __future__ import annotations

import copy
import json
import math
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save
from torch import nn

from .atomic_file import atomic_write

__all__ = [
    "PredictiveAverager",
    "SampleCollector",
    "expected_calibration_error",
    "mutual_information",
    "exp_or_inf",
    "perplexity",
    "perplexity_by_num_samples",
    "predictive_entropy",
    "predictive_mean",
    "predictive_std",
    "split_rhat",
]

_FILE_RE = re.compile(r"^sample_(\d{8,})\.safetensors$")
_META_KEY = "sgmcmc_fused"


def _file_name(index: int) -> str:
    return f"sample_{index:08d}.safetensors"


def _atomic_write(path: Path, data: bytes) -> None:
    with atomic_write(path) as f:
        f.write(data)


class SampleCollector:
    """Keeps posterior samples (copies of a module's state_dict) taken along a sampler's run.

    A sample is taken at step t when t >= burn_in and (t - burn_in) % thin == 0. At most
    `max_samples` are kept (None: all; 0: none, the collector then only counts the samples taken,
    for callers that average online and need just the schedule); beyond that the oldest is
    dropped. Samples live in CPU
    memory, or, with `directory`, in ``directory/sample_XXXXXXXX.safetensors`` files (XXXXXXXX the
    collection index, counting every sample ever taken), each written to a temporary file and
    renamed, and deleted when dropped. The directory belongs to the collector.

    Samples are indexed 0 (oldest kept) .. len-1 (newest); negative indices count from the end.
    Each is a state dict {name: CPU tensor}, with the dtypes of the module's. Non-tensor entries
    (``_extra_state``) are deep-copied in memory and stored as JSON on disk.

    Checkpoints: `state_dict()` holds the samples themselves in memory mode, and only their file
    names in directory mode; `load_state_dict` restores either. In directory mode, sample files
    that the state does not list (taken after the checkpoint by a run that then died) are deleted;
    listed files that are gone (dropped after the checkpoint) are remembered as missing, which is
    harmless if the resumed run drops them again before reading them, as an exact replay does, and
    an error naming the file if it reads one.
    """

    def __init__(self, burn_in: int, thin: int, max_samples: int | None = None, directory: str | Path | None = None):
        if burn_in < 0 or thin < 1:
            raise ValueError(f"need burn_in >= 0 and thin >= 1, got burn_in={burn_in}, thin={thin}")
        if max_samples is not None and max_samples < 0:
            raise ValueError(f"max_samples must be >= 0 or None, got {max_samples}")
        if max_samples == 0 and directory is not None:
            raise ValueError(f"max_samples=0 keeps no sample, so directory={str(directory)!r} would stay empty")
        self.burn_in = burn_in
        self.thin = thin
        self.max_samples = max_samples
        self.directory = None if directory is None else Path(directory)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        # One record per kept sample: {"index": int, "step": int, and "state": dict (memory) or
        # "file": str (directory)}. Oldest first.
        self._records: list[dict[str, Any]] = []
        self._next_index = 0
        self._missing: set[str] = set()

    # -- collecting --------------------------------------------------------------------------
    def should_collect(self, step: int) -> bool:
        """Whether `maybe_collect` takes a sample at `step`."""
        return step >= self.burn_in and (step - self.burn_in) % self.thin == 0

    def maybe_collect(self, step: int, module: nn.Module) -> bool:
        """Take a copy of module.state_dict() if `step` is a sampling step; True if it did."""
        if not self.should_collect(step):
            return False
        self.collect(step, module)
        return True

    def collect(self, step: int, module: nn.Module) -> None:
        """Take a sample now, whatever the step (recorded with `step`)."""
        index = self._next_index
        if self.max_samples == 0:  # keeps none: count it, copy nothing
            self._next_index += 1
            return
        state = module.state_dict()
        record: dict[str, Any] = {"index": index, "step": int(step)}
        if self.directory is None:
            record["state"] = {
                k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else copy.deepcopy(v)
                for k, v in state.items()
            }
        else:
            name = _file_name(index)
            _atomic_write(self.directory / name, _to_safetensors(state, step=int(step), index=index))
            self._missing.discard(name)
            record["file"] = name
        self._records.append(record)
        self._next_index += 1
        while self.max_samples is not None and len(self._records) > self.max_samples:
            old = self._records.pop(0)
            if "file" in old:
                (self.directory / old["file"]).unlink(missing_ok=True)
                self._missing.discard(old["file"])

    # -- reading -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._records)

    @property
    def num_taken(self) -> int:
        """Samples taken since the start, kept or since dropped."""
        return self._next_index

    @property
    def steps(self) -> list[int]:
        """The step at which each kept sample was taken, oldest first."""
        return [r["step"] for r in self._records]

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Sample i as a state dict of CPU tensors (a fresh copy from disk in directory mode; the
        stored tensors themselves in memory mode, so do not modify them)."""
        record = self._records[i]
        if "state" in record:
            return record["state"]
        name = record["file"]
        path = self.directory / name
        if name in self._missing or not path.exists():
            raise FileNotFoundError(
                f"sample {i} (step {record['step']}) is gone: {path} does not exist (the run that wrote the "
                "checkpoint may have dropped it later, or the samples are in another folder)"
            )
        return _from_safetensors(path)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """State dicts of the kept samples, oldest first (read one at a time in directory mode)."""
        for i in range(len(self)):
            yield self[i]

    def load(self, i: int, module: nn.Module) -> nn.Module:
        """Load sample i into `module` (strict load_state_dict; copies onto the module's device)."""
        module.load_state_dict(self[i])
        return module

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Picklable state (tensors, lists, ints, str only: loadable with torch.load(weights_only=True))."""
        records = []
        for r in self._records:
            rec = {"index": r["index"], "step": r["step"]}
            if "state" in r:
                rec["state"] = dict(r["state"])
            else:
                rec["file"] = r["file"]
            records.append(rec)
        return {
            "burn_in": self.burn_in,
            "thin": self.thin,
            "max_samples": self.max_samples,
            "next_index": self._next_index,
            "in_memory": self.directory is None,
            "records": records,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()`. The collector must be in the same mode (memory or directory)."""
        if bool(state["in_memory"]) != (self.directory is None):
            saved = "in memory" if state["in_memory"] else "on disk"
            have = "in memory" if self.directory is None else f"in {self.directory}"
            raise ValueError(f"the state was saved by a collector keeping samples {saved}; this one keeps them {have}")
        self.burn_in, self.thin, self.max_samples = state["burn_in"], state["thin"], state["max_samples"]
        self._next_index = int(state["next_index"])
        self._records = [dict(r) for r in state["records"]]
        self._missing = set()
        if self.directory is None:
            return
        listed = {r["file"] for r in self._records}
        for p in self.directory.iterdir():
            if p.name.endswith(".tmp") and p.name.startswith(".sample_"):
                p.unlink(missing_ok=True)  # a write interrupted by a crash
            elif _FILE_RE.match(p.name) and p.name not in listed:
                p.unlink()  # taken (or dropped) by a run after this checkpoint
        self._missing = {name for name in listed if not (self.directory / name).exists()}
        if self._missing:
            warnings.warn(
                f"{len(self._missing)} sample file(s) listed in the checkpoint are gone from {self.directory} "
                f"({', '.join(sorted(self._missing))}); fine if the resumed run drops them before reading them",
                stacklevel=2,
            )


def _to_safetensors(state: dict[str, Any], *, step: int, index: int) -> bytes:
    tensors: dict[str, torch.Tensor] = {}
    extra: dict[str, Any] = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            # contiguous copies: safetensors refuses shared or strided storage
            tensors[k] = v.detach().to("cpu", copy=True).contiguous()
        else:
            try:
                json.dumps(v)
            except TypeError:
                raise TypeError(
                    f"state_dict entry {k!r} is a {type(v).__name__}, which cannot be stored in a safetensors "
                    "file; keep samples in memory (directory=None) or make it JSON-serialisable"
                ) from None
            extra[k] = v
    meta = {"step": str(step), "index": str(index), "extra": json.dumps(extra), "keys": json.dumps(list(state))}
    return _st_save(tensors, metadata={_META_KEY: json.dumps(meta)})


def _from_safetensors(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    try:
        tensors = _st_load(data)
    except Exception as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    meta = _read_metadata(data)
    extra = json.loads(meta["extra"]) if meta else {}
    keys = json.loads(meta["keys"]) if meta else list(tensors)
    return {k: tensors[k] if k in tensors else extra[k] for k in keys}


def _read_metadata(data: bytes) -> dict[str, str] | None:
    # The safetensors header: 8-byte little-endian length, then JSON with "__metadata__".
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = header.get("__metadata__") or {}
    return json.loads(meta[_META_KEY]) if _META_KEY in meta else None


class PredictiveAverager:
    """Online mean over samples of per-item probabilities: p̄_n = (1/S) Σ_s p_n(θ_s), float64.

    Call `update` once per sample with that sample's probabilities on the whole evaluation set, in
    a fixed item order: [num_items] (e.g. each token's target probability) or [num_items, C] (class
    probabilities). Nothing per sample is stored. With ``log_space=True`` it averages
    log-probabilities instead (mean_s log p_n, the average of the samples' log-likelihoods, the
    usual but non-Bayesian comparison); then `mean` is the geometric mean exp(mean_s log p_n).

    Each update may carry a weight w_s > 0; the mean is then Σ_s w_s p_n(θ_s) / Σ_s w_s. Samples
    drawn with a decreasing step size ε_s can be weighted by it (``weight=ε_s``; Welling & Teh 2011): a sample
    stands for the stretch of the trajectory around it, and at small steps the chain moves little,
    so unweighted, its many near-identical late samples would outvote the earlier, spread-out ones.
    """

    def __init__(self, num_items: int, log_space: bool = False):
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        self.num_items = num_items
        self.log_space = log_space
        self.num_samples = 0
        self.total_weight = 0.0  # Σ_s w_s; equals num_samples for unweighted updates
        self._acc: torch.Tensor | None = None  # running (weighted) mean of probs, or of log probs

    def update(
        self, probs: torch.Tensor | None = None, *, log_probs: torch.Tensor | None = None, weight: float = 1.0
    ) -> None:
        """Add one sample's probabilities `probs` [num_items] or [num_items, C] (or `log_probs`,
        which avoids underflow of tiny probabilities in log_space mode) with weight `weight` (a finite
        number > 0, e.g. the step size the sample was drawn at). Any device and float dtype; the mean
        is kept in float64 on the device of the first update. In probability mode `log_probs` are
        exponentiated in float64, so log-probabilities below about -745 count as probability 0."""
        if (probs is None) == (log_probs is None):
            raise ValueError("pass exactly one of probs and log_probs")
        weight = float(weight)
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"weight must be a finite number > 0, got {weight}")
        x = (probs if probs is not None else log_probs).detach()
        if x.dim() not in (1, 2) or x.shape[0] != self.num_items:
            raise ValueError(f"expected [{self.num_items}] or [{self.num_items}, C], got shape {tuple(x.shape)}")
        if self._acc is not None and x.shape != self._acc.shape:
            raise ValueError(f"shape {tuple(x.shape)} differs from the first update's {tuple(self._acc.shape)}")
        x = x.to(torch.float64)
        if self.log_space:
            v = x if log_probs is not None else torch.log(x)
        else:
            v = x if probs is not None else torch.exp(x)
        if self._acc is None:
            self._acc = torch.zeros_like(v)
        else:
            v = v.to(self._acc.device)
        self.num_samples += 1
        self.total_weight += weight
        # West's weighted form of Welford's running mean: exact to rounding for any number of samples,
        # no growing sum. Evaluated left to right, so that with unit weights it is bitwise the plain
        # running mean (v - acc) / n, and unweighted runs keep their numbers.
        step = (v - self._acc) * weight / self.total_weight
        if self.log_space:
            # A zero probability (log p = -inf) in any sample makes the mean of log p -inf for good;
            # the update above would give -inf - (-inf) or -inf + inf, both NaN.
            impossible = (v == -math.inf) | (self._acc == -math.inf)
            self._acc = torch.where(impossible, -math.inf, self._acc + step)
        else:
            self._acc += step

    @property
    def mean(self) -> torch.Tensor:
        """p̄ (float64, shape of the updates); the geometric mean in log_space mode."""
        if self._acc is None:
            raise RuntimeError("no samples yet: call update() first")
        return torch.exp(self._acc) if self.log_space else self._acc.clone()

    def mean_log_prob(self, targets: torch.Tensor | None = None) -> torch.Tensor:
        """log p̄ per item (float64 [num_items]); for [N, C] updates, of class `targets` [N]."""
        if self._acc is None:
            raise RuntimeError("no samples yet: call update() first")
        lp = self._acc if self.log_space else torch.log(self._acc)
        if lp.dim() == 2:
            if targets is None:
                raise ValueError("the averager holds class probabilities [N, C]: pass targets [N]")
            if targets.shape != (self.num_items,):
                raise ValueError(f"targets must be [{self.num_items}] class indices, got shape {tuple(targets.shape)}")
            lp = lp.gather(1, targets.to(lp.device, torch.long).view(-1, 1)).squeeze(1)
        elif targets is not None:
            raise ValueError("the averager holds per-item target probabilities [N]: targets must be None")
        return lp

    def perplexity(self, targets: torch.Tensor | None = None, *, target_probs: torch.Tensor | None = None) -> float:
        """exp(-mean_n log p̄_n): the perplexity of the averaged predictive.

        For [N] updates (target probabilities) call it with no argument; for [N, C] updates pass the
        class `targets` [N]. `target_probs` [N] instead computes the perplexity of that explicit
        vector of per-item probabilities (e.g. the last sample's, for comparison).
        """
        if target_probs is not None:
            return float(torch.exp(-torch.log(target_probs.to(torch.float64)).mean()))
        return float(torch.exp(-self.mean_log_prob(targets).mean()))

    def reset(self) -> None:
        self.num_samples = 0
        self.total_weight = 0.0
        self._acc = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "num_items": self.num_items,
            "log_space": self.log_space,
            "num_samples": self.num_samples,
            "total_weight": self.total_weight,
            "acc": None if self._acc is None else self._acc.clone(),  # not the tensor update() changes in place
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_items, self.log_space = state["num_items"], state["log_space"]
        self.num_samples = state["num_samples"]
        self._acc = None if state["acc"] is None else state["acc"].clone()
        # States written before weights existed hold unweighted means: total weight = sample count.
        self.total_weight = float(state.get("total_weight", self.num_samples))

    @classmethod
    def pooled(cls, averagers: Sequence[PredictiveAverager]) -> PredictiveAverager:
        """One averager over all the samples of `averagers` (e.g. independent chains on the same
        evaluation set): their means weighted by their total sample weights (the sample counts, for
        unweighted updates). Averagers without samples are ignored.

        Raises:
            ValueError: no averagers, or they differ in num_items, log_space or update shape.
        """
        if not averagers:
            raise ValueError("pooled() needs at least one averager")
        first = averagers[0]
        for a in averagers[1:]:
            if (a.num_items, a.log_space) != (first.num_items, first.log_space):
                raise ValueError(
                    f"cannot pool averagers over {a.num_items} items (log_space={a.log_space}) with "
                    f"{first.num_items} items (log_space={first.log_space})"
                )
        out = cls(first.num_items, first.log_space)
        filled = [a for a in averagers if a.num_samples]
        if not filled:
            return out
        shapes = {tuple(a._acc.shape) for a in filled}
        if len(shapes) > 1:
            raise ValueError(f"cannot pool averagers of different update shapes {sorted(shapes)}")
        total = sum(a.total_weight for a in filled)
        device = filled[0]._acc.device
        out._acc = sum(a._acc.to(device) * (a.total_weight / total) for a in filled)
        out.num_samples = sum(a.num_samples for a in filled)
        out.total_weight = total
        return out


def split_rhat(chains: Sequence[Sequence[float]]) -> float:
    """Split-R̂ (Gelman et al., Bayesian Data Analysis, 3rd ed., §11.4) of a scalar across chains.

    Every chain is cut to the common even length 2n (dropping its earliest draws, the ones most
    affected by burn-in) and split into halves, giving m = 2 × chains sequences of n draws. With W the
    mean within-sequence variance and B/n the variance of the sequence means (both with n - 1 / m - 1
    denominators), R̂ = sqrt(((n - 1)/n · W + B/n) / W). Near 1 when the chains mix; above ~1.01–1.1
    they disagree, or still drift.

    Args:
        chains: one sequence of draws per chain (e.g. the validation log-likelihood of each sample).
    Returns:
        R̂ (float): inf when every sequence is constant but they differ (W = 0 < B: the chains are
        stuck apart); nan when all the draws are equal.
    Raises:
        ValueError: no chain, or fewer than 4 draws in the shortest chain.
    """
    if not chains:
        raise ValueError("split_rhat needs at least one chain")
    shortest = min(len(c) for c in chains)
    half = shortest // 2
    if half < 2:
        raise ValueError(f"split_rhat needs at least 4 draws per chain, the shortest has {shortest}")
    x = torch.tensor([list(c)[len(c) - 2 * half :] for c in chains], dtype=torch.float64)
    seqs = x.reshape(len(chains) * 2, half)  # each chain's first half, then its second half
    within = seqs.var(dim=1, correction=1).mean()
    between_over_n = seqs.mean(dim=1).var(correction=1)
    var_plus = (half - 1) / half * within + between_over_n
    if within == 0:
        return float("inf") if between_over_n > 0 else float("nan")
    return float(torch.sqrt(var_plus / within))


# -- uncertainty of a stack of per-sample class probabilities ------------------------------------


def _check_stack(probs: torch.Tensor) -> None:
    if probs.dim() != 3:
        raise ValueError(f"probs must be [S, N, C] (samples, items, classes), got shape {tuple(probs.shape)}")


def predictive_mean(probs: torch.Tensor) -> torch.Tensor:
    """p̄ = mean over samples of probs [S, N, C] -> [N, C] (dtype of probs)."""
    _check_stack(probs)
    return probs.mean(0)


def predictive_std(probs: torch.Tensor, correction: int = 0) -> torch.Tensor:
    """Standard deviation across samples of each class probability: probs [S, N, C] -> [N, C].

    `correction` 0 (default) divides by S (defined for S = 1); 1 gives the unbiased variance's root.
    """
    _check_stack(probs)
    return probs.std(0, correction=correction)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    # In float64 whatever the input: the mutual information is a small difference of two entropies,
    # which half precision's 3 significant digits leave mostly rounding error.
    p = p.to(torch.float64)
    return -torch.special.xlogy(p, p).sum(-1)  # 0 log 0 = 0


def predictive_entropy(mean: torch.Tensor) -> torch.Tensor:
    """H[p̄] = -Σ_c p̄_c log p̄_c in nats: mean [N, C] (any float dtype) -> float64 [N] (total
    predictive uncertainty)."""
    if mean.dim() != 2:
        raise ValueError(f"mean must be [N, C], got shape {tuple(mean.shape)}")
    return _entropy(mean)


def mutual_information(probs: torch.Tensor) -> torch.Tensor:
    """I(y; θ | x) = H[mean_s p_s] - mean_s H[p_s] in nats: probs [S, N, C] (any float dtype) ->
    float64 [N].

    The part of the predictive entropy due to disagreement between samples (epistemic); 0 when all
    samples agree. Non-negative by Jensen's inequality; clamped at 0 against rounding.
    """
    _check_stack(probs)
    probs = probs.to(torch.float64)
    return (_entropy(probs.mean(0)) - _entropy(probs).mean(0)).clamp_min(0)


def expected_calibration_error(mean: torch.Tensor, labels: torch.Tensor, num_bins: int = 15) -> float:
    """ECE = Σ_b (n_b / N) |accuracy_b - confidence_b| (Guo et al. 2017), a fraction in [0, 1].

    Confidence is max_c mean[n, c], the prediction its argmax (the first on ties); bin b holds the
    confidences in (b/M, (b+1)/M] for M = num_bins equal-width bins. mean [N, C], labels [N] int.
    """
    if mean.dim() != 2 or labels.shape != mean.shape[:1]:
        raise ValueError(f"need mean [N, C] and labels [N], got {tuple(mean.shape)} and {tuple(labels.shape)}")
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    conf, pred = mean.to(torch.float64).max(1)
    correct = (pred == labels.to(pred.device)).to(torch.float64)
    # Boundaries as torch.linspace gives them (as the reference implementations do); a left
    # search puts conf in (edge_b, edge_{b+1}] into bin b; conf = 0 joins bin 0.
    edges = torch.linspace(0, 1, num_bins + 1, dtype=torch.float64, device=conf.device)
    bins = (torch.searchsorted(edges, conf) - 1).clamp(0, num_bins - 1)
    n = torch.zeros(num_bins, dtype=torch.float64, device=conf.device)
    n.index_add_(0, bins, torch.ones_like(conf))
    gap = torch.zeros_like(n).index_add_(0, bins, correct - conf)  # Σ (acc - conf) per bin
    return float(gap.abs().sum() / conf.numel())


def exp_or_inf(x: float) -> float:
    """exp(x), or inf where it overflows a float (the perplexity of a diverged run)."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def perplexity(probs: torch.Tensor) -> float:
    """exp(-mean log p) of per-token probabilities [N] (a probability of 0 gives inf)."""
    return float(torch.exp(-torch.log(probs.double()).mean()))


def perplexity_by_num_samples(target_probs: torch.Tensor) -> torch.Tensor:
    """Perplexity of the average of the first s samples, s = 1..S: target_probs [S, N] -> float64 [S].

    Entry s-1 is exp(-mean_n log((1/s) Σ_{r<=s} target_probs[r, n])), the curve of perplexity
    against the number of samples averaged.
    """
    if target_probs.dim() != 2:
        raise ValueError(f"target_probs must be [S, N], got shape {tuple(target_probs.shape)}")
    p = target_probs.to(torch.float64)
    s = torch.arange(1, p.shape[0] + 1, dtype=torch.float64, device=p.device)
    running = p.cumsum(0) / s[:, None]
    return torch.exp(-torch.log(running).mean(1))
