"""The typed run configurations: parsing the schedule specs once, the JSON round trip, and reading the
configurations of runs saved by earlier versions."""

import json

import pytest

from sgmcmc_fused.train.classify.config import ClassifyConfig
from sgmcmc_fused.train.cli import build_parser
from sgmcmc_fused.train.config import StepCount, Temperature
from sgmcmc_fused.train.lm.config import LMConfig, resolve_config
from sgmcmc_fused.train.options import ConfigError

# config.json of an lm run as written before --sample-weights existed (tiny preset, defaults).
LEGACY_LM_CONFIG = {
    "preset": "tiny",
    "data": {"kind": "synthetic", "seed": 0, "num_states": 16, "vocab_size": 200, "train_tokens": 50000,
             "eval_tokens": 20000},
    "hidden": 128, "layers": 1, "batch_size": 20, "bptt": 20, "epochs": 10, "lr_decay": 2.0, "decay_after": 6,
    "clip": 0.25, "dropout": 0.0, "init_scale": 0.1, "burn_in": "3ep", "thin": "0.10ep",
    "methods": ["rmsprop", "psgld"], "lr": {"rmsprop": 0.003, "psgld": 0.003}, "dropconnect": 0.0,
    "mask": "bernoulli", "masked": "hh", "minibatch": "successive", "eval_batch_size": 10, "temperature": "1/N",
    "weight_decay": 0.0, "alpha": 0.99, "eps": 1e-05, "max_samples": 0, "samples_dir": None,
    "average_optimizers": False, "nan_policy": "raise", "seed": 0, "chains": 1, "step_impl": "auto",
    "lstm_impl": "auto",
}  # fmt: skip
# config.json of a classify run (synthetic task, defaults), as written before --precision existed.
CLASSIFY_CONFIG = {
    "preset": "tiny",
    "data": {"seed": 0, "valid_fraction": 0.1, "kind": "synthetic", "num_classes": 4, "vocab_size": 300,
             "train_size": 5000, "test_size": 1000, "min_len": 4, "max_len": 12, "signal": 0.3, "label_noise": 0.1},
    "embedding_dim": 32, "hidden": 32, "layers": 1, "dropout": 0.5, "batch_size": 50, "epochs": 15, "clip": 5.0,
    "burn_in": "5ep", "thin": "0.25ep", "methods": ["rmsprop", "psgld"], "lr": {"rmsprop": 0.003, "psgld": 0.003},
    "bidirectional": True, "static_embeddings": False, "dropconnect": 0.0, "mask": "bernoulli", "masked": "hh",
    "temperature": "1/N", "weight_decay": 0.0, "alpha": 0.99, "eps": 1e-05, "average_optimizers": False,
    "select": "last", "nan_policy": "raise", "seed": 0, "step_impl": "auto", "lstm_impl": "auto",
    "eval_batch_size": 200,
}  # fmt: skip

#: The shared fields added since those runs, with the values that compute what the runs computed: fp32,
#: no prior beyond weight_decay, the task's own decaying schedule.
ADDED_SINCE = {"precision": "fp32", "prior_std": None, "schedule": "decay", "cycles": 4, "explore_fraction": 0.8}


@pytest.mark.parametrize(
    "spec, per_epoch, steps",
    [("500", 7, 500), ("2ep", 7, 14), ("0.25ep", 10, 2), ("0.3ep", 10, 3), ("0.01ep", 10, 1), ("0ep", 10, 0),
     (" 1.5 epochs", 4, 6), (12, 3, 12)],
)  # fmt: skip
def test_step_counts_convert_epochs_once_the_epoch_length_is_known(spec, per_epoch, steps):
    # Epochs round half to even (Python's round), and a positive fraction gives at least one step.
    count = StepCount.parse(spec, "--burn-in")
    assert count.steps(per_epoch) == steps
    assert str(count) == str(spec)


@pytest.mark.parametrize("spec", ["abc", "-1", "2 steps", "1e3", ""])
def test_malformed_step_counts_name_the_option(spec):
    with pytest.raises(ConfigError, match=r"--thin .*expected a number of steps"):
        StepCount.parse(spec, "--thin", minimum=1)


def test_thin_of_zero_steps_is_refused():
    with pytest.raises(ConfigError, match=r"--thin '0': must be at least 1 step$"):
        StepCount.parse("0", "--thin", minimum=1)


@pytest.mark.parametrize("spec, n, value", [("1", 10, 1.0), ("0.01", 7, 0.01), ("1/N", 50_000, 2e-5),
                                            ("10/n", 400, 0.025), (0.5, 3, 0.5)])  # fmt: skip
def test_temperature_is_a_number_or_k_over_n(spec, n, value):
    assert Temperature.parse(spec).at(n) == pytest.approx(value, rel=1e-15)


@pytest.mark.parametrize("spec", ["hot", "-1", "inf", "nan", "1/M"])
def test_bad_temperatures_are_refused(spec):
    with pytest.raises(ConfigError, match="--temperature"):
        Temperature.parse(spec)


def test_lm_configuration_from_options_round_trips_through_json():
    args = build_parser().parse_args(["lm", "--burn-in", "0.50ep", "--thin", "7", "--lr", "psgld=0.002"])
    cfg = resolve_config(args)
    assert cfg.burn_in.steps(10) == 5 and cfg.thin.steps(10) == 7
    assert cfg.lr == {"rmsprop": 0.003, "psgld": 0.002}  # the tiny preset's rms_lr, and the one given
    saved = json.loads(json.dumps(cfg.to_json()))
    assert saved["burn_in"] == "0.50ep"  # the text as given, so that the saved run compares equal to itself
    assert LMConfig.from_json(saved) == cfg
    assert LMConfig.from_json(saved).to_json() == saved


def test_a_configuration_saved_before_a_field_existed_reads_with_its_old_behaviour():
    cfg = LMConfig.from_json(LEGACY_LM_CONFIG)
    assert cfg.sample_weights == "uniform"
    assert cfg.to_json() == {**LEGACY_LM_CONFIG, "sample_weights": "uniform", **ADDED_SINCE}
    assert cfg.thin.steps(250) == 25 and cfg.temperature.at(50_000) == pytest.approx(2e-5, rel=1e-15)
    assert cfg.lr_at("psgld", 0) == 0.003 and cfg.lr_at("psgld", 7) == pytest.approx(0.003 / 4, rel=1e-15)


def test_classify_configuration_round_trips():
    cfg = ClassifyConfig.from_json(CLASSIFY_CONFIG)  # saved before --precision: fp32
    assert cfg.to_json() == {**CLASSIFY_CONFIG, **ADDED_SINCE}
    assert ClassifyConfig.from_json(cfg.to_json()) == cfg
    assert cfg.burn_in.steps(100) == 500 and cfg.thin.steps(100) == 25


def test_unknown_or_missing_fields_are_refused():
    with pytest.raises(ConfigError, match=r"does not know: \['colour'\]"):
        LMConfig.from_json({**LEGACY_LM_CONFIG, "colour": "red"})
    incomplete = {k: v for k, v in CLASSIFY_CONFIG.items() if k != "select"}
    with pytest.raises(ConfigError, match="incomplete.*select"):
        ClassifyConfig.from_json(incomplete)


@pytest.mark.parametrize(
    "data, message",
    [({}, "data.kind must be one of synthetic, files, got None"),
     ({"kind": "files", "seed": 0, "valid_fraction": 0.1}, r"data.train is missing \(the files data part needs"),
     ({**CLASSIFY_CONFIG["data"], "signal": "x"}, "data.signal must be a number, got 'x'")],
)  # fmt: skip
def test_a_classify_data_part_edited_by_hand_is_named(data, message):
    with pytest.raises(ConfigError, match=message):
        ClassifyConfig.from_json({**CLASSIFY_CONFIG, "data": data})


@pytest.mark.parametrize(
    "change, message",
    [({"epochs": 0}, "--epochs must be >= 1"), ({"lr_decay": 0.5}, "--lr-decay must be >= 1"),
     ({"alpha": 1.0}, r"--alpha must be in \[0, 1\)"), ({"burn_in": "x"}, "--burn-in 'x'"),
     ({"samples_dir": "/tmp/s"}, "--samples-dir /tmp/s with --max-samples 0"),
     ({"lr": {"rmsprop": 0.003}}, "no learning rate for psgld"),
     # what a hand-edited config.json may hold, refused as the options are (not a traceback later)
     ({"seed": -1}, r"--seed must be in \[0, 2\^63\), got -1"),
     ({"seed": 2**63 - 1, "chains": 2}, r"--seed must be in \[0, 2\^63\) with its 2 chains \(seed \+ k\)"),
     ({"lr": {"rmsprop": 0.003, "psgld": 0.0}}, r"--lr must be > 0, got \{'psgld': 0.0\}"),
     ({"lr": {"rmsprop": -1, "psgld": 0.003}}, r"--lr must be > 0"),
     ({"mask": "foo"}, "--mask must be one of bernoulli, gaussian, got 'foo'"),
     ({"masked": "xx"}, "--masked must be one of hh, ih, both, got 'xx'"),
     ({"methods": ()}, "no --method: give at least one"),
     ({"data": {}}, r"data.kind must be one of word, char, synthetic, got None"),
     ({"data": {"kind": "synthetic"}}, r"data.seed is missing \(the synthetic data part needs seed, num_states"),
     ({"data": {**LEGACY_LM_CONFIG["data"], "train_tokens": "many"}}, "data.train_tokens must be an integer >= 2"),
     ({"data": {"kind": "char", "path": "/x", "split": [0.9, 0.1]}}, "data.split must be three fractions")],
)  # fmt: skip
def test_a_changed_configuration_is_checked_like_a_new_one(change, message):
    cfg = LMConfig.from_json(LEGACY_LM_CONFIG)
    with pytest.raises(ConfigError, match=message):
        cfg.replace(**change)
