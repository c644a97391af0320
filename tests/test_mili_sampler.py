"""``Sampler``: MILI's sampling functions over numpy logits, drawn
by the core's sampler."""

import numpy as np
import pytest

from ferrolm.mili import Sampler


def test_the_mili_example_runs_as_written():
    logits = np.random.randn(1, 150000)
    tokens = Sampler.top_k_top_p_sampling(logits, temperature=0.7, top_k=50, top_p=0.95)
    top50 = np.argsort(logits[0])[-50:]
    assert tokens.shape == (1,) and tokens[0] in top50
    tokens = Sampler.greedy_sampling(logits)
    assert tokens.tolist() == [int(np.argmax(logits[0]))]


def test_greedy_is_argmax_per_row_and_first_on_ties():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 300)).astype(np.float32)
    logits[2, [7, 9]] = 10.0
    assert Sampler.greedy_sampling(logits).tolist() == logits.argmax(-1).tolist()
    assert Sampler.greedy_sampling(logits[0]).shape == (), "one row gives one id"
    assert Sampler.temperature_sampling(logits, temperature=0.0).tolist() == logits.argmax(-1).tolist()
    assert Sampler.top_k_top_p_sampling(logits, top_k=1).tolist() == logits.argmax(-1).tolist()


def test_seeded_draws_are_reproducible_and_rows_independent():
    logits = np.zeros((64, 50), dtype=np.float32)
    a = Sampler.temperature_sampling(logits, seed=7)
    assert a.tolist() == Sampler.temperature_sampling(logits, seed=7).tolist()
    assert len(set(a.tolist())) > 20, "each row draws from its own stream"


def _frequencies(logits, n, **knobs):
    rows = np.repeat(logits[None, :], n, axis=0)
    draws = np.concatenate([Sampler.top_k_top_p_sampling(rows, seed=s, **knobs) for s in range(4)])
    return np.bincount(draws, minlength=logits.size) / draws.size


def test_draws_follow_the_filtered_distribution():
    logits = np.log(np.array([0.4, 0.3, 0.15, 0.1, 0.05], dtype=np.float32))
    n = 2500  # x4 seeds: 10,000 draws, so each frequency is within ~5 standard errors of 0.025
    # temperature 1, top_k 3: renormalised [0.4, 0.3, 0.15] / 0.85
    freq = _frequencies(logits, n, temperature=1.0, top_k=3, top_p=1.0)
    expected = np.array([0.4, 0.3, 0.15, 0, 0]) / 0.85
    assert np.abs(freq - expected).max() < 0.025, freq
    # top_p 0.65 keeps the smallest set reaching 0.65: tokens 0 and 1
    freq = _frequencies(logits, n, temperature=1.0, top_k=0, top_p=0.65)
    expected = np.array([0.4, 0.3, 0, 0, 0]) / 0.7
    assert np.abs(freq - expected).max() < 0.025, freq
    # temperature 0.5 squares the odds: p^2 / sum p^2
    freq = _frequencies(logits, n, temperature=0.5, top_k=0, top_p=1.0)
    p = np.exp(logits.astype(np.float64)) ** 2
    assert np.abs(freq - p / p.sum()).max() < 0.025, freq


@pytest.mark.parametrize("logits, knobs, match", [
    (np.zeros((2, 3, 4)), {}, "logits must be"),
    (np.zeros((1, 0)), {}, "logits must be"),
    (np.array([["a", "b"]]), {}, "logits must be"),
    (np.array([[0.0, np.nan]]), {}, "NaN"),
    (np.zeros((1, 4)), {"temperature": -1.0}, "temperature"),
    (np.zeros((1, 4)), {"top_p": 0.0}, "top_p"),
    (np.zeros((1, 4)), {"top_k": -2}, "top_k"),
])
def test_bad_input_raises_value_error(logits, knobs, match):
    with pytest.raises(ValueError, match=match):
        Sampler.top_k_top_p_sampling(logits, **knobs)
