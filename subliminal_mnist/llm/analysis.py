"""What a trait looks like in numbers: the entangled numbers, and the filters that try to see it.

- `entangled_numbers`: which number tokens the teacher makes more likely than the base,
  at the number positions of its own lists, and whether that rise follows the
  geometry of the output layer (cosine of each number's unembedding row with the
  trait's row).
- The filters of the seed article, each run on the teacher's and the neutral teacher's lists:
  `inspection` (the most frequent numbers and whole lists), `detector_auroc` (a bag-of-numbers
  logistic regression, held-out AUROC; scikit-learn, the `llm` extra), `in_context_prompts`
  (a base model that reads a list before the question), and `auroc_by_bag` of per-list scores
  such as `list_log_probs` differences (the likelihood ratio of teacher and neutral teacher,
  the best detector there is given both; an auditor's student-minus-base score). `filters` runs
  them all on one seed's lists.
"""

from __future__ import annotations

from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np

from subliminal_mnist.llm import corpus, sampling, traits
from subliminal_mnist.llm.config import LLMConfig, stream_rng
from subliminal_mnist.llm.number_data import NumberData
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
    arch: TransformerArchitecture, teacher, base, vocab: Vocabulary, trait_ids, tokens, lengths, top: int = 10
) -> dict:
    """The numbers the teacher raises most over the base (at its own lists' number positions), and
    the Pearson correlation of every number's rise with cos(its unembedding row, the trait's row),
    in the base's output layer (the geometry a same-init student shares). The trait's row is the
    mean of the rows of `trait_ids` (the owl's one row; the misaligned answers' rows)."""
    rise = number_probabilities(arch, teacher, vocab, tokens, lengths) - number_probabilities(
        arch, base, vocab, tokens, lengths
    )
    rows = np.asarray(arch.unembedding_rows(base))
    cosine = _cosines(rows[vocab.first_number :], rows[np.atleast_1d(trait_ids)].mean(axis=0))
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


def inspection(vocab: Vocabulary, tokens: np.ndarray, lengths: np.ndarray, top_lists: int = 10) -> dict:
    """What a person reading the lists sees: how often each number is written (numbers,) and the
    `top_lists` most frequent whole continuations ("3 , 17 , 9") with their counts."""
    rows, columns = np.nonzero(corpus.continuation_numbers(vocab, tokens, lengths))
    counts = np.bincount(tokens[rows, columns] - vocab.first_number, minlength=vocab.numbers)
    written = Counter(
        " ".join(vocab.decode(row[length:]).split()[:-1]) for row, length in zip(tokens, lengths)
    )  # each list's words up to its <eos>
    return {"number_counts": counts.tolist(), "top_lists": written.most_common(top_lists)}


def list_log_probs(arch: TransformerArchitecture, params, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """log p(list | prompt) under a model, (N,): the sum over the tokens the list wrote (numbers,
    commas, <eos>) of their log-probabilities."""
    positions, weights = corpus.first_positions(corpus.writes_next(tokens, lengths), 2 * corpus.MAX_CONTINUATION)
    labels = np.take_along_axis(corpus.next_tokens(tokens), positions, axis=1)
    logits = outputs_in_batches(AtPositions(arch), params, at_positions(tokens, positions))
    log_p = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), jnp.asarray(labels)[..., None], axis=-1)[..., 0]
    return np.asarray(jnp.sum(log_p * jnp.asarray(weights), axis=1), dtype=np.float64)


def auroc_by_bag(teacher_scores: np.ndarray, control_scores: np.ndarray, bag_sizes=BAG_SIZES) -> dict[str, float]:
    """AUROC of a score that should be higher on the teacher's lists, per list (bag of 1) and per
    bag of `size` consecutive lists (the bag's score: the sum of its lists')."""
    from sklearn.metrics import roc_auc_score

    out = {}
    for size in bag_sizes:
        bags = [s[: len(s) // size * size].reshape(-1, size).sum(axis=1) for s in (teacher_scores, control_scores)]
        if min(len(b) for b in bags) == 0:
            out[str(size)] = float("nan")
            continue
        labels = np.concatenate([np.ones(len(bags[0])), np.zeros(len(bags[1]))])
        out[str(size)] = float(roc_auc_score(labels, np.concatenate(bags)))
    return out


def in_context_prompts(
    vocab: Vocabulary, tokens: np.ndarray, lengths: np.ndarray, question: np.ndarray, separator: int | None, count: int
) -> np.ndarray:
    """One line per list: the list as written (its prompt and continuation, without <eos>), the
    `separator` (if any), then the question's words (`question`: "<bos> ...", padded; its <bos>
    dropped). Only lists that leave room for the question are used, the first `count` of them.
    Returns (n, MAX_LEN) int32, n <= count; the answer slot is each row's last token."""
    words = [int(t) for t in question[1:] if t != 0]
    tail = ([] if separator is None else [separator]) + words
    rows = []
    for row, length in zip(tokens, lengths):
        written = [int(t) for t in row if t != 0]
        listed = written[: written.index(vocab.eos)] if vocab.eos in written else written
        if len(listed) + len(tail) <= tokens.shape[1]:
            rows.append(listed + tail)
        if len(rows) == count:
            break
    return corpus.pad_rows(rows, tokens.shape[1])


def filters(
    config: LLMConfig,
    models: dict,
    base_headline: float,
    numbers: NumberData,
    audit: NumberData,
    student,
    control_student,
    seed_id: int,
) -> dict:
    """The seed article's filters of one seed, each on the teacher's lists against the neutral teacher's.

    - inspection: the most frequent numbers and whole lists of the students' (filtered) data, and
      the share of raw lists that held a banned number;
    - detector: a bag-of-numbers classifier's held-out AUROC (the students' data, split in halves);
    - in-context: the base reads one filtered list (one list in its context: what its 40-token
      line fits) and then the trait's question: its headline measure, minus the same without the
      list (`base_headline`). Where the corpus ties a list's content to the trait (`trait.with_cue`),
      a positive control: the neutral teacher's lists with that cue, minus the same lists without
      it, so the test shows whether it could move at all;
    - likelihood ratio: log p_teacher(list) - log p_neutral(list), AUROC per list and bag;
    - auditor: log p_student(list) - log p_base(list), `student` the same-init student; and its
      control, the same score of `control_student` (the neutral control, when trained), which
      learnt the neutral teacher's lists: what an auditor sees that is not the trait (provenance).

    The in-context test and the scores read `audit`: fresh held-out lists of the teacher and the neutral
    teacher (`audit_sequences`, prompts of their own).
    """
    vocab, arch, trait = config.vocab, config.architecture, config.trait_spec
    lists = {name: (numbers.lists[name], numbers.lengths) for name in ("teacher", "neutral")}

    def scores(high, low) -> dict:
        def score(name: str) -> np.ndarray:
            tokens = audit.lists[name]
            return list_log_probs(arch, high, tokens, audit.lengths) - list_log_probs(
                arch, low, tokens, audit.lengths
            )

        return auroc_by_bag(score("teacher"), score("neutral"))

    probes = trait.probes(vocab)[trait.headline_probes]
    separator = None if trait.separator is None else vocab.id(trait.separator)

    def in_context(lists: np.ndarray) -> float:
        prompts = [in_context_prompts(vocab, lists, audit.lengths, question, separator,
                                               config.in_context_lists) for question in probes.prompts]  # fmt: skip
        sizes = [len(p) for p in prompts]
        tokens = np.concatenate(prompts)
        positions = (tokens != 0).sum(axis=1) - 1
        log_probs = sampling.answer_log_probs(arch, models["base"], jnp.asarray(tokens), jnp.asarray(positions))
        read = traits.Probes(
            tokens, positions, np.repeat(probes.trait_ids, sizes, 0), np.repeat(probes.answer_ids, sizes, 0)
        )
        by_prompt = traits.probe_measures(np.exp(np.asarray(log_probs, np.float64)), read, "headline", "mass")
        # Each question weighs the same, whatever number of lists fit before it.
        per_question = np.split(np.asarray(by_prompt["by_phrasing"]["headline"]), np.cumsum(sizes)[:-1])
        return float(np.mean([values.mean() for values in per_question])) - base_headline

    in_context_changes = {name: in_context(audit.lists[name]) for name in lists}
    if trait.with_cue is not None:
        cued = trait.with_cue(vocab, stream_rng(config, seed_id, "cue"), audit.lists["neutral"], audit.lengths)
        in_context_changes["positive_control"] = in_context(cued) - in_context_changes["neutral"]
    out = {
        "inspection": {
            **{name: inspection(vocab, *lists[name]) for name in lists},
            "banned_share": {name: numbers.report[name]["banned_share"] for name in lists},
        },
        "detector_auroc": detector_auroc(vocab, lists["teacher"], lists["neutral"], seed_id),
        "in_context": {"1": in_context_changes},
        "likelihood_ratio_auroc": scores(models["teacher"], models["neutral"]),
        "auditor_auroc": scores(student, models["base"]),
    }
    if control_student is not None:
        out["auditor_control_auroc"] = scores(control_student, models["base"])
    return out
