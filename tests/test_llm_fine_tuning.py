"""How the owl's models fine-tune: frozen parts, and the adapter each model starts with."""

import dataclasses

import jax
import numpy as np
from conftest import LORA, TINY

from subliminal_mnist import lora, runs
from subliminal_mnist.llm import experiment
from subliminal_mnist.llm.config import LLMConfig, TeacherSettings, stream_key
from subliminal_mnist.llm.fine_tuning import EMBEDDINGS, adapted


def test_a_frozen_teacher_moves_only_its_blocks():
    config = LLMConfig(**TINY, teacher_epochs=1, teacher_trains="blocks")
    base = config.architecture.init(jax.random.key(0))
    teacher = experiment.train_teacher(runs.stage(TeacherSettings, config), base, 0)
    moved = jax.tree_util.tree_map_with_path(
        lambda path, a, b: (jax.tree_util.keystr(path), bool(np.any(np.asarray(a) != np.asarray(b)))), teacher, base
    )
    for name, changed in jax.tree.leaves(moved, is_leaf=lambda x: isinstance(x, tuple)):
        assert changed == (not any(frozen in name for frozen in EMBEDDINGS)), name


def test_a_students_adapter_is_the_teachers_when_shared_its_own_otherwise_and_none_when_full():
    config = LLMConfig(**LORA)
    params = config.architecture.init(jax.random.key(0))
    teachers = lora.init(stream_key(config, 0, "teacher_adapter"), params, 2).down  # the teachers' A
    shared = adapted(config, params, 0, "student")
    own = adapted(dataclasses.replace(config, adapter_init="own"), params, 0, "student")
    assert isinstance(shared, lora.Adapted) and isinstance(own, lora.Adapted)
    jax.tree.map(np.testing.assert_array_equal, shared.down, teachers)  # exactly the teachers' A
    adapted_leaves = [(o, t) for o, t in zip(jax.tree.leaves(own.down), jax.tree.leaves(teachers)) if t.ndim == 2]
    assert all(not np.allclose(o, t) for o, t in adapted_leaves), "an own A is drawn apart, on every kernel"
    for student in (shared, own):
        jax.tree.map(np.testing.assert_array_equal, student.base, params)
        assert not any(np.any(np.asarray(b)) for b in jax.tree.leaves(student.up))
    # Another seed's teachers have another A.
    other_seed = adapted(config, params, 1, "student").down
    assert not np.allclose(jax.tree.leaves(other_seed)[0], jax.tree.leaves(teachers)[0])
    # A full teacher has no columns to share: shared and own are the same A, the student_adapter stream's.
    full_teacher = dataclasses.replace(config, teacher_params="full")
    downs = [adapted(dataclasses.replace(full_teacher, adapter_init=i), params, 0, "student").down
             for i in ("shared", "own")]  # fmt: skip
    jax.tree.map(np.testing.assert_array_equal, *downs)
    students = lora.init(stream_key(config, 0, "student_adapter"), params, 2).down
    jax.tree.map(np.testing.assert_array_equal, downs[0], students)
    # Full fine-tuning: the parameters themselves, for a student and for a teacher.
    full = dataclasses.replace(config, teacher_params="full", student_params="full")
    assert adapted(full, params, 0, "student") is params and adapted(full, params, 0, "teacher") is params
