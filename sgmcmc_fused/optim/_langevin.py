"""Shared machinery of the Langevin optimizers (PSGLD, SGLD): hyperparameter
checks, per-parameter state, grouping tensors into fused calls, backend
selection, and a state_dict that keeps fp32 state for low-precision params.
"""

from __future__ import annotations

import math
import numbers
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from torch.optim import Optimizer

from ..kernels.langevin.contract import StepHyper, StepLists, check_no_overlap
from ..kernels.langevin.reference import opmath_dtype
from ..kernels.registry import BACKENDS, select_backend
from ..kernels.stream import MAX_STREAM_ID, draw_seed

_SET_OF_PARAMETERS = (
    "optimizer parameters must be in an ordered collection (a list, or a generator such as "
    "model.parameters()), not a set: the order gives each parameter its noise stream and its place "
    "in the state_dict, and a set's order changes between runs"
)


def _check_hyper(name: str, value: Any, *, positive: bool = False, below_one: bool = False) -> None:
    if isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a Python number, got a tensor")
    # numbers.Real takes NumPy's scalars too (a schedule computed with NumPy).
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value!r}")
    if below_one and value >= 1:
        raise ValueError(f"{name} must be < 1, got {value!r}")


def prior_weight_decay(prior_std: float, num_data: int) -> float:
    """The weight_decay of a Gaussian prior N(0, prior_std²) on each element, in the step's
    mean-loss units (docs/spec.md#langevin-step): the prior precision 1/prior_std² divided by N.
    It is the same for every temperature (the whole posterior, prior included, is tempered)."""
    return 1.0 / (num_data * prior_std**2)


def _prior_decay(group: dict[str, Any], given_decay: Any) -> float | None:
    """The weight_decay `prior_weight_decay(σ, N)` of a group with ``prior_std`` σ (not None), else
    None (the group keeps its own weight_decay).

    Raises:
        ValueError: σ is not a finite number > 0, or the group also has a weight_decay (two priors).
    """
    std = group.get("prior_std")
    if std is None:
        return None
    _check_hyper("prior_std", std, positive=True)
    if given_decay:
        raise ValueError(
            f"a parameter group has prior_std={std!r} and weight_decay={given_decay!r}: both are a Gaussian prior; "
            "give one"
        )
    return prior_weight_decay(float(std), group["num_data"])


#: Hyperparameters stored as Python numbers: a NumPy scalar would make the state_dict unloadable
#: with torch.load(weights_only=True).
_FLOAT_KEYS = ("lr", "weight_decay", "temperature", "alpha", "eps", "prior_std")
_INT_KEYS = ("num_data", "seed")


def _as_python_numbers(group: dict[str, Any]) -> dict[str, Any]:
    """`group` with its (checked) hyperparameters as Python float/int."""
    out = dict(group)
    for key in _FLOAT_KEYS:  # numpy.float64 is a float subclass: compare types exactly
        if isinstance(out.get(key), numbers.Real) and type(out[key]) not in (float, bool):
            out[key] = float(out[key])
    for key in _INT_KEYS:
        if isinstance(out.get(key), numbers.Integral) and type(out[key]) not in (int, bool):
            out[key] = int(out[key])
    return out


class NonFiniteGradientError(FloatingPointError):
    """A gradient holds NaN or inf (nan_policy "raise"); no parameter was updated.

    Attributes:
        parameter: the first such parameter: its name (or stream id) and shape.
    """

    def __init__(self, message: str, parameter: str):
        super().__init__(message)
        self.parameter = parameter


class LangevinOptimizer(Optimizer):
    """Base class: subclasses set PRECONDITIONED and the step-function name.

    Per-parameter state:
        ``square_avg`` (pSGLD only): V, same shape as the parameter, fp32
            (fp64 for fp64 parameters).
        ``step``: int, number of noisy steps taken; it is the Philox counter t.
        ``stream_id``: int, the parameter's index in the optimizer (its noise stream).
        ``element_offset``: int, where this tensor starts in the whole parameter
            (non-zero only for shards; see `set_element_offset`).
    """

    PRECONDITIONED: bool = False

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any], nan_policy: str = "raise") -> None:
        if defaults["num_data"] is None:
            raise TypeError("num_data is required: the number of training data (tokens or sentences)")
        if defaults["seed"] is None:
            defaults["seed"] = draw_seed()
        self._check_hyperparameters(defaults)
        defaults = _as_python_numbers(defaults)
        if isinstance(params, (set, frozenset)):
            raise TypeError(_SET_OF_PARAMETERS)
        if nan_policy not in ("raise", "skip", "propagate"):
            raise ValueError(f"nan_policy must be 'raise', 'skip' or 'propagate', got {nan_policy!r}")
        #: What a NaN/inf gradient does: "raise", "skip" the whole step, or "propagate" (no check).
        self.nan_policy = nan_policy
        #: Steps skipped because of a NaN/inf gradient (nan_policy="skip").
        self.skipped_steps = 0
        self._next_stream_id = 0
        self._stream_ids: dict[torch.Tensor, int] = {}
        #: Per group, (prior_std, num_data, weight_decay) as of its last step (`_follow_prior`).
        self._applied_priors: list[tuple[Any, Any, Any]] = []
        super().__init__(params, defaults)

    def _check_hyperparameters(self, group: dict[str, Any], where: str = "") -> None:
        """Raises TypeError/ValueError, prefixed with `where`, for a hyperparameter of `group` (the
        defaults or a parameter group) that the step would refuse or misread."""
        try:
            _check_hyper("lr", group["lr"])
            _check_hyper("weight_decay", group["weight_decay"])
            _check_hyper("temperature", group["temperature"])
            num_data = group["num_data"]
            if isinstance(num_data, bool) or not isinstance(num_data, numbers.Integral) or not 1 <= num_data < 2**63:
                raise ValueError(f"num_data must be an int in [1, 2^63) (the training-set size), got {num_data!r}")
            if self.PRECONDITIONED:
                _check_hyper("alpha", group["alpha"], below_one=True)
                _check_hyper("eps", group["eps"], positive=True)
            seed = group["seed"]
            if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**63:
                raise ValueError(f"seed must be an int in [0, 2^63), got {seed!r}")
            if group["impl"] != "auto" and group["impl"] not in BACKENDS:
                raise ValueError(f"unknown impl {group['impl']!r}; choose 'auto' or one of {sorted(BACKENDS)}")
        except (TypeError, ValueError) as e:
            if not where:
                raise
            raise type(e)(f"{where}{e}") from None

    # -- parameters and their noise streams ------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As torch.optim.Optimizer.add_param_group; new parameters get the next stream ids.

        Raises:
            TypeError: the parameters are a set (its order, and so the noise streams, change
                between runs), or a hyperparameter of the wrong type.
            ValueError: a parameter listed twice in the group (it would be stepped twice), a
                sparse parameter, or a hyperparameter out of range. A refused group leaves the
                optimizer as it was.
        """
        params = param_group["params"]
        if isinstance(params, (set, frozenset)):
            raise TypeError(_SET_OF_PARAMETERS)
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        param_group = {**param_group, "params": params}
        where = f"parameter group {len(self.param_groups)}: "
        seen: dict[int, int] = {}
        for i, entry in enumerate(params):
            tensor = entry[1] if isinstance(entry, tuple) else entry  # (name, tensor) from named_parameters()
            if id(tensor) in seen:
                name = f" {entry[0]!r}" if isinstance(entry, tuple) else ""
                raise ValueError(
                    f"parameter{name} is listed twice in a parameter group (entries {seen[id(tensor)]} and {i}): "
                    "it would be stepped twice, with the noise of two streams"
                )
            seen[id(tensor)] = i
            if isinstance(tensor, torch.Tensor) and tensor.is_sparse:
                raise ValueError(f"{where}sparse parameters are not supported")
        if self._next_stream_id + len(params) > MAX_STREAM_ID + 1:
            raise ValueError(f"more than {MAX_STREAM_ID + 1} parameters")
        # Everything is checked before torch registers the group, so a refused group leaves the
        # optimizer as it was (torch's own checks, too, raise before registering).
        # A group's own prior overrides the defaults' (as its own keys override them in torch): its
        # prior_std replaces a default weight_decay, its weight_decay a default prior_std.
        own_std, own_decay = param_group.get("prior_std") is not None, "weight_decay" in param_group
        if own_decay and not own_std and self.defaults.get("prior_std") is not None:
            param_group["prior_std"] = None
        merged = {**self.defaults, **param_group}
        self._check_hyperparameters(merged, where)
        decay = _prior_decay(merged, merged["weight_decay"] if own_decay or not own_std else 0.0)
        super().add_param_group(_as_python_numbers(param_group))
        if decay is not None:
            self.param_groups[-1]["weight_decay"] = decay
        self._applied_priors.append(self._applied_prior(self.param_groups[-1]))
        for p in self.param_groups[-1]["params"]:
            self._stream_ids[p] = self._next_stream_id
            self._next_stream_id += 1

    @staticmethod
    def _applied_prior(group: dict[str, Any]) -> tuple[Any, Any, Any]:
        """(prior_std, num_data, weight_decay) of `group` as it stands: the record `_follow_prior` compares
        the group with at the next step."""
        return group.get("prior_std"), group["num_data"], group["weight_decay"]

    def _follow_prior(self, index: int, group: dict[str, Any]) -> None:
        """A group with ``prior_std`` σ steps with weight_decay 1/(N σ²): when σ or N changed since the last
        step (by the user or a scheduler), its weight_decay is recomputed, so the change takes effect now,
        like a change of lr. While neither changes, the weight_decay stays as it is (a loaded state keeps
        the one it was saved with). A prior_std set to None takes the prior's weight_decay away with it.

        Raises:
            ValueError: σ is not a finite number > 0, or two priors: a weight_decay set by hand beside a
                prior_std (other than 1/(N σ²)), or a prior_std set beside the group's own non-zero
                weight_decay, as add_param_group refuses. No parameter is updated.
        """
        # A group put into param_groups by hand, not with add_param_group, has no record: its own values.
        record = self._applied_priors[index] if index < len(self._applied_priors) else self._applied_prior(group)
        std = group.get("prior_std")
        if std is None and record[0] is not None and group["weight_decay"] == record[2]:
            # The prior was removed, and its weight decay is the one the group steps with: it goes too,
            # back to the group's own, which was 0 (a prior beside another weight_decay is refused).
            group["weight_decay"] = 0.0
        if std is not None:
            where = f"parameter group {index}: "
            try:
                _check_hyper("prior_std", std, positive=True)
            except (TypeError, ValueError) as e:
                raise type(e)(f"{where}{e}") from None
            recorded_std, recorded_num_data, recorded_decay = record
            decay = prior_weight_decay(float(std), group["num_data"])
            weight_decay = group["weight_decay"]
            if recorded_std is None:  # a prior set since the last step: the group's own decay must be 0
                own_decay = weight_decay != 0
            else:  # a weight_decay set by hand, unless to the prior's own value
                own_decay = weight_decay != recorded_decay and weight_decay != decay
            if own_decay:
                raise ValueError(
                    f"{where}prior_std={std!r} beside weight_decay={weight_decay!r}: both are a Gaussian prior; "
                    "change prior_std (or num_data) alone, or set prior_std to None to use weight_decay"
                )
            if recorded_std is None or (std, group["num_data"]) != (recorded_std, recorded_num_data):
                group["weight_decay"] = decay
        if index < len(self._applied_priors):
            self._applied_priors[index] = self._applied_prior(group)

    def set_element_offset(self, param: torch.Tensor, element_offset: int) -> None:
        """Declare `param` a shard starting at flat element `element_offset` of a
        larger parameter, so it draws exactly that slice of the whole tensor's noise."""
        if param not in self._stream_ids:
            raise ValueError("set_element_offset: the tensor is not a parameter of this optimizer")
        if isinstance(element_offset, bool) or not isinstance(element_offset, int) or not 0 <= element_offset < 2**63:
            raise ValueError(f"element_offset must be an int in [0, 2^63), got {element_offset!r}")
        self._init_state(param)["element_offset"] = element_offset

    def _init_state(self, p: torch.Tensor) -> dict[str, Any]:
        """The state of `p`, made on its first step. A parameter whose dtype or device changed since
        (``model.double()``, ``model.to(device)``) takes its square_avg along, as load_state_dict
        does; one whose shape changed is refused (ValueError), its history belonging to another tensor.
        """
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["stream_id"] = self._stream_ids[p]
            state["element_offset"] = 0
            if self.PRECONDITIONED:
                state["square_avg"] = torch.zeros_like(
                    p, dtype=opmath_dtype(p.dtype), memory_format=torch.contiguous_format
                )
        elif self.PRECONDITIONED:
            v = state["square_avg"]
            if v.shape != p.shape:
                raise ValueError(
                    f"{type(self).__name__}: parameter with stream id {state['stream_id']} has shape "
                    f"{tuple(p.shape)}, but its square_avg {tuple(v.shape)}: a parameter resized after it "
                    "was stepped has no preconditioner to go on with (build a new optimizer for it)"
                )
            want = opmath_dtype(p.dtype)
            if v.dtype != want or v.device != p.device:
                state["square_avg"] = v.to(device=p.device, dtype=want).contiguous()
        return state

    # -- the step ------------------------------------------------------------------

    # torch.compile leaves the step out of the graph: it is a fused call per bucket already, and
    # tracing it would guard on every parameter's int step counter and so recompile at every step.
    @torch.compiler.disable
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One Langevin step for every parameter that has a gradient.

        Args:
            closure: optional; re-evaluates the model and returns the loss
                (called with gradients enabled).
        Returns:
            the closure's loss, or None.
        Raises:
            NonFiniteGradientError (a FloatingPointError): a gradient holds NaN or
                inf and nan_policy is "raise" (nothing has been updated).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = []
        for i, group in enumerate(self.param_groups):
            # A scheduler or the user may have changed a group since it was added; a bad value
            # found here, before any update, leaves every parameter and state as it was.
            self._check_hyperparameters(group, f"parameter group {i}: ")
            self._follow_prior(i, group)
            for params in self._buckets(group):
                backend = select_backend(group["impl"], params[0].device, [params[0].dtype])
                work.append((group, params, backend))
        # Every gradient is checked before anything is updated, so a bad one
        # leaves all parameters and state as they were, too.
        if not self._gradients_are_finite(work):
            self.skipped_steps += 1
            return loss
        calls = [(self._bucket_call(group, params), backend) for group, params, backend in work]
        if len(calls) > 1:
            # One fused call checks its inputs before it writes anything; of several, a later one
            # refusing (tensors sharing memory) would leave the earlier ones stepped and their noise
            # counters moved on: check them all first.
            for call, _ in calls:
                call.check()
        for call, backend in calls:
            call.run(backend)
        return loss

    def _buckets(self, group: dict[str, Any]) -> list[list[torch.Tensor]]:
        """The group's parameters with gradients, one list per (device, dtype): a fused call
        updates tensors of one device."""
        buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = defaultdict(list)
        for p in group["params"]:
            if p not in self._stream_ids:
                raise ValueError(
                    f"{type(self).__name__}: a parameter of shape {tuple(p.shape)} was put into a parameter group's "
                    "list directly, so it has no noise stream: add parameters with add_param_group"
                )
            if p.grad is None:
                continue
            if p.device.type == "meta":
                raise ValueError(
                    f"{type(self).__name__}: parameter with stream id {self._stream_ids[p]} "
                    f"(shape {tuple(p.shape)}) is on the meta device, which holds no data to update: materialise "
                    "the model (Module.to_empty, then initialise it) before stepping"
                )
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            if not p.is_contiguous() and any(
                stride == 0 and size > 1 for size, stride in zip(p.shape, p.stride(), strict=True)
            ):
                raise ValueError(
                    f"{type(self).__name__}: parameter with stream id {self._stream_ids[p]} (shape "
                    f"{tuple(p.shape)}, strides {p.stride()}) is an expanded tensor, whose elements share memory: "
                    "it cannot be updated in place (make it a tensor of its own, e.g. with .clone())"
                )
            buckets[(p.device, p.dtype)].append(p)
        return list(buckets.values())

    def _gradients_are_finite(self, work) -> bool:
        """Applies nan_policy: True to go ahead with the step, False to skip it."""
        policy = self.nan_policy
        if policy == "propagate":
            return True
        for group, params, _ in work:
            # A NaN or inf gradient makes its L2 norm non-finite. The 2-norm is one
            # fast multi-tensor pass (the inf-norm and isfinite().all() are ~8x
            # slower on CPU); the rare non-finite norm is confirmed element-wise,
            # since squares of finite gradients above ~1e19 overflow fp32 too.
            norms = torch.stack(torch._foreach_norm([p.grad for p in params], 2))
            suspects = (~torch.isfinite(norms)).nonzero().flatten().tolist()
            bad = [i for i in suspects if not bool(torch.isfinite(params[i].grad).all())]
            if not bad:
                continue
            if policy == "skip":
                return False
            names = group.get("param_names")
            p = params[bad[0]]
            if names:  # the optimizer was given named_parameters()
                label = repr(next(n for n, q in zip(names, group["params"], strict=False) if q is p))
            else:
                label = f"with stream id {self._stream_ids[p]}"
            raise NonFiniteGradientError(
                f"{type(self).__name__}: the gradient of parameter {label} (shape {tuple(p.shape)}) holds NaN "
                f"or inf; no parameter was updated. Pass nan_policy='skip' to skip such steps.",
                parameter=f"{label} (shape {tuple(p.shape)})",
            )
        return True

    def _bucket_call(self, group: dict[str, Any], params: list[torch.Tensor]) -> _BucketCall:
        """The fused call that steps `params` (one device and dtype) of `group`, ready to run."""
        states = [self._init_state(p) for p in params]
        # The kernels take contiguous tensors; a non-contiguous parameter is
        # stepped on a contiguous copy (logical element order, so the noise is
        # the same) and copied back.
        work = [p if p.is_contiguous() else p.contiguous() for p in params]
        grads = [p.grad if p.grad.is_contiguous() else p.grad.contiguous() for p in params]
        hyper = StepHyper(
            lr=float(group["lr"]),
            weight_decay=float(group["weight_decay"]),
            temperature=float(group["temperature"]),
            num_data=int(group["num_data"]),
            add_noise=bool(group["add_noise"]),
            seed=int(group["seed"]),
            alpha=float(group["alpha"]) if self.PRECONDITIONED else None,
            eps=float(group["eps"]) if self.PRECONDITIONED else None,
        )
        lists = StepLists(
            work,
            grads,
            [s["square_avg"] for s in states] if self.PRECONDITIONED else None,
            [s["stream_id"] for s in states],
            [s["element_offset"] for s in states],
            [s["step"] for s in states],
        )
        return _BucketCall(params, states, lists, hyper)

    # -- copies and checkpoints ------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """For pickle and copy.deepcopy: torch's fields plus the NaN policy, the skipped-step count
        and the noise streams (as ids in the order of each group's parameters, so that a copy maps
        them onto its own copies of the parameters)."""
        state = super().__getstate__()
        state["nan_policy"] = self.nan_policy
        state["skipped_steps"] = self.skipped_steps
        state["_next_stream_id"] = self._next_stream_id
        state["_stream_id_lists"] = [[self._stream_ids[p] for p in g["params"]] for g in self.param_groups]
        state["_applied_priors"] = list(self._applied_priors)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        stream_id_lists = state.pop("_stream_id_lists", None)
        applied_priors = state.pop("_applied_priors", None)
        super().__setstate__(state)
        # A pickled optimizer carries its records; a loaded state_dict starts from its groups as saved.
        self._applied_priors = applied_priors or [self._applied_prior(g) for g in self.param_groups]
        if stream_id_lists is not None:
            self._stream_ids = {
                p: i
                for g, ids in zip(self.param_groups, stream_id_lists, strict=True)
                for p, i in zip(g["params"], ids, strict=True)
            }

    def state_dict(self) -> dict[str, Any]:
        """As torch.optim.Optimizer.state_dict, plus the count of skipped steps."""
        state = super().state_dict()
        state["skipped_steps"] = self.skipped_steps
        return state

    #: The torch.optim optimizer whose state this one continues (`load_state_dict`), and the group
    #: keys that identify it.
    TORCH_COUNTERPART: tuple[str, frozenset[str]] = ("SGD", frozenset({"momentum", "dampening", "nesterov"}))

    def _from_torch_optimizer(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """The state of the torch.optim counterpart (RMSprop for PSGLD, SGD for SGLD) as this
        optimizer's: its hyperparameters (lr, weight_decay, and alpha, eps) and RMSprop's square_avg
        (the same V) carry over; the Langevin fields (num_data, temperature, seed, add_noise, impl)
        stay this optimizer's, and the noise counters start at 0. A group with a ``prior_std`` keeps
        the weight decay of its prior: the prior is part of the posterior being sampled, like num_data.

        Raises:
            ValueError: another optimizer's state, or a feature this one does not have (momentum, a
                centered RMSprop).
        """
        name, keys = self.TORCH_COUNTERPART
        me = type(self).__name__
        if len(state_dict["param_groups"]) != len(self.param_groups):
            raise ValueError(
                f"{me}.load_state_dict: the state_dict has {len(state_dict['param_groups'])} parameter groups, "
                f"the optimizer {len(self.param_groups)}"
            )
        for i, sg in enumerate(state_dict["param_groups"]):
            if not keys <= sg.keys():
                raise ValueError(
                    f"{me}.load_state_dict: parameter group {i} is neither a {me} state nor a torch.optim.{name} one "
                    f"(its keys: {sorted(k for k in sg if k != 'params')})"
                )
            if sg.get("maximize", False):
                raise ValueError(
                    f"{me}.load_state_dict: the torch.optim.{name} state has maximize=True (it ascended its loss); "
                    f"{me} descends the loss it is given: negate the loss instead"
                )
            if sg.get("momentum", 0) != 0 or sg.get("centered", False):
                raise ValueError(
                    f"{me}.load_state_dict: the torch.optim.{name} state uses momentum={sg.get('momentum')}"
                    + (", centered=True" if sg.get("centered") else "")
                    + f", which {me} does not have: only a plain {name} state (momentum 0"
                    + (", not centered" if "centered" in keys else "")
                    + ") carries over"
                )
        carried = ("lr", "weight_decay") + (("alpha", "eps") if self.PRECONDITIONED else ())
        groups = []
        for g, sg in zip(self.param_groups, state_dict["param_groups"], strict=False):
            keys = [k for k in carried if not (k == "weight_decay" and g.get("prior_std") is not None)]
            groups.append({**{k: v for k, v in g.items() if k != "params"}, **{k: sg[k] for k in keys},
                           "params": sg["params"]})  # fmt: skip
        index_to_param = {i: p for sg, g in zip(state_dict["param_groups"], self.param_groups, strict=False)
                          for i, p in zip(sg["params"], g["params"], strict=False)}  # fmt: skip
        state = {}
        for key, saved in state_dict["state"].items():
            p = index_to_param.get(key)
            entry = {"step": 0, "stream_id": self._stream_ids[p] if p is not None else key, "element_offset": 0}
            if self.PRECONDITIONED:
                if "square_avg" not in saved:
                    raise ValueError(f"{me}.load_state_dict: the RMSprop state of parameter {key} has no square_avg")
                entry["square_avg"] = saved["square_avg"]
            state[key] = entry
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch.optim.Optimizer.load_state_dict, but keeps ``square_avg`` in
        its math dtype (torch's loader would cast it to a fp16/bf16 parameter's dtype).

        It also continues the state of the torch.optim counterpart: PSGLD that of a plain
        ``torch.optim.RMSprop`` (its square_avg is V: burn in with RMSprop, then sample with
        PSGLD), SGLD that of ``torch.optim.SGD`` without momentum (`_from_torch_optimizer`).

        Raises:
            ValueError: the groups, parameter counts or state shapes do not match, or the state is
                another optimizer's.
        """
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            returned = pre_hook(self, state_dict)
            if returned is not None:
                state_dict = returned
        groups = self.param_groups
        if any("num_data" not in sg for sg in state_dict["param_groups"]):
            state_dict = self._from_torch_optimizer(state_dict)
        elif self.PRECONDITIONED and any("alpha" not in sg for sg in state_dict["param_groups"]):
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: the state_dict is an SGLD state (its groups have no alpha "
                "and eps, its parameters no square_avg); PSGLD needs a preconditioner to continue"
            )
        elif not self.PRECONDITIONED and any("alpha" in sg for sg in state_dict["param_groups"]):
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: the state_dict is a PSGLD state (its groups have alpha and "
                "eps, its parameters square_avg); SGLD has no preconditioner to continue"
            )
        saved_groups = state_dict["param_groups"]
        if len(groups) != len(saved_groups):
            raise ValueError(f"state_dict has {len(saved_groups)} parameter groups, the optimizer {len(groups)}")
        id_to_param = {}
        for i, (g, sg) in enumerate(zip(groups, saved_groups, strict=False)):
            if len(g["params"]) != len(sg["params"]):
                raise ValueError(
                    f"parameter group {i} has {len(g['params'])} parameters, the state_dict {len(sg['params'])}"
                )
            id_to_param.update(zip(sg["params"], g["params"], strict=False))
        new_state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)
        for key, saved in state_dict["state"].items():
            if key not in id_to_param:
                raise ValueError(f"state_dict has state for parameter id {key}, which no group lists")
            p = id_to_param[key]
            entry = {k: (int(v) if k in ("step", "stream_id", "element_offset") else v) for k, v in saved.items()}
            if self.PRECONDITIONED:
                if "square_avg" not in entry:
                    raise ValueError(f"state of parameter id {key} has no square_avg")
                v = entry["square_avg"]
                if tuple(v.shape) != tuple(p.shape):
                    raise ValueError(
                        f"square_avg of parameter id {key} has shape {tuple(v.shape)}, the parameter {tuple(p.shape)}"
                    )
                entry["square_avg"] = v.to(device=p.device, dtype=opmath_dtype(p.dtype), copy=True).contiguous()
            new_state[p] = entry
        new_groups = []
        for g, sg in zip(groups, saved_groups, strict=False):
            merged = dict(sg)
            merged["params"] = g["params"]
            if "param_names" in g and "param_names" not in merged:
                merged["param_names"] = g["param_names"]
            new_groups.append(merged)
        self.__setstate__({"state": new_state, "param_groups": new_groups})
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)


class _BucketCall(NamedTuple):
    """One fused step call of an optimizer: the parameters it updates, their states, and the lists
    and scalars the backend gets (contiguous copies in `lists.params` for non-contiguous parameters)."""

    params: list[torch.Tensor]
    states: list[dict[str, Any]]
    lists: StepLists
    hyper: StepHyper

    @property
    def op(self) -> str:
        return "sgld_step_" if self.lists.square_avgs is None else "psgld_step_"

    def check(self) -> None:
        """Of the checks the backend makes before it writes anything, the one the optimizer's own
        construction of the lists does not already pass: no written tensor sharing memory with another
        (ValueError naming the op). Dtypes, devices, shapes and contiguity hold by construction, and the
        hyperparameters were checked with the group."""
        check_no_overlap(self.op, self.lists.params, self.lists.grads, self.lists.square_avgs)

    def run(self, backend) -> None:
        """Step with `backend`, copy the non-contiguous parameters back, and move the noise on."""
        step = backend.sgld_step_ if self.lists.square_avgs is None else backend.psgld_step_
        step(*self.lists.op_args(), **self.hyper.op_kwargs())
        for p, w in zip(self.params, self.lists.params, strict=True):
            if w is not p:
                p.copy_(w)
        if self.hyper.add_noise:
            for s in self.states:
                s["step"] += 1
