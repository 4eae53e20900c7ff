"""sgmcmc_fused: Bayesian training of recurrent networks with fused stochastic-gradient MCMC.

    from sgmcmc_fused.optim import PSGLD
    opt = PSGLD(model.parameters(), lr=1e-3, num_data=len(train_set))

`sgmcmc_fused.kernels.registry.availability()` says which step backends work here and why not.
"""

from .kernels import _library
from .kernels.registry import availability

__version__ = "0.1.0"

if not _library.LOADED:
    import warnings

    warnings.warn(
        f"sgmcmc_fused: {_library.LOAD_ERROR}. Only the 'eager', 'foreach' and 'triton' step backends are available.",
        RuntimeWarning,
        stacklevel=2,
    )
elif _library.STALE_REASON:
    import warnings

    warnings.warn(f"sgmcmc_fused: {_library.STALE_REASON}", RuntimeWarning, stacklevel=2)

__all__ = ["availability", "__version__"]
