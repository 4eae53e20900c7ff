"""DropConnectLSTM: a drop-in torch.nn.LSTM with DropConnect masks on its weights (docs/spec.md#dropconnect-lstm).

Symbols: T time steps, B batch, I input size, H hidden size, L num_layers, D num_directions
(2 if bidirectional else 1).

The module has exactly nn.LSTM's parameters (names, shapes, initialisation), so state dicts load
both ways with strict=True, and with dropconnect=0 (or in eval mode) it computes nn.LSTM to float
rounding, forward and backward. In training each forward call draws one mask per masked weight
matrix from the counter-based Philox stream of docs/spec.md#noise-stream: weight id
``(layer * D + direction) * 2 + (0 for weight_ih, 1 for weight_hh)``, call = the module's
training-call counter, key = the module's seed. The layers run through
`sgmcmc_fused.nn.functional.dropconnect_lstm_layer`, one call per layer and direction.
"""

from __future__ import annotations

import math
import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..kernels.lstm import reference as lstm_reference
from ..kernels.registry import LSTM_BACKENDS
from ..kernels.stream import draw_seed
from .functional import DropConnect, dropconnect_lstm_layer

#: Which weight matrices each `masked` value masks, as (mask_ih, mask_hh).
MASKED_MATRICES = {"hh": (False, True), "ih": (True, False), "both": (True, True)}
IMPLS = ("auto", *LSTM_BACKENDS)
#: The Philox step word is 32 bits; the call counter wraps around after 2^32 training calls.
_CALL_MODULUS = 2**32
#: How many recent training inputs keep their call for a re-run under activation checkpointing.
_RECENT_INPUTS = 256


def _in_backward() -> bool:
    """Whether this runs inside a backward pass: activation checkpointing re-running a forward (never
    while torch.compile traces: a compiled forward is not re-run by eager checkpointing)."""
    return not torch.compiler.is_compiling() and torch._C._current_graph_task_id() != -1


def _input_key(x: torch.Tensor) -> tuple | None:
    """What identifies a forward's input when torch.utils.checkpoint runs the forward again: the same
    memory, at the same version (a checkpoint keeps its inputs alive and re-runs with them, or with
    detached views of them). None for a tensor without storage or version counter (a torch.func
    wrapper, a fake tensor while tracing, an inference tensor)."""
    try:
        pointer, version = x.untyped_storage().data_ptr(), x._version
    except (NotImplementedError, RuntimeError):
        return None
    return pointer, x.storage_offset(), tuple(x.shape), tuple(x.stride()), x.dtype, x.device, version


def _check_dropconnect_config(dropconnect: float, mask: str, masked: str) -> None:
    if isinstance(dropconnect, bool) or not isinstance(dropconnect, (int, float)) or not 0.0 <= dropconnect < 1.0:
        raise ValueError(f"dropconnect must be a number in [0, 1), got {dropconnect!r}")
    if mask not in lstm_reference.MASK_KINDS:
        raise ValueError(f"unknown mask {mask!r}; choose 'bernoulli' or 'gaussian'")
    if masked not in MASKED_MATRICES:
        raise ValueError(f"unknown masked {masked!r}; choose 'hh' (recurrent weights), 'ih' (input weights) or 'both'")


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2^63), got {seed!r}")


class DropConnectLSTM(nn.Module):
    """Multi-layer LSTM with DropConnect on its weight matrices; nn.LSTM's interface and parameters.

    Args:
        input_size: I, features of the input.
        hidden_size: H, features of the hidden and cell states.
        num_layers: L, stacked layers (default 1).
        bias: whether the layers have bias_ih / bias_hh (default True).
        batch_first: input and output as [B, T, *] instead of [T, B, *] (h_n, c_n are never batch-first).
        dropout: probability of F.dropout on each layer's output except the last, training only
            (as nn.LSTM).
        bidirectional: add a reverse direction per layer; its outputs are concatenated on the feature dim.
        dropconnect: p in [0, 1): drop probability of the Bernoulli mask, or noise level of the Gaussian
            mask (variance p / (1 - p)). 0 (default) disables the masks.
        mask: "bernoulli" (M = 1[u >= p] / (1 - p)) or "gaussian" (M = 1 + sqrt(p / (1 - p)) * n).
        masked: which matrices are masked: "hh" (recurrent weights, default), "ih" (input weights) or "both".
        impl: layer backend, "auto" (compiled kernels where available, else eager), "cpu", "cuda",
            "triton" or "eager"; see sgmcmc_fused.nn.functional.
        seed: 63-bit key of the mask stream; None (default) draws it from torch's default generator
            (after the parameters are initialised), so torch.manual_seed fixes it.
        device, dtype: of the parameters, as for nn.LSTM.

    Attributes:
        weight_ih_l{k}[_reverse]: [4H, I] for k = 0, [4H, D * H] for k > 0; gates (i, f, g, o) as nn.LSTM.
        weight_hh_l{k}[_reverse]: [4H, H].
        bias_ih_l{k}[_reverse], bias_hh_l{k}[_reverse]: [4H] (if bias).
            All initialised U(-1/sqrt(H), 1/sqrt(H)) in nn.LSTM's order: with the same torch.manual_seed
            a DropConnectLSTM gets the same parameters as nn.LSTM of the same configuration.
        seed (int): the mask stream's key. A plain attribute, not in the state dict (whose keys equal
            nn.LSTM's); save it yourself to resume a run with the same masks.
        calls (int): training forward calls so far. The next training forward uses ``call = calls``
            (mod 2^32) for all its masks and then increments it; eval forwards leave it alone. A plain
            attribute like `seed`; mask of weight id w at call c is
            ``lstm_reference.dropconnect_mask(W.shape, seed, w, c, dropconnect, kind)``.

    Activation checkpointing (torch.utils.checkpoint, reentrant or not) runs a forward again inside
    backward; that run takes the call of the forward it repeats (found by its input: the same live
    memory at the same version) and leaves `calls` alone, so the gradients are those of the masks the
    forward used. The LSTM's input must be an argument of the checkpointed function (an input made
    inside it is made again, elsewhere): otherwise the re-run raises rather than guess the masks.

    Mask weight ids: ``(layer * D + direction) * 2 + (0 for weight_ih, 1 for weight_hh)``, direction 1
    the reverse one. Evaluation (module.eval()) uses the unmasked weights and is deterministic (the
    masks have mean 1).

    Shapes of forward (as nn.LSTM, proj_size unsupported):
        input: [T, B, I] ([B, T, I] if batch_first), [T, I] unbatched, or a PackedSequence.
        hx: optional (h_0, c_0), each [L * D, B, H] ([L * D, H] for unbatched input), in the input's
            batch order (the original order for a PackedSequence); zeros if None.
        returns: output [T, B, D * H] ([B, T, D * H] if batch_first, [T, D * H] unbatched, or a
            PackedSequence with the input's batch_sizes and indices), and (h_n, c_n), each [L * D, B, H]
            (index layer * D + direction), h_n being each sequence's state after its last token.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        dropconnect: float = 0.0,
        mask: str = "bernoulli",
        masked: str = "hh",
        impl: str = "auto",
        seed: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        proj_size: int = 0,
    ) -> None:
        super().__init__()
        if proj_size != 0:  # nn.LSTM's default, taken so that code passing it through works
            raise ValueError(f"DropConnectLSTM does not support proj_size; got proj_size={proj_size!r} (0 is none)")
        if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 0:
            raise ValueError(f"input_size must be an int >= 0, got {input_size!r}")
        if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size <= 0:
            raise ValueError(f"hidden_size must be an int > 0, got {hidden_size!r}")
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers <= 0:
            raise ValueError(f"num_layers must be an int > 0, got {num_layers!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout acts between layers (after every layer but the last), so dropout="
                f"{dropout} with num_layers=1 has no effect",
                UserWarning,
                stacklevel=2,
            )
        _check_dropconnect_config(dropconnect, mask, masked)
        if impl not in IMPLS:
            raise ValueError(f"unknown impl {impl!r}; choose one of {', '.join(map(repr, IMPLS))}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.dropconnect = float(dropconnect)
        self.mask = mask
        self.masked = masked
        self.impl = impl
        #: As nn.LSTM's attributes, for code that reads them.
        self.proj_size = 0
        self.mode = "LSTM"

        factory = {"device": device, "dtype": dtype}
        directions = 2 if bidirectional else 1
        gate_size = 4 * hidden_size
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * directions
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                # Registration order = nn.LSTM's, so reset_parameters draws the same numbers.
                shapes = {"weight_ih": (gate_size, layer_input), "weight_hh": (gate_size, hidden_size)}
                if bias:
                    shapes.update(bias_ih=(gate_size,), bias_hh=(gate_size,))
                for name, shape in shapes.items():
                    self.register_parameter(name + suffix, nn.Parameter(torch.empty(shape, **factory)))
        self.reset_parameters()

        if seed is None:
            seed = draw_seed()
        _check_seed(seed)
        #: Key of the DropConnect mask stream (not in the state dict; see the class docstring).
        self.seed: int = seed
        #: Training forward calls so far; the next one uses it as the mask counter (not in the state dict).
        self.calls: int = 0
        #: The calls of recent training forwards by `_input_key`, with a weak reference to the input's
        #: storage (a dead one can never be re-run), for a re-run under activation checkpointing.
        self._recent_calls: dict[tuple, list[tuple[int, weakref.ref]]] = {}

    def __getstate__(self) -> dict:
        """For pickle and copy.deepcopy: without the recent calls (weak references to this process's
        tensors, which neither pickle nor mean anything to a copy)."""
        state = self.__dict__.copy()
        state.pop("_recent_calls", None)
        return state

    # ---- construction helpers ------------------------------------------------------------------

    def reset_parameters(self) -> None:
        """U(-1/sqrt(H), 1/sqrt(H)) for every parameter, in registration order (as nn.LSTM)."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def flatten_parameters(self) -> None:
        """No-op, for code written for nn.LSTM (the weights are never flattened into one buffer)."""

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """As nn.LSTM.all_weights: per layer and direction, [weight_ih, weight_hh(, bias_ih, bias_hh)]."""
        return [
            [w for w in self._layer_weights(layer, direction) if w is not None]
            for layer in range(self.num_layers)
            for direction in range(self.num_directions)
        ]

    def _layer_weights(self, layer: int, direction: int):
        suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
        w_ih = getattr(self, "weight_ih" + suffix)
        w_hh = getattr(self, "weight_hh" + suffix)
        if self.bias:
            return w_ih, w_hh, getattr(self, "bias_ih" + suffix), getattr(self, "bias_hh" + suffix)
        return w_ih, w_hh, None, None

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM, **kwargs) -> DropConnectLSTM:
        """A DropConnectLSTM with `lstm`'s configuration and a copy of its parameters.

        kwargs: dropconnect, mask, masked, impl, seed, and the parameter-free options batch_first
        and dropout (overriding lstm's). The parameters keep lstm's device and dtype.
        """
        if not isinstance(lstm, nn.LSTM):
            raise TypeError(f"from_lstm expects a torch.nn.LSTM, got {type(lstm).__name__}")
        if lstm.proj_size:
            raise ValueError(f"DropConnectLSTM does not support proj_size; the LSTM has proj_size={lstm.proj_size}")
        structural = {
            "input_size",
            "hidden_size",
            "num_layers",
            "bias",
            "bidirectional",
            "device",
            "dtype",
            "proj_size",
        }
        if structural & kwargs.keys():
            raise TypeError(
                f"from_lstm takes {', '.join(sorted(structural & kwargs.keys()))} from the LSTM; "
                "only dropconnect, mask, masked, impl, seed, batch_first and dropout can be given"
            )
        weight = lstm.weight_ih_l0
        config = {"batch_first": lstm.batch_first, "dropout": lstm.dropout, **kwargs}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # nn.LSTM already warned about dropout
            module = cls(
                lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bias,
                bidirectional=lstm.bidirectional, device=weight.device, dtype=weight.dtype, **config,
            )  # fmt: skip
        module.load_state_dict(lstm.state_dict(), strict=True)
        module.train(lstm.training)
        return module

    def to_lstm(self) -> nn.LSTM:
        """An nn.LSTM with this module's configuration and a copy of its (unmasked) parameters."""
        weight = self.weight_ih_l0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            lstm = nn.LSTM(
                self.input_size, self.hidden_size, self.num_layers, bias=self.bias, batch_first=self.batch_first,
                dropout=self.dropout, bidirectional=self.bidirectional, device=weight.device, dtype=weight.dtype,
            )  # fmt: skip
        lstm.load_state_dict(self.state_dict(), strict=True)
        lstm.train(self.training)
        return lstm

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.dropconnect:
            s += f", dropconnect={self.dropconnect}, mask={self.mask!r}, masked={self.masked!r}"
        if self.impl != "auto":
            s += f", impl={self.impl!r}"
        return s

    # ---- forward --------------------------------------------------------------------------------

    def _check_input(self, input: torch.Tensor) -> None:
        weight = self.weight_ih_l0
        if not input.is_floating_point():
            raise TypeError(f"DropConnectLSTM: expected a floating-point input, got {input.dtype}")
        if input.size(-1) != self.input_size:
            raise ValueError(f"DropConnectLSTM: expected input size {self.input_size}, got {input.size(-1)}")
        # Under autocast the layer casts the input to the autocast dtype, as nn.LSTM's does: a bf16
        # input from an autocast Linear meets fp32 parameters there.
        if input.dtype != weight.dtype and not torch.is_autocast_enabled(input.device.type):
            raise TypeError(
                f"DropConnectLSTM: input dtype {input.dtype} does not match the parameters' dtype {weight.dtype}"
            )
        if input.device != weight.device:
            raise ValueError(f"DropConnectLSTM: input is on {input.device} but the parameters are on {weight.device}")

    def _check_hx(self, hx, batch: int, batched: bool, input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError("DropConnectLSTM: hx must be a tuple (h_0, c_0)")
        h0, c0 = hx
        want_dim = 3 if batched else 2
        if h0.dim() != want_dim or c0.dim() != want_dim:
            kind = "batched 3-D" if batched else "unbatched 2-D"
            raise ValueError(
                f"DropConnectLSTM: for {kind} input, h_0 and c_0 must be {want_dim}-D, got ({h0.dim()}-D, {c0.dim()}-D)"
            )
        if not batched:
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        expected = (self.num_layers * self.num_directions, batch, self.hidden_size)
        for name, t in (("h_0", h0), ("c_0", c0)):
            if tuple(t.shape) != expected:
                shown = expected if batched else (expected[0], expected[2])
                got = tuple(t.shape) if batched else (t.shape[0], t.shape[2])
                raise ValueError(f"DropConnectLSTM: expected {name} of shape {shown}, got {got}")
            # Under autocast the layer casts input and state to the autocast dtype (as nn.LSTM's
            # does), so a state carried from an autocast call may differ from an fp32 input.
            autocast = torch.is_autocast_enabled(input.device.type)
            if t.device != input.device or (t.dtype != input.dtype and not autocast):
                raise ValueError(
                    f"DropConnectLSTM: {name} ({t.dtype}, {t.device}) must match the input ({input.dtype}, "
                    f"{input.device})"
                )
        return h0, c0

    def _masks(self, index: int, call: int | None) -> DropConnect | None:
        """The DropConnect of layer-direction `index` = layer * D + direction, or None if unmasked."""
        if call is None or self.dropconnect == 0.0:
            return None
        mask_ih, mask_hh = MASKED_MATRICES[self.masked]
        return DropConnect(
            p=self.dropconnect,
            kind=lstm_reference.MASK_KINDS[self.mask],
            seed=self.seed,
            call=call,
            ih_weight_id=2 * index,
            hh_weight_id=2 * index + 1,
            mask_ih=mask_ih,
            mask_hh=mask_hh,
        )

    def _run(
        self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, lengths: torch.Tensor | None, call: int | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All layers on time-major x [T, B, I], h0/c0 [L * D, B, H]; returns output [T, B, D * H], h_n, c_n."""
        directions = self.num_directions
        h_n, c_n = [], []
        x = x.contiguous()
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                out, h, c = dropconnect_lstm_layer(
                    x, h0[index], c0[index], *self._layer_weights(layer, direction), lengths=lengths,
                    reverse=direction == 1, dropconnect=self._masks(index, call), impl=self.impl,
                )  # fmt: skip
                outputs.append(out)
                h_n.append(h)
                c_n.append(c)
            x = outputs[0] if directions == 1 else torch.cat(outputs, dim=2)
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        return x, torch.stack(h_n), torch.stack(c_n)

    def forward(
        self, input: torch.Tensor | PackedSequence, hx: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor | PackedSequence, tuple[torch.Tensor, torch.Tensor]]:
        """Run the LSTM; see the class docstring for the shapes.

        In training mode (and dropconnect > 0) the masks of call ``self.calls`` are used and
        ``self.calls`` is incremented (once per training forward, also with dropconnect = 0).
        """
        _check_dropconnect_config(self.dropconnect, self.mask, self.masked)
        _check_seed(self.seed)
        directions = self.num_directions
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            if data.dim() != 2:
                raise ValueError(
                    f"DropConnectLSTM: expected PackedSequence data of shape [N, I], got {tuple(data.shape)}"
                )
            self._check_input(data)
            batch = int(batch_sizes[0])
            if hx is None:
                zeros = data.new_zeros(self.num_layers * directions, batch, self.hidden_size)
                h0, c0 = zeros, zeros
            else:
                h0, c0 = self._check_hx(hx, batch, True, data)
                if sorted_indices is not None:  # hx comes in the original batch order
                    h0, c0 = h0.index_select(1, sorted_indices), c0.index_select(1, sorted_indices)
            # Unpack in the sorted order the data is stored in (lengths descending).
            padded, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes))
            call = self._next_call(data)
            out, h_n, c_n = self._run(padded, h0, c0, lengths.to(padded.device), call)
            packed = pack_padded_sequence(out, lengths, enforce_sorted=True)
            output = PackedSequence(packed.data, batch_sizes, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                h_n, c_n = h_n.index_select(1, unsorted_indices), c_n.index_select(1, unsorted_indices)
            return output, (h_n, c_n)

        if not isinstance(input, torch.Tensor):
            raise TypeError(f"DropConnectLSTM: expected a Tensor or PackedSequence input, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(f"DropConnectLSTM: expected a 2-D (unbatched) or 3-D input, got {input.dim()}-D")
        self._check_input(input)
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(1)
        if batched and self.batch_first:
            x = x.transpose(0, 1)
        batch = x.shape[1]
        if hx is None:
            zeros = x.new_zeros(self.num_layers * directions, batch, self.hidden_size)
            h0, c0 = zeros, zeros
        else:
            h0, c0 = self._check_hx(hx, batch, batched, x)
        call = self._next_call(input)
        out, h_n, c_n = self._run(x, h0, c0, None, call)
        if not batched:
            return out.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            out = out.transpose(0, 1)
        return out, (h_n, c_n)

    def _next_call(self, input: torch.Tensor) -> int | None:
        """The mask counter of this forward (None in eval mode); advances `calls` in training mode.

        A forward inside backward is checkpointing's re-run of an earlier one: it takes that one's
        call, found by its input (the same live storage, offset, shape, strides and version). An
        input no recent forward saw (one computed inside the checkpointed function, so re-created),
        or one that went through the module twice in training, is refused rather than guessed.
        """
        if not self.training:
            return None
        recent = self.__dict__.setdefault("_recent_calls", {})  # modules pickled before it existed
        key = None if torch.compiler.is_compiling() else _input_key(input)  # traced tensors have no memory
        if _in_backward():
            storage = input.untyped_storage() if key is not None else None
            calls = [call for call, ref in recent.get(key, ()) if ref() is storage] if key is not None else []
            if len(calls) == 1:
                return calls[0]
            raise RuntimeError(
                "DropConnectLSTM: a training forward ran inside a backward pass (activation checkpointing) on an "
                + ("input that went through the module more than once in training mode"
                   if calls else "input no recent forward saw")
                + ", so its DropConnect masks are ambiguous. Checkpointing must re-run the forward on an input "
                "that is an argument of the checkpointed function (not computed inside it), once per forward"
            )  # fmt: skip
        call = self.calls % _CALL_MODULUS
        self.calls += 1
        if key is not None:
            alive = [(c, ref) for c, ref in recent.pop(key, ()) if ref() is not None]
            recent[key] = [*alive[-7:], (call, weakref.ref(input.untyped_storage()))]  # newest last
            while len(recent) > _RECENT_INPUTS:
                del recent[next(iter(recent))]
        return call
