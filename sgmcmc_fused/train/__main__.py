"""``python -m sgmcmc_fused.train COMMAND ...``; see `sgmcmc_fused.train`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
