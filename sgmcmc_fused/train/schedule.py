"""The cyclical step-size schedule of Zhang et al., "Cyclical Stochastic Gradient MCMC for Bayesian
Deep Learning" (ICLR 2020): ``--schedule cyclical --cycles M --explore-fraction β``.

The K training steps are cut into M cycles: cycle c (0-based) holds the steps s_c < k <= s_{c+1}, with
s_c = floor(c · K / M), so the cycles differ by at most one step and the run ends with a whole cycle
(Zhang et al. write L = ceil(K / M) steps a cycle, which leaves the last one cut short when M does not
divide K; otherwise the two agree). Step k (1-based) of a cycle of L steps starting after step s is at
position r(k) = (k − 1 − s) / L, in [0, 1), and its step size is

    lr(k) = lr · (cos(π · r(k)) + 1) / 2,

a cosine from the initial lr at the start of each cycle towards 0 at its end. During the first β of a
cycle (r(k) < β, exploration) the samplers run without noise; after it (sampling) with noise, and a
sample is taken every `thin` steps counted back from the cycle's last step, so a cycle's last,
smallest-step weights are among the samples. A cycle of L steps has a sampling stage only if its last
step, at r = (L − 1) / L, is at or past β: with β = 0.8, cycles of 5 steps or more. The optimisers
with the same schedule and ``--average-optimizers`` take snapshots at the same steps: the snapshot
ensembles of Huang et al. (2017), the noise-free control of the sampler.

The default schedule, "decay", is each task's own: its learning rate by epoch (constant, or the
language model's division after --decay-after epochs), the noise on after --burn-in steps, and a sample
every --thin steps after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("decay", "cyclical")


@dataclass(frozen=True)
class CyclicalSchedule:
    """The cyclical schedule over `total_steps` steps (see the module docstring).

    Args:
        total_steps: K, the run's parameter updates (epochs × steps per epoch), >= 1.
        cycles: M, 1 <= M <= K.
        explore_fraction: β in [0, 1): the noise-free share of each cycle.
        thin: steps between samples within a sampling stage (>= 1).
    """

    total_steps: int
    cycles: int
    explore_fraction: float
    thin: int

    def __post_init__(self) -> None:
        if self.total_steps < 1 or not 1 <= self.cycles <= self.total_steps:
            raise ValueError(f"need 1 <= cycles <= total steps, got {self.cycles} cycles of {self.total_steps} steps")
        if not 0 <= self.explore_fraction < 1:
            raise ValueError(f"explore_fraction must be in [0, 1), got {self.explore_fraction}")
        if self.thin < 1:
            raise ValueError(f"thin must be >= 1, got {self.thin}")

    def _cycle(self, step: int) -> tuple[int, int]:
        """(s, L): `step` (1-based) is in the cycle of the L steps after step s.

        Raises:
            ValueError: `step` outside 1..total_steps (the formula would invent a cycle for it).
        """
        if not 1 <= step <= self.total_steps:
            raise ValueError(f"step {step} is outside the schedule's steps 1..{self.total_steps}")
        # floor(c K / M) < step <= floor((c + 1) K / M)  <=>  c = ceil(step M / K) - 1.
        c = (step * self.cycles - 1) // self.total_steps
        start, end = c * self.total_steps // self.cycles, (c + 1) * self.total_steps // self.cycles
        return start, end - start

    def position(self, step: int) -> float:
        """r(step) in [0, 1): how far into its cycle `step` (1-based) is."""
        start, length = self._cycle(step)
        return (step - 1 - start) / length

    def lr_factor(self, step: int) -> float:
        """lr(step) / lr: (cos(π r) + 1) / 2, in (0, 1]."""
        return (math.cos(math.pi * self.position(step)) + 1) / 2

    def explores(self, step: int) -> bool:
        """Whether `step` is in its cycle's exploration stage (no noise, no sample)."""
        return self.position(step) < self.explore_fraction

    def cycle_end(self, step: int) -> int:
        """The last step of `step`'s cycle."""
        start, length = self._cycle(step)
        return start + length

    def every_cycle_samples(self) -> bool:
        """Whether every cycle has a sampling stage (its shortest, floor(K / M) steps, does)."""
        shortest = self.total_steps // self.cycles
        return (shortest - 1) / shortest >= self.explore_fraction

    def collects(self, step: int) -> bool:
        """Whether a sample is taken after `step`: in a sampling stage, every `thin` steps back from
        the cycle's end."""
        return not self.explores(step) and (self.cycle_end(step) - step) % self.thin == 0
