"""The caption model and batched posterior decoding, against per-sample `CaptionModel` forwards (the
independent reference: each sample's own DropConnectLSTM in eval mode, on the whole prefix)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sgmcmc_fused.train.caption.data import BOS, EOS, PAD
from sgmcmc_fused.train.caption.decode import StackedCaptionModels, beam_search, greedy_decode
from sgmcmc_fused.train.caption.model import CaptionModel, caption_loss, target_probabilities

V, FEAT, E, H = 9, 6, 5, 7


def make_models(num: int, vocab: int = V, scale: float = 1.0) -> list[CaptionModel]:
    models = []
    for s in range(num):
        torch.manual_seed(100 + s)
        m = CaptionModel(vocab, FEAT, embedding_dim=E, hidden_size=H, dropout=0.3, dropconnect=0.2, lstm_impl="eager")
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(scale)
        models.append(m.eval())
    return models


def reference_average(models: list[CaptionModel], features: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """p̄ of the word after `prefix` (<bos> w_1 .. w_t, int64 [B, t + 1]): each model's full forward on
    the prefix, softmax, mean over the models. float64 [B, V]."""
    tokens = torch.cat([prefix, torch.full((len(prefix), 1), PAD)], 1)  # forward reads tokens[:, :-1]
    with torch.no_grad():
        probs = [torch.softmax(m(features, tokens)[-1].double(), -1) for m in models]
    return torch.stack(probs).mean(0)


def test_stacked_step_equals_each_models_forward_averaged():
    models = make_models(3)
    features = torch.randn(4, FEAT)
    stacked = StackedCaptionModels([m.state_dict() for m in models])
    seq = torch.tensor([[5, 3, 8], [4, 4, 2], [7, 6, 5], [3, 8, 4]])
    state, probs = stacked.start(features)
    prefix = torch.full((4, 1), BOS)
    torch.testing.assert_close(probs.double(), reference_average(models, features, prefix), rtol=1e-5, atol=1e-6)
    for t in range(seq.shape[1]):
        state, probs = stacked.step(state, seq[:, t])
        prefix = torch.cat([prefix, seq[:, t : t + 1]], 1)
        torch.testing.assert_close(probs.double(), reference_average(models, features, prefix), rtol=1e-5, atol=1e-6)


def reference_greedy(models, features, max_len):
    out = []
    for b in range(len(features)):
        prefix = torch.tensor([[BOS]])
        words = []
        for t in range(max_len + 1):
            p = reference_average(models, features[b : b + 1], prefix)[0]
            p[PAD] = p[BOS] = -1
            if t == max_len:
                break
            w = int(p.argmax())
            if w == EOS:
                break
            words.append(w)
            prefix = torch.cat([prefix, torch.tensor([[w]])], 1)
        out.append(words)
    return out


@pytest.mark.parametrize("num_samples", [1, 4])
def test_greedy_takes_the_averaged_argmax(num_samples):
    models = make_models(num_samples, scale=3.0)  # peaked distributions: no near-ties
    features = torch.randn(5, FEAT) * 3
    got = greedy_decode(StackedCaptionModels([m.state_dict() for m in models]), features, max_len=6)
    assert got == reference_greedy(models, features, 6)
    assert any(len(c) > 0 for c in got)


def exhaustive_best(models, features, words, max_len):
    """The caption (word ids) maximising mean log p̄ per token (<eos> included) over all captions of at
    most max_len words drawn from `words`."""
    best = None
    for n in range(max_len + 1):
        for caption in itertools.product(words, repeat=n):
            prefix = torch.tensor([[BOS, *caption]])
            total = 0.0
            for t in range(n + 1):
                p = reference_average(models, features, prefix[:, : t + 1])[0]
                nxt = caption[t] if t < n else EOS
                total += math.log(float(p[nxt]))
            score = total / (n + 1)
            if best is None or score > best[0] + 1e-12:
                best = (score, list(caption))
    return best[1]


def test_beam_search_wide_enough_is_the_exhaustive_optimum():
    vocab = 5  # words: ids 3 (<unk>) and 4
    models = make_models(2, vocab=vocab, scale=2.0)
    for b in range(4):
        features = torch.randn(1, FEAT) * 2
        got = beam_search(StackedCaptionModels([m.state_dict() for m in models]), features, beam=16, max_len=3)
        assert got == [exhaustive_best(models, features, (3, 4), 3)], b


def test_beam_one_is_greedy_and_beam_improves_the_normalised_score():
    models = make_models(3, scale=2.0)
    stacked = StackedCaptionModels([m.state_dict() for m in models])
    features = torch.randn(8, FEAT) * 2
    assert beam_search(stacked, features, beam=1, max_len=5) == reference_greedy(models, features, 5)

    def score(b, caption):
        prefix = torch.tensor([[BOS, *caption]])
        total = sum(
            math.log(float(reference_average(models, features[b : b + 1], prefix[:, : t + 1])[0][
                caption[t] if t < len(caption) else EOS]))
            for t in range(len(caption) + 1)
        )  # fmt: skip
        return total / (len(caption) + 1)

    greedy = beam_search(stacked, features, beam=1, max_len=5)
    wide = beam_search(stacked, features, beam=4, max_len=5)
    for b in range(8):
        assert score(b, wide[b]) >= score(b, greedy[b]) - 1e-9


def test_max_len_bounds_the_captions():
    models = make_models(2, scale=0.1)
    with torch.no_grad():
        for m in models:
            m.output.bias[EOS] = -20.0  # <eos> all but impossible: the length cap ends the captions
    got = beam_search(StackedCaptionModels([m.state_dict() for m in models]), torch.randn(3, FEAT), beam=2, max_len=4)
    assert [len(c) for c in got] == [4, 4, 4]
    assert all(w not in (PAD, BOS, EOS) for c in got for w in c)


def test_caption_loss_and_target_probabilities_by_hand():
    (model,) = make_models(1)
    features = torch.randn(3, FEAT)
    tokens = torch.tensor([[BOS, 4, 5, EOS, PAD], [BOS, 6, EOS, PAD, PAD], [BOS, 3, 7, 8, EOS]])
    logits = model(features, tokens)
    loss, count = caption_loss(logits, tokens)
    logp = torch.log_softmax(logits.detach().double(), -1)
    picked = [float(logp[t, b, tokens[b, t + 1]]) for b in range(3) for t in range(4) if tokens[b, t + 1] != PAD]
    assert int(count) == len(picked) == 9
    assert loss.item() == pytest.approx(-sum(picked) / 9, rel=1e-5)
    probs = target_probabilities(model, features, tokens, batch_size=2, device="cpu")
    torch.testing.assert_close(probs, torch.tensor(picked, dtype=torch.float64).exp(), rtol=1e-5, atol=1e-7)


def test_training_forward_masks_and_drops():
    (model,) = make_models(1)
    model.train()
    features, tokens = torch.randn(2, FEAT), torch.tensor([[BOS, 4, EOS], [BOS, 5, EOS]])
    a, b = model(features, tokens), model(features, tokens)
    assert not torch.equal(a, b)  # dropout and a new DropConnect mask per call
    model.eval()
    torch.testing.assert_close(model(features, tokens), model(features, tokens))


def test_bad_inputs_are_named():
    (model,) = make_models(1)
    with pytest.raises(ValueError, match=r"features must be \[B, 6\]"):
        model(torch.randn(2, 5), torch.tensor([[BOS, EOS], [BOS, EOS]]))
    with pytest.raises(ValueError, match="tokens must be"):
        model(torch.randn(2, FEAT), torch.tensor([[BOS], [BOS]]))
    with pytest.raises(ValueError, match="missing"):
        StackedCaptionModels([{"image_proj.weight": torch.zeros(1)}])
    with pytest.raises(ValueError, match="at least one sample"):
        StackedCaptionModels([])
    with pytest.raises(ValueError, match="beam >= 1"):
        beam_search(StackedCaptionModels([model.state_dict()]), torch.randn(1, FEAT), beam=0)


def test_decoding_under_autocast_stays_in_the_weights_dtype():
    """A trainer under --precision bf16 decodes inside autocast: the averages must stay fp32."""
    models = make_models(2, scale=2.0)
    stacked = StackedCaptionModels([m.state_dict() for m in models])
    features = torch.randn(4, FEAT) * 2
    plain = beam_search(stacked, features, beam=3, max_len=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, probs = stacked.start(features)
        assert probs.dtype == torch.float32
        assert beam_search(stacked, features, beam=3, max_len=5) == plain


def test_non_finite_weights_are_named():
    (model,) = make_models(1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["output.weight"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        beam_search(StackedCaptionModels([state]), torch.randn(2, FEAT), beam=2, max_len=3)
