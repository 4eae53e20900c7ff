"""Langevin correctness: on Bayesian linear regression with a Gaussian prior the
samplers' stationary mean and covariance match the analytic posterior.

Many independent chains are run side by side (one row of the parameter each),
so the final states are independent draws and their Monte Carlo error is known
exactly: SE(mean) = sd / sqrt(C), SE(var) = var * sqrt(2 / (C - 1)).
"""

import math

import pytest
import torch

from sgmcmc_fused.optim import PSGLD, SGLD

NUM_DATA = 64
DIM = 2
CHAINS = 4000
PRIOR_PRECISION = 2.0  # lambda: prior w ~ N(0, I / lambda)


def regression_problem():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(NUM_DATA, DIM, generator=g, dtype=torch.float64) @ torch.tensor(
        [[1.0, 0.4], [0.0, 0.7]], dtype=torch.float64
    )
    y = x @ torch.tensor([0.8, -1.2], dtype=torch.float64) + torch.randn(NUM_DATA, generator=g, dtype=torch.float64)
    return x, y


def analytic_posterior(x, y, temperature):
    """Mean and covariance of p(w | D)^(1/T) for unit noise variance."""
    precision = x.T @ x + PRIOR_PRECISION * torch.eye(DIM, dtype=torch.float64)
    cov = torch.linalg.inv(precision)
    return cov @ (x.T @ y), temperature * cov


def run_chains(opt_cls, lr, steps, temperature, **kwargs):
    x, y = regression_problem()
    xtx, xty = (x.T @ x).float(), (x.T @ y).float()
    w = torch.nn.Parameter(torch.zeros(CHAINS, DIM))
    # Mean loss per datum: 0.5 (y - x w)^2; prior in mean-loss units: wd = lambda / N.
    opt = opt_cls([w], lr=lr, num_data=NUM_DATA, weight_decay=PRIOR_PRECISION / NUM_DATA, temperature=temperature,
                  seed=2024, **kwargs)  # fmt: skip
    for _ in range(steps):
        w.grad = (w.detach() @ xtx - xty) / NUM_DATA  # exact gradient of the mean loss, per chain
        opt.step()
    return w.detach().double()


def assert_matches_posterior(samples, mean, cov, rel_bias=0.0):
    n = samples.shape[0]
    sd = cov.diagonal().sqrt()
    z_mean = (samples.mean(0) - mean) / (sd / math.sqrt(n))
    assert z_mean.abs().max() < 4.5, f"sample mean off by {z_mean.tolist()} standard errors"
    emp = torch.cov(samples.T)
    var_se = cov.diagonal() * math.sqrt(2 / (n - 1))
    z_var = (emp.diagonal() - cov.diagonal() * (1 + rel_bias)) / var_se
    assert z_var.abs().max() < 4.5, f"sample variances {emp.diagonal().tolist()} vs {cov.diagonal().tolist()}"
    corr_emp = emp[0, 1] / emp.diagonal().prod().sqrt()
    corr = cov[0, 1] / cov.diagonal().prod().sqrt()
    assert abs(corr_emp - corr) < 4.5 * (1 - corr**2) / math.sqrt(n), f"correlation {corr_emp} vs {corr}"


@pytest.mark.parametrize("temperature", [1.0, 0.25])
def test_sgld_samples_the_posterior(temperature):
    x, y = regression_problem()
    mean, cov = analytic_posterior(x, y, temperature)
    lr = 0.02
    samples = run_chains(SGLD, lr, steps=1500, temperature=temperature)
    # SGLD's stationary variance along a Hessian eigenvalue h (mean-loss units) is
    # that of the posterior times 1 / (1 - lr h / 2); the bias here is < 2 %.
    h_max = torch.linalg.eigvalsh((x.T @ x) / NUM_DATA).max().item() + PRIOR_PRECISION / NUM_DATA
    assert lr * h_max / 2 < 0.02
    assert_matches_posterior(samples, mean, cov, rel_bias=lr * h_max / 4)


@pytest.mark.parametrize("temperature", [1.0, 0.25])
def test_psgld_samples_the_posterior(temperature):
    x, y = regression_problem()
    mean, cov = analytic_posterior(x, y, temperature)
    # With exact gradients the RMS preconditioner settles near a constant, so
    # pSGLD (without the Gamma correction) samples the same posterior.
    samples = run_chains(PSGLD, 2e-3, steps=2500, temperature=temperature, alpha=0.999)
    assert_matches_posterior(samples, mean, cov, rel_bias=0.01)


def test_temperature_scales_the_covariance():
    hot = run_chains(SGLD, 0.02, steps=1500, temperature=1.0)
    cold = run_chains(SGLD, 0.02, steps=1500, temperature=0.25)
    ratio = torch.cov(cold.T).diagonal() / torch.cov(hot.T).diagonal()
    # The ratio of two independent variance estimates: SE ~ 0.25 * sqrt(4 / C).
    assert torch.allclose(ratio, torch.full_like(ratio, 0.25), atol=4.5 * 0.25 * math.sqrt(4 / CHAINS))
