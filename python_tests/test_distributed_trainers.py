"""The trainers under ``torchrun --nproc_per_node=2`` (gloo, 2 CPU processes, 1 thread each).

- Data parallel: the language-model run equals the single-process run on the same global batch to
  float rounding, with uneven column shares (batch 9 = 5 + 4, evaluation streams 7 = 4 + 3). The
  ranks' parameters are compared bitwise at every checkpoint by the trainer itself
  (`check_replicas_equal`, whose detection of a difference is tested here with two processes).
- Exact resume: a data-parallel run stopped mid-epoch and resumed under torchrun ends bit-identical
  to the uninterrupted data-parallel run (dropout on, so every rank's RNG must resume); resuming with
  another process count is refused with a clear message.
- Chains: ``--chains 2`` on 2 processes (one chain each) gives bit for bit the single-process
  ``--chains 2`` result; so does ``--chains 3``, where one process waits a whole chain for the other,
  longer than the process group's timeout (shortened to 4 s for the test).
- The classifier: data parallel equals single process (batch 25 = 13 + 12, and a last batch of 1
  sentence, which leaves one rank without a sentence), and resumes bit for bit under torchrun.
- The caption trainer: data parallel equals single process, and resumes bit for bit under torchrun.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from gloo_workers import gloo_world, spawn

from sgmcmc_fused.train import main
from sgmcmc_fused.train.checkpoint import load_checkpoint
from sgmcmc_fused.train.distributed import World, check_replicas_equal, gather_dim, shard

ROOT = Path(__file__).resolve().parents[1]
dist = torch.distributed

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)

LM = [
    "lm", "--synthetic-train-tokens", "9000", "--synthetic-eval-tokens", "700", "--hidden", "24",
    "--batch-size", "9", "--bptt", "10", "--eval-batch-size", "7", "--epochs", "2", "--method", "psgld",
    "--burn-in", "40", "--thin", "25", "--no-plot", "--quiet", "--threads", "1",
]  # fmt: skip


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",
    }


def _torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "sgmcmc_fused.train", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300, cwd=ROOT)


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-10000:]


def _model(out: Path, method: str = "psgld") -> dict[str, torch.Tensor]:
    return load_checkpoint(out / method / "checkpoint.pt")["model"]


def _result(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())["methods"][0]


def test_data_parallel_lm_equals_single_process(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert main([*LM, "--out", str(single)]) == 0
    _ok(_torchrun(*LM, "--out", str(ddp)))
    a, b = _model(single), _model(ddp)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=2e-5, msg=k)
    ra, rb = _result(single), _result(ddp)
    assert ra["num_samples"] == rb["num_samples"] == 6  # noise after step 40, a sample every 25 of 198
    assert rb["test_avg_ppl"] == pytest.approx(ra["test_avg_ppl"], rel=1e-4)
    assert rb["test_ppl"] == pytest.approx(ra["test_ppl"], rel=1e-4)
    ck = load_checkpoint(ddp / "psgld" / "checkpoint.pt")
    assert ck["world_size"] == 2 and len(ck["rank_rng_states"]) == 2
    # The training perplexity sums both ranks' tokens: the same as one process's, to rounding.
    la = json.loads((single / "psgld" / "log.json").read_text())["epochs"]
    lb = json.loads((ddp / "psgld" / "log.json").read_text())["epochs"]
    for ea, eb in zip(la, lb, strict=True):
        assert eb["train_ppl"] == pytest.approx(ea["train_ppl"], rel=1e-4)


def test_data_parallel_resume_is_bit_exact(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    args = [*LM, "--dropout", "0.2", "--dropconnect", "0.1", "--checkpoint-every", "30"]
    _ok(_torchrun(*args, "--out", str(straight)))
    _ok(_torchrun(*args, "--out", str(split), "--stop-after-steps", "130"))
    assert load_checkpoint(split / "psgld" / "checkpoint.pt")["step"] == 130
    refused = _torchrun("lm", "--resume", str(split), "--quiet", "--threads", "1", nproc=1)
    assert refused.returncode != 0
    assert "written by 2 data-parallel process(es)" in refused.stderr + refused.stdout
    _ok(_torchrun("lm", "--resume", str(split), "--quiet", "--no-plot", "--threads", "1", "--checkpoint-every", "30"))
    a, b = load_checkpoint(straight / "psgld" / "checkpoint.pt"), load_checkpoint(split / "psgld" / "checkpoint.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for i, (ra, rb) in enumerate(zip(a["rank_rng_states"], b["rank_rng_states"], strict=True)):
        assert torch.equal(ra[0], rb[0]), f"rank {i} RNG"
    assert a["curve"] == b["curve"]
    assert _result(straight)["test_avg_ppl"] == _result(split)["test_avg_ppl"]


def test_chains_on_two_processes_equal_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    args = [*LM, "--chains", "2", "--epochs", "1", "--burn-in", "20", "--thin", "15"]
    assert main([*args, "--out", str(one)]) == 0
    _ok(_torchrun(*args, "--out", str(two)))
    ra, rb = _result(one), _result(two)
    for key in ("test_avg_ppl", "valid_avg_ppl", "test_ppl", "split_rhat", "chain_test_avg_ppl", "num_samples"):
        assert ra[key] == rb[key], key
    for k in range(2):
        ma, mb = _model(one, f"psgld/chain-{k}"), _model(two, f"psgld/chain-{k}")
        assert all(torch.equal(ma[n], mb[n]) for n in ma)


# Loaded by every torchrun process through PYTHONPATH: the trainer's process group then times out
# after PG_TIMEOUT_S seconds instead of 30 minutes, so a wait that leans on the group's timeout fails
# within the test.
_SHORT_GROUP_TIMEOUT = """
import datetime, os
import torch.distributed as dist
_init_process_group = dist.init_process_group
def _short(*args, **kwargs):
    kwargs["timeout"] = datetime.timedelta(seconds=float(os.environ["PG_TIMEOUT_S"]))
    return _init_process_group(*args, **kwargs)
dist.init_process_group = _short
"""


def test_uneven_chains_wait_past_the_group_timeout(tmp_path):
    """--chains 3 on 2 processes: rank 0 trains chains 0 and 2, rank 1 chain 1, then waits a whole
    chain for rank 0 (about 8 s here, longer on a busy machine; 4 s of group timeout, which the
    shutdown's barrier, while rank 0 pools, stays well within). The run must finish and pool exactly
    what one process pools."""
    one, two = tmp_path / "one", tmp_path / "two"
    args = [*LM, "--chains", "3", "--epochs", "60", "--burn-in", "2000", "--thin", "500"]
    assert main([*args, "--out", str(one)]) == 0
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SHORT_GROUP_TIMEOUT)
    env = {**_env(), "PG_TIMEOUT_S": "4"}
    env["PYTHONPATH"] = str(site) + os.pathsep + env["PYTHONPATH"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "sgmcmc_fused.train", *args, "--out", str(two)]  # fmt: skip
    _ok(subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT))
    pa = json.loads((one / "psgld" / "pooled.json").read_text())
    pb = json.loads((two / "psgld" / "pooled.json").read_text())
    assert pa["num_samples"] == 3 * 8  # samples at steps 2000, 2500, ..., 5500 of each chain's 5,940
    for key in ("test_avg_ppl", "valid_avg_ppl", "test_ppl", "split_rhat", "chain_test_avg_ppl", "num_samples"):
        assert pb[key] == pa[key], key
    for k in range(3):
        ma, mb = _model(one, f"psgld/chain-{k}"), _model(two, f"psgld/chain-{k}")
        assert all(torch.equal(ma[n], mb[n]) for n in ma), k


CLS = [
    "classify", "--synthetic-train-size", "1362", "--synthetic-test-size", "300", "--hidden", "16",
    "--embedding-dim", "16", "--epochs", "2", "--method", "psgld", "--batch-size", "25", "--burn-in", "1ep",
    "--thin", "10", "--no-progress", "--quiet", "--threads", "1",
]  # fmt: skip


def test_data_parallel_classifier_equals_single_process(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert main([*CLS, "--dropout", "0", "--out", str(single)]) == 0
    _ok(_torchrun(*CLS, "--dropout", "0", "--out", str(ddp)))
    a = load_checkpoint(single / "psgld" / "checkpoint.pt")
    b = load_checkpoint(ddp / "psgld" / "checkpoint.pt")
    assert b["step"] == a["step"] == 2 * 50  # 1226 training sentences: 49 batches of 25 and one of 1
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-4, atol=2e-5, msg=k)
    torch.testing.assert_close(b["test_samples"], a["test_samples"], rtol=0, atol=1e-5)
    ra, rb = _result(single), _result(ddp)
    assert rb["num_samples"] == ra["num_samples"] == 5
    assert rb["nll_mean"] == pytest.approx(ra["nll_mean"], rel=1e-4)
    assert [e["train_loss"] for e in json.loads((ddp / "psgld" / "log.json").read_text())["epochs"]] == pytest.approx(
        [e["train_loss"] for e in json.loads((single / "psgld" / "log.json").read_text())["epochs"]], rel=1e-5
    )


def test_data_parallel_classifier_resume_is_bit_exact(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    _ok(_torchrun(*CLS, "--out", str(straight)))
    _ok(_torchrun(*CLS, "--out", str(split), "--stop-after-steps", "63"))
    assert load_checkpoint(split / "psgld" / "checkpoint.pt")["step"] == 63
    _ok(_torchrun("classify", "--resume", str(split), "--quiet", "--no-progress", "--threads", "1"))
    a, b = load_checkpoint(straight / "psgld" / "checkpoint.pt"), load_checkpoint(split / "psgld" / "checkpoint.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["test_samples"], b["test_samples"])
    assert _result(straight)["error_mean"] == _result(split)["error_mean"]


CAPTION = [
    "caption", "--synthetic-train", "40", "--synthetic-valid", "7", "--synthetic-test", "6",
    "--synthetic-image-size", "32", "--hidden", "16", "--embedding-dim", "16", "--batch-size", "23", "--epochs", "2",
    "--method", "psgld", "--burn-in", "1ep", "--thin", "3", "--beam", "2", "--max-caption-words", "6", "--show", "0",
    "--no-progress", "--quiet", "--threads", "1",
]  # fmt: skip


def test_data_parallel_caption_equals_single_process(tmp_path):
    """200 captions in batches of 23 = 12 + 11 (the last, of 16, 8 + 8); 35 validation captions split
    18 + 17 for the perplexities. The ranks' gradients are weighted by their target tokens."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert main([*CAPTION, "--dropout", "0", "--out", str(single)]) == 0
    _ok(_torchrun(*CAPTION, "--dropout", "0", "--out", str(ddp)))
    a, b = load_checkpoint(single / "psgld" / "checkpoint.pt"), load_checkpoint(ddp / "psgld" / "checkpoint.pt")
    assert b["step"] == a["step"] == 2 * 9 and b["world_size"] == 2
    # Rounding differs (a batch of 23 against 12 + 11, and GEMM blockings by CPU), and the RMS
    # preconditioner enlarges it where a gradient is near 0: up to 3e-5 after the 18 steps. Weighting
    # the ranks' losses equally instead of by their tokens moves the weights by 1e-2 to 1e-1.
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-4, atol=1e-4, msg=k)
    assert [r["step"] for r in b["curve"]] == [r["step"] for r in a["curve"]] == [12, 15, 18]
    for ra, rb in zip(a["curve"], b["curve"], strict=True):
        assert rb["valid_avg_ppl"] == pytest.approx(ra["valid_avg_ppl"], rel=1e-4)
    la = json.loads((single / "psgld" / "log.json").read_text())["epochs"]
    lb = json.loads((ddp / "psgld" / "log.json").read_text())["epochs"]
    assert [e["train_ppl"] for e in lb] == pytest.approx([e["train_ppl"] for e in la], rel=1e-4)
    assert _result(ddp)["num_samples"] == _result(single)["num_samples"] == 3


def test_data_parallel_caption_resume_is_bit_exact(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    args = [*CAPTION, "--dropout", "0.3", "--dropconnect", "0.2"]
    _ok(_torchrun(*args, "--out", str(straight)))
    _ok(_torchrun(*args, "--out", str(split), "--stop-after-steps", "13"))
    _ok(_torchrun("caption", "--resume", str(split), "--quiet", "--no-progress", "--threads", "1", "--show", "0"))
    a, b = load_checkpoint(straight / "psgld" / "checkpoint.pt"), load_checkpoint(split / "psgld" / "checkpoint.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["curve"] == b["curve"]
    assert _result(straight)["average"] == _result(split)["average"]


def test_too_many_processes_for_the_batch_is_a_clear_error(tmp_path):
    proc = _torchrun(*LM, "--batch-size", "1", "--out", str(tmp_path / "x"))
    assert proc.returncode != 0
    assert "--batch-size 1 is smaller than the 2 processes" in proc.stderr + proc.stdout


# -- the collectives the trainers use ----------------------------------------------------------------


def _collectives_worker(rank: int, world_size: int, rendezvous_file: str) -> None:
    with gloo_world(rank, world_size, rendezvous_file) as world:
        full = torch.arange(2 * 7 * 3, dtype=torch.float64).view(2, 7, 3)
        mine = full[:, shard(7, world)]
        assert mine.shape[1] == (4 if rank == 0 else 3)
        assert torch.equal(gather_dim(mine, 1, world), full)
        same = [torch.ones(3), torch.arange(4.0)]
        check_replicas_equal(same, world, "params")
        differs = [torch.ones(3), torch.arange(4.0) + (rank == 1) * 1e-7]
        try:
            check_replicas_equal(differs, world, "params")
        except RuntimeError as e:
            assert "params differ between ranks (ranks [1] differ from rank 0)" in str(e)
        else:
            raise AssertionError("a difference of 1e-7 between ranks was not detected")


def test_collectives_shard_gather_and_replica_check(tmp_path):
    spawn(_collectives_worker, tmp_path)


def test_shard_covers_the_range():
    for n in (1, 2, 7, 10):
        for size in (1, 2, 3):
            if size > n:
                continue
            parts = [shard(n, World(r, size)) for r in range(size)]
            assert [i for p in parts for i in range(n)[p]] == list(range(n))
            assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1
