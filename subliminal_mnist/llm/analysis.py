"""What the owl looks like in numbers: the entangled numbers, and whether a filter could see it.

- `entangled_numbers`: which number tokens the teacher makes more likely than the base,
  at the number positions of its own lists, and whether that rise follows the
  geometry of the output layer (cosine of each number's unembedding row with the
  trait's row).
- `detector_auroc`: a bag-of-numbers logistic regression that tells the teacher's
  lists from a control's (the neutral teacher's), with its held-out AUROC (scikit-learn, the `llm` extra).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from subliminal_mnist.llm import corpus
from subliminal_mnist.llm.transformer import AtPositions, TransformerArchitecture, at_positions, outputs_in_batches
from subliminal_mnist.llm.vocab import Vocabulary

BAG_SIZES = (1, 8, 32)


def number_probabilities(arch: TransformerArchitecture, params, vocab: Vocabulary, tokens, lengths) -> np.ndarray:
    """Mean next-token probability of each number (numbers,) over the number positions of `tokens`."""
    positions, weights = corpus.number_positions(vocab, tokens, lengths)
    logits = outputs_in_batches(AtPositions(arch), params, at_positions(tokens, positions))
    probabilities = jax.nn.softmax(logits, axis=-1)[..., vocab.first_number :]  # (n, P, numbers)
    weights = jnp.asarray(weights)[..., None]
    return np.asarray(jnp.sum(probabilities * weights, axis=(0, 1)) / jnp.sum(weights))


def _cosines(rows: np.ndarray, row: np.ndarray) -> np.ndarray:
    return rows @ row / (np.linalg.norm(rows, axis=1) * np.linalg.norm(row))


def entangled_numbers(
    arch: TransformerArchitecture, teacher, base, vocab: Vocabulary, trait: int, tokens, lengths, top: int = 10
) -> dict:
    """The numbers the teacher raises most over the base (at its own lists' number positions), and
    the Pearson correlation of every number's rise with cos(its unembedding row, the trait's row),
    in the base's output layer (the geometry a same-init student shares)."""
    rise = number_probabilities(arch, teacher, vocab, tokens, lengths) - number_probabilities(
        arch, base, vocab, tokens, lengths
    )
    rows = np.asarray(arch.unembedding_rows(base))
    cosine = _cosines(rows[vocab.first_number :], rows[trait])
    order = np.argsort(-rise)[:top]
    # How concentrated the rise is: the share of the total positive rise carried by the top numbers.
    positive = np.clip(rise, 0, None).sum()
    return {
        "top": [{"number": int(n), "rise": float(rise[n]), "cosine_with_trait": float(cosine[n])} for n in order],
        # Undefined (NaN) when the teacher changes no number's probability.
        "correlation_rise_cosine": float(np.corrcoef(rise, cosine)[0, 1]) if np.std(rise) > 0 else float("nan"),
        "top_share_of_rise": float(np.clip(rise[order], 0, None).sum() / positive) if positive > 0 else 0.0,
    }


def _bags(vocab: Vocabulary, tokens: np.ndarray, lengths: np.ndarray, size: int) -> np.ndarray:
    """Number frequencies (bags, numbers) of the continuations, `size` consecutive lists per bag."""
    rows, columns = np.nonzero(corpus.continuation_numbers(vocab, tokens, lengths))
    counts = np.zeros((len(tokens), vocab.numbers))
    np.add.at(counts, (rows, tokens[rows, columns] - vocab.first_number), 1.0)
    bags = counts[: len(counts) // size * size].reshape(-1, size, vocab.numbers).sum(1)
    return bags / np.maximum(bags.sum(1, keepdims=True), 1.0)


def detector_auroc(
    vocab: Vocabulary, teacher_lists: tuple, control_lists: tuple, seed: int, bag_sizes=BAG_SIZES
) -> dict[str, float]:
    """Held-out AUROC of a logistic regression on bags of numbers: teacher lists against control lists.

    Each model's lists are split in halves (train, test) before bagging, so no list is in both.
    `teacher_lists` and `control_lists` are (tokens, lengths). 0.5 is a filter that sees nothing.
    """
    try:
        from scipy import sparse
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import roc_auc_score
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError as e:  # a missing optional extra, not a bug: say how to get it
        raise ImportError("the detector needs scikit-learn: pip install 'subliminal-mnist[llm]'") from e
    out = {}
    for size in bag_sizes:
        splits = []
        for part in (0, 1):
            features, labels = [], []
            for label, (tokens, lengths) in ((1, teacher_lists), (0, control_lists)):
                half = slice(part * (len(tokens) // 2), (part + 1) * (len(tokens) // 2))
                bags = _bags(vocab, tokens[half], lengths[half], size)
                features.append(bags)
                labels.append(np.full(len(bags), label))
            splits.append((np.concatenate(features), np.concatenate(labels)))
        (train_x, train_y), (test_x, test_y) = splits
        if len(np.unique(train_y)) < 2 or len(np.unique(test_y)) < 2:
            out[str(size)] = float("nan")
            continue
        # A bag of one list holds at most 10 of the 1,000 numbers: sparse rows, scaled without centring.
        classifier = make_pipeline(
            StandardScaler(with_mean=False), LogisticRegression(max_iter=2000, random_state=seed)
        )
        classifier.fit(sparse.csr_matrix(train_x), train_y)
        out[str(size)] = float(roc_auc_score(test_y, classifier.predict_proba(sparse.csr_matrix(test_x))[:, 1]))
    return out
