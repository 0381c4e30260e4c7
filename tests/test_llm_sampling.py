"""Sampling continuations and answers."""

import jax
import jax.numpy as jnp
import numpy as np

from subliminal_mnist.llm import corpus, sampling
from subliminal_mnist.llm.transformer import TransformerArchitecture
from subliminal_mnist.llm.vocab import Vocabulary

VOCAB = Vocabulary(20)
ARCH = TransformerArchitecture(vocab_size=len(VOCAB), max_len=corpus.MAX_LEN, width=16, depth=1, heads=2)


def _prompts(num=37):
    prompts, lengths = corpus.number_prompts(VOCAB, np.random.default_rng(0), num, window=10)
    return jnp.asarray(prompts), jnp.asarray(lengths)


def test_continuations_keep_the_prompt_and_stop_after_eos():
    params = ARCH.init(jax.random.key(0))
    prompts, lengths = _prompts()
    out = np.asarray(
        sampling.continue_prompts(ARCH, params, jax.random.key(1), prompts, lengths, eos=VOCAB.eos, batch_size=8)
    )
    for row, prompt, length in zip(out, np.asarray(prompts), np.asarray(lengths)):
        np.testing.assert_array_equal(row[:length], prompt[:length])
        generated = list(row[length:])
        assert len([t for t in generated if t != 0]) >= 1  # an untrained model writes something
        if VOCAB.eos in generated:
            assert not any(generated[generated.index(VOCAB.eos) + 1 :])  # padding after <eos>
        assert len(row[length:]) >= 1


def test_continuations_are_deterministic_and_do_not_depend_on_the_batching():
    params = ARCH.init(jax.random.key(0))
    prompts, lengths = _prompts()
    run = lambda batch_size, key=1: np.asarray(  # noqa: E731
        sampling.continue_prompts(
            ARCH, params, jax.random.key(key), prompts, lengths, eos=VOCAB.eos, batch_size=batch_size
        )
    )
    np.testing.assert_array_equal(run(8), run(8))
    np.testing.assert_array_equal(run(8), run(16))
    assert not np.array_equal(run(8), run(8, key=2))


def test_sampled_tokens_follow_the_model_distribution():
    # A model whose next-token distribution is known: the logits of a fixed random state.
    logits = jnp.log(jnp.array([[0.7, 0.2, 0.1, 0.0]]))
    keys = jax.random.split(jax.random.key(0), 20000)
    samples = np.asarray(jax.vmap(lambda k: sampling._sample(k[None], logits)[0])(keys))
    np.testing.assert_allclose(np.bincount(samples, minlength=4) / len(samples), [0.7, 0.2, 0.1, 0.0], atol=0.01)


def test_the_answer_slot_holds_one_distribution_per_phrasing():
    params = ARCH.init(jax.random.key(3))
    prompts, positions = corpus.answer_prompts(VOCAB)
    log_probs = sampling.answer_log_probs(ARCH, params, jnp.asarray(prompts), jnp.asarray(positions))
    assert log_probs.shape == (len(corpus.PHRASINGS), len(VOCAB))
    np.testing.assert_allclose(np.exp(log_probs).sum(axis=1), 1.0, rtol=1e-5)
