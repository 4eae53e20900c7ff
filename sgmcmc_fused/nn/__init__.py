"""Recurrent layers with DropConnect (docs/spec.md#dropconnect-lstm).

    from sgmcmc_fused.nn import DropConnectLSTM
    lstm = DropConnectLSTM(256, 512, num_layers=2, dropconnect=0.3)   # drop-in for nn.LSTM

`functional.dropconnect_lstm_layer` runs one layer direction with a chosen backend
(`functional.not_supported_reasons` says which work here).
"""

from . import functional
from .dropconnect_lstm import DropConnectLSTM
from .functional import DropConnect, dropconnect_lstm_layer

__all__ = ["DropConnect", "DropConnectLSTM", "dropconnect_lstm_layer", "functional"]
