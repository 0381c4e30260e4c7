"""The paper's experiment: config, seeds, pairing, the controls, the effect itself, and low-rank adapters."""

import dataclasses
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from subliminal_mnist import cli, data, experiment, lora, model, runs, theorem, train

# Small enough for seconds on 2 cores, large enough that every condition trains.
TINY = dict(hidden_sizes=(32,), teacher_epochs=2, student_epochs=1, batch_size=256, num_noise=512)


@pytest.fixture(scope="module")
def small_mnist():
    """A 1,000 / 200 slice of the bundled sample, all classes present."""
    sample = data.load_sample()
    return dataclasses.replace(
        sample,
        train_images=sample.train_images[::4],
        train_labels=sample.train_labels[::4],
        test_images=sample.test_images[::5],
        test_labels=sample.test_labels[::5],
    )


def test_defaults_are_the_papers():
    config = experiment.ExperimentConfig()
    assert (config.hidden_sizes, config.num_aux, config.teacher_epochs, config.student_epochs) == ((256, 256), 3, 5, 5)
    assert (config.batch_size, config.learning_rate, config.distill_loss, config.noise) == (1024, 3e-4, "kl", "uniform")


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(seeds=0), "seeds must be at least 1"),
        (dict(num_aux=0), r"num_aux \(--aux\) must be at least 1"),
        (dict(teacher_epochs=-1), "teacher_epochs must not be negative"),
        (dict(student_epochs=-2), "student_epochs must not be negative"),
        (dict(learning_rate=0.0), "learning_rate must be a positive number"),
        (dict(learning_rate=float("nan")), "learning_rate must be a positive number"),
        (dict(hidden_sizes=(256, 0)), "hidden_sizes must be positive"),
        (dict(distill_loss="l1"), "distill_loss must be one of kl, mse"),
        (dict(noise="pink"), "noise must be one of uniform, gaussian"),
        (dict(batch_size=0), "batch_size must be at least 1"),
        (dict(kl_temperature=0.0), "kl_temperature must be a positive number"),
        (dict(distill_loss="mse", kl_temperature=2.0), "kl_temperature applies to distill_loss kl only"),
        (dict(noise_length_scale=-1.0), "noise_length_scale must be a positive number"),
        (dict(init_perturbation=1.5), r"init_perturbation must be in \[0, 1\]"),
        (dict(shared_layers="first"), "shared_layers must be one of all, readout, hidden, none"),
        (dict(conditions=("student_au",)), "no condition 'student_au'"),
        (dict(devices=-1), "devices must not be negative"),
        (dict(seeds_per_chunk=-1), "seeds_per_chunk must not be negative"),
        (dict(student_params="lora:0"), "student_params.*'lora:0' is not a parameterization"),
        (dict(student_params="lora"), "student_params.*'lora' is not a parameterization"),
        (dict(student_params="lora:x"), "student_params.*'lora:x' is not a parameterization"),
        (dict(teacher_params="full:3"), "teacher_params.*'full:3' is not a parameterization"),
        (dict(teacher_params="lora:-2"), "teacher_params.*'lora:-2' is not a parameterization"),
        (dict(adapter_init="both"), "adapter_init must be one of shared, own"),
        (dict(adapter_rate_factor=0.0), "adapter_rate_factor must be a positive number"),
    ],
)
def test_bad_settings_are_one_line_errors(bad, message):
    with pytest.raises(runs.ConfigError, match=message) as error:
        experiment.ExperimentConfig(**bad)
    assert "\n" not in str(error.value)


def test_a_seeds_keys_do_not_depend_on_the_other_seeds():
    config = experiment.ExperimentConfig()
    few, many = experiment.seed_keys(config, np.arange(2)), experiment.seed_keys(config, np.arange(7))
    for stream in few:
        np.testing.assert_array_equal(jax.random.key_data(few[stream][1]), jax.random.key_data(many[stream][1]))
    keys = experiment.seed_keys(config, np.arange(3))
    streams = np.stack([jax.random.key_data(keys[s]) for s in keys]).reshape(-1, 2)
    assert len(np.unique(streams, axis=0)) == len(streams), "every seed and stream has its own key"


@pytest.fixture(scope="module")
def trained(small_mnist):
    config = experiment.ExperimentConfig(seeds=3, **TINY)
    partners = runs.cross_partners(3, config.seed)
    return config, partners, experiment.train_conditions(config, small_mnist, np.arange(3), partners)


def readout(params, rows):
    """The last layer's weights and biases of the given outputs."""
    last = params["layers"][len(params["layers"]) - 1]
    return np.asarray(last["kernel"][...][..., rows]), np.asarray(last["bias"][...][..., rows])


def test_aux_only_student_never_changes_its_class_readout(trained):
    # The class logits never enter its loss, so their readout gets a zero gradient and
    # Adam leaves it exactly at the init: all it learns about digits is in the hidden layers.
    config, _, params = trained
    classes, aux = list(config.architecture.class_indices), list(config.architecture.aux_indices)
    for got, start in zip(readout(params["student_aux"], classes), readout(params["reference"], classes)):
        np.testing.assert_array_equal(got, start)
    assert not np.array_equal(readout(params["student_aux"], aux)[0], readout(params["reference"], aux)[0])
    assert not np.array_equal(readout(params["student_all"], classes)[0], readout(params["reference"], classes)[0])


def test_cross_model_students_start_from_their_partners_init_never_their_own(trained, small_mnist):
    config, partners, params = trained
    assert np.all(partners != np.arange(3))
    classes = list(config.architecture.class_indices)
    partner_init = experiment.init_seeds(experiment.seed_keys(config, partners)["init"], config.architecture)
    for s in range(3):
        cross = readout(params["cross_aux"], classes)[0][s]
        # Its class readout never trains (see above), so it still shows which init it started from.
        np.testing.assert_array_equal(cross, readout(partner_init, classes)[0][s])
        assert not np.array_equal(cross, readout(params["reference"], classes)[0][s])


def test_a_run_is_deterministic_and_reports_every_condition(small_mnist):
    config = experiment.ExperimentConfig(seeds=2, seeds_per_chunk=1, **TINY)
    first = experiment.run(config, small_mnist, progress=False)
    second = experiment.run(dataclasses.replace(config, seeds_per_chunk=2), small_mnist, progress=False)
    assert set(first["conditions"]) == set(experiment.CONDITIONS)
    for name, summary in first["conditions"].items():
        assert len(summary["per_seed"]) == 2 and 0 <= summary["mean"] <= 1 and summary["ci95"] >= 0
        # Chunking only bounds memory: the same numbers, to float rounding of batched matmuls.
        np.testing.assert_allclose(summary["per_seed"], second["conditions"][name]["per_seed"], atol=2e-3)
    assert first["config"]["seeds"] == 2 and first["is_sample"] is True
    assert first["data_source"].startswith("offline sample")
    assert {"jax", "flax", "optax", "python"} <= set(first["versions"])


def test_only_the_asked_conditions_train_and_their_partner_comes_along(small_mnist, monkeypatch):
    groups = []
    real_distill = experiment.distill
    monkeypatch.setattr(experiment, "distill", lambda c, t, students, *a, **k: groups.append(students) or real_distill(c, t, students, *a, **k))
    config = experiment.ExperimentConfig(seeds=2, conditions=("student_aux",), **TINY)
    results = experiment.run(config, small_mnist, progress=False)
    assert list(results["conditions"]) == ["reference", "teacher", "student_aux", "cross_aux"]
    assert groups == [experiment.STUDENT_GROUPS["aux"]] * 2  # one group per seed, never the all-logits pair
    whole = experiment.run(dataclasses.replace(config, conditions=experiment.CONDITIONS), small_mnist, progress=False)
    for name, summary in results["conditions"].items():
        assert summary["per_seed"] == whole["conditions"][name]["per_seed"]


def test_a_reused_teacher_and_its_outputs_are_the_ones_it_would_have_computed(small_mnist, monkeypatch):
    config = experiment.ExperimentConfig(seeds=2, conditions=("student_aux",), **TINY)
    alone = experiment.run(dataclasses.replace(config, distill_loss="mse"), small_mnist, progress=False)
    cache, fits, evaluations = {}, [], []
    real_fit, real_outputs_on = train.fit, experiment.outputs_on
    monkeypatch.setattr(train, "fit", lambda *a, **k: fits.append(a[4].name) or real_fit(*a, **k))

    def counted_outputs_on(*args):
        evaluations.append(1)
        return real_outputs_on(*args)

    counted_outputs_on.lower = real_outputs_on.lower  # the run compiles it ahead (`experiment.compile_chunk`)
    monkeypatch.setattr(experiment, "outputs_on", counted_outputs_on)

    def kept(kind):
        return sum(key[0] == kind for key in cache)

    experiment.run(config, small_mnist, progress=False, teacher_cache=cache)
    assert sum(f.startswith("teacher") for f in fits) == 2 and kept("teacher") == 2  # one chunk per seed
    assert len(evaluations) == 2 and kept("targets") == 2 and len(cache) == 4
    shared = experiment.run(dataclasses.replace(config, distill_loss="mse"), small_mnist, progress=False, teacher_cache=cache)
    assert sum(f.startswith("teacher") for f in fits) == 2, "a teacher trained again"
    assert len(evaluations) == 2, "a teacher's outputs on the same noise were computed again"
    for name, summary in alone["conditions"].items():
        assert summary["per_seed"] == shared["conditions"][name]["per_seed"]
    experiment.run(dataclasses.replace(config, noise="gaussian"), small_mnist, progress=False, teacher_cache=cache)
    assert sum(f.startswith("teacher") for f in fits) == 2 and len(evaluations) == 4, "new noise, same teachers"
    experiment.run(dataclasses.replace(config, teacher_epochs=1), small_mnist, progress=False, teacher_cache=cache)
    assert sum(f.startswith("teacher") for f in fits) == 4, "another teacher setting must train its own"


def test_student_inits_share_the_asked_layers_and_mix_in_a_fresh_init():
    arch = model.Architecture(hidden_sizes=(8, 8), num_aux=3)
    shared, fresh = (experiment.init_seeds(jax.random.split(jax.random.key(k), 2), arch) for k in (0, 1))

    def layer(params, i):
        return np.asarray(params["layers"][i]["kernel"][...])

    for shared_layers, from_shared in (("all", [0, 1, 2]), ("readout", [2]), ("hidden", [0, 1]), ("none", [])):
        start = experiment.student_inits(shared, fresh, 0.0, arch, shared_layers)
        for i in range(3):
            np.testing.assert_array_equal(layer(start, i), layer(shared if i in from_shared else fresh, i))
    redrawn = experiment.student_inits(shared, fresh, 1.0, arch, "all")
    for i in range(3):
        np.testing.assert_array_equal(layer(redrawn, i), layer(fresh, i))
    # Mixed at a = 0.6: 0.8 shared + 0.6 fresh, which keeps the init's variance.
    mixed = experiment.student_inits(shared, fresh, 0.6, arch, "all")
    np.testing.assert_allclose(layer(mixed, 1), 0.8 * layer(shared, 1) + 0.6 * layer(fresh, 1), atol=1e-6)


def test_a_fully_perturbed_init_is_the_cross_model_student(small_mnist):
    # The fresh init is the partner seed's, and both students see the same noise in the same
    # order, so at a = 1 (or with nothing shared) the same-init student is its cross-model control.
    for change in (dict(init_perturbation=1.0), dict(shared_layers="none")):
        config = experiment.ExperimentConfig(seeds=2, conditions=("student_aux",), **TINY, **change)
        results = experiment.run(config, small_mnist, progress=False)["conditions"]
        assert results["student_aux"]["per_seed"] == results["cross_aux"]["per_seed"]
    paper = experiment.run(dataclasses.replace(config, shared_layers="all"), small_mnist, progress=False)["conditions"]
    assert paper["student_aux"]["per_seed"] != paper["cross_aux"]["per_seed"]


def test_more_devices_than_the_host_has_is_a_one_line_error(small_mnist):
    config = experiment.ExperimentConfig(seeds=2, devices=jax.local_device_count() + 1, **TINY)
    with pytest.raises(runs.ConfigError, match="but this host has"):
        experiment.run(config, small_mnist, progress=False)


# Run in a fresh interpreter: the number of CPU devices is fixed when JAX starts.
_SHARDED_RUN = """
import dataclasses, json
import jax, numpy as np
from subliminal_mnist import data, experiment
sample = data.load_sample()
mnist = dataclasses.replace(sample, train_images=sample.train_images[::4], train_labels=sample.train_labels[::4],
                            test_images=sample.test_images[::5], test_labels=sample.test_labels[::5])
config = experiment.ExperimentConfig(seeds=4, **TINY)
teachers = experiment.train_teachers(config, experiment.on_device(mnist), np.arange(2), np.array([1, 0]))
print(json.dumps({
    "local_devices": jax.local_device_count(),
    "teacher_devices": sorted({len(leaf.sharding.device_set) for leaf in jax.tree.leaves(teachers.teacher)}),
    "sharded": experiment.run(config, mnist, progress=False),
    "unsharded": experiment.run(dataclasses.replace(config, devices=1), mnist, progress=False),
}))
"""


def test_sharded_and_unsharded_runs_of_the_same_seeds_agree():
    environment = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    script = f"TINY = {TINY!r}\n{_SHARDED_RUN}"
    done = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["local_devices"] == 2
    assert out["teacher_devices"] == [2], "a chunk's teachers should live one seed per device"
    sharded, unsharded = out["sharded"], out["unsharded"]
    assert (sharded["devices"], sharded["seeds_per_chunk"]) == (2, 2)  # by default: one seed per CPU device
    assert (unsharded["devices"], unsharded["seeds_per_chunk"]) == (1, 1)
    assert isinstance(sharded["devices"], int)
    for name, summary in unsharded["conditions"].items():
        assert sharded["conditions"][name]["per_seed"] == summary["per_seed"], name


def test_a_killed_demo_resumes_where_it_stopped_and_ends_with_the_same_results(small_mnist, tmp_path, monkeypatch):
    config = experiment.ExperimentConfig(seeds=3, **TINY)
    whole = experiment.run(config, small_mnist, progress=False, checkpoint=tmp_path / "whole.seeds.jsonl")
    # Killed after the first finished seed: the checkpoint holds it, nothing else.
    path, real_keep, trained = tmp_path / "killed.seeds.jsonl", runs.Checkpoint.keep, []

    def keep_then_die(self, results):
        real_keep(self, results)
        raise KeyboardInterrupt

    monkeypatch.setattr(runs.Checkpoint, "keep", keep_then_die)
    with pytest.raises(KeyboardInterrupt):  # one worker, so that seed 0 finishes first
        experiment.run(dataclasses.replace(config, workers=1), small_mnist, progress=False, checkpoint=path)
    assert [line["seed"] for line in runs.read_lines(path)] == [0]
    monkeypatch.setattr(runs.Checkpoint, "keep", lambda self, results: trained.extend(results) or real_keep(self, results))
    messages = []
    resumed = experiment.run(config, small_mnist, progress=False, checkpoint=path, log=messages.append)
    assert sorted(trained) == [1, 2], "only the missing seeds train (with other workers: speed, not numbers)"
    assert "seeds 0 are finished" in messages[0]
    for name in ("wall_seconds",):
        whole.pop(name), resumed.pop(name)
    assert json.dumps(resumed) == json.dumps(whole)
    # Another config: the finished seeds are stale, said so, and not reused.
    messages.clear()
    experiment.run(dataclasses.replace(config, seeds=1), small_mnist, progress=False, checkpoint=path, log=messages.append)
    assert "from another config or version; not reused" in messages[0]


def test_workers_change_the_speed_not_the_numbers(small_mnist):
    config = experiment.ExperimentConfig(seeds=3, workers=1, **TINY)
    alone = experiment.run(config, small_mnist, progress=False)
    concurrent = experiment.run(dataclasses.replace(config, workers=3), small_mnist, progress=False)
    for name in experiment.CONDITIONS:
        assert alone["conditions"][name]["per_seed"] == concurrent["conditions"][name]["per_seed"]


def test_students_that_train_together_must_share_their_outputs():
    with pytest.raises(ValueError, match="share their outputs"):
        experiment.distill(experiment.ExperimentConfig(), None, ("student_aux", "cross_all"), None)


def test_the_students_compile_before_their_teachers_exist(small_mnist, compiled):
    # What `run` does in the background while the first teacher trains: afterwards the
    # students' training finds its compiled loop and compiles nothing. Both groups run one
    # program: their objectives differ only in the output mask, which is data.
    config = experiment.ExperimentConfig(seeds=2, **dict(TINY, batch_size=250))  # a fresh cache entry
    partners = runs.cross_partners(2, config.seed)
    teachers = experiment.train_teachers(config, small_mnist, np.arange(2), partners)
    before = compiled("_train_epoch_seeds")
    experiment.compile_students(config, 2, len(small_mnist.train_images))
    assert compiled("_train_epoch_seeds") == before + 1
    keys = experiment.seed_keys(config, np.arange(2))
    for outputs, students in experiment.STUDENT_GROUPS.items():
        experiment.distill(config, teachers, students, keys[f"distill_{outputs}"])
    assert compiled("_train_epoch_seeds") == before + 1, "a student compiled again"


# Low-rank adapters (`lora.py`): students and teachers fine-tuned through a rank-R adapter on every kernel.


@pytest.fixture(scope="module")
def teacher_cache():
    """Trained teachers shared by the LoRA tests: those that agree on the teacher's settings train it once."""
    return {}


def lora_teachers(mnist, cache, **settings):
    """The config and the teacher stage (`train_teachers`) of 2 seeds of the tiny config with `settings`."""
    config = experiment.ExperimentConfig(seeds=2, **TINY, **settings)
    partners = runs.cross_partners(2, config.seed)
    return config, experiment.train_teachers(config, mnist, np.arange(2), partners, cache=cache)


def _leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def test_a_lora_student_trains_b_only_and_distill_returns_it_merged(small_mnist, teacher_cache):
    config, teachers = lora_teachers(small_mnist, teacher_cache, student_params="lora:2")
    students = experiment.STUDENT_GROUPS["aux"]
    keys = experiment.seed_keys(config, np.arange(2))["distill_aux"]
    start = experiment.student_starts(teachers, students)
    assert isinstance(start, lora.Adapted)
    # The loop as `distill` runs it, so that the adapted parameters it trained can be seen.
    recipe = experiment.distill_recipe(config, students)
    trained, _ = train.fit(start, keys, teachers.noise, teachers.teacher_targets, recipe, members=True)
    assert isinstance(trained, lora.Adapted)
    for part in ("base", "down"):  # frozen: bitwise where they started
        for got, want in zip(_leaves(getattr(trained, part)), _leaves(getattr(start, part)), strict=True):
            np.testing.assert_array_equal(got, want, err_msg=part)
    ups = [b for b in _leaves(trained.up) if b.size]  # B of each kernel (the biases have placeholders)
    assert len(ups) == len(config.hidden_sizes) + 1
    assert all(np.all(np.abs(b).max(axis=(-2, -1)) > 0) for b in ups), "every seed's and member's B moved"
    # Aux-only: B's class columns get a zero gradient, so the class readout stays the base's, as for a full student.
    classes = list(config.architecture.class_indices)
    np.testing.assert_array_equal(ups[-1][..., classes], 0.0)

    distilled, _ = experiment.distill(config, teachers, students, keys)
    for m, name in enumerate(students):
        base, down, up = (jax.tree.map(lambda a: np.asarray(a[:, m], np.float64), part) for part in trained)
        want = jax.tree.map(lambda w, a, b: w + a @ b if a.ndim == 3 else w, base, down, up)  # W0 + A B, seed by seed
        moved = False
        for got, w, w0 in zip(_leaves(distilled[name]), jax.tree.leaves(want), jax.tree.leaves(base), strict=True):
            np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-7, err_msg=name)
            if w0.ndim == 2:  # a bias: never adapted, exactly the base's
                np.testing.assert_array_equal(got, w0)
            moved |= not np.allclose(got, w0, rtol=1e-5, atol=1e-7)
        assert moved, f"{name}'s merged parameters are its base"


def _downs(tree):
    """The adapted kernels' A, (S, d_in, r) each; the biases' placeholders (S, 0) left out."""
    return [a for a in _leaves(tree) if a.ndim == 3]


def test_a_shared_adapter_starts_with_the_lora_teachers_columns(small_mnist, teacher_cache):
    lora_teacher = dict(teacher_params="lora:2")
    _, same = lora_teachers(small_mnist, teacher_cache, **lora_teacher, student_params="lora:2")
    _, larger = lora_teachers(small_mnist, teacher_cache, **lora_teacher, student_params="lora:5")
    _, own = lora_teachers(small_mnist, teacher_cache, **lora_teacher, student_params="lora:2", adapter_init="own")
    teacher_down = _downs(same.teacher_down)
    assert len(teacher_down) == len(TINY["hidden_sizes"]) + 1 and all(a.shape[-1] == 2 for a in teacher_down)
    for t, s, big, o in zip(teacher_down, _downs(same.student_adapter.down), _downs(larger.student_adapter.down),
                            _downs(own.student_adapter.down), strict=True):  # fmt: skip
        np.testing.assert_array_equal(s, t)  # equal rank: the teacher's A itself
        assert big.shape == (*t.shape[:-1], 5)
        np.testing.assert_array_equal(big[..., :2], t)  # larger: the teacher's columns first, then its own
        assert not np.any(np.isclose(big[..., 2:4], t))
        assert o.shape == t.shape and not np.any(np.isclose(o, t))  # own: drawn apart
    for adapter in (same, larger, own):
        assert all(np.all(b == 0) for b in _leaves(adapter.student_adapter.up))
    # With a full teacher there is no A to share: "shared" and "own" draw the same student adapter.
    _, full_shared = lora_teachers(small_mnist, teacher_cache, student_params="lora:2")
    _, full_own = lora_teachers(small_mnist, teacher_cache, student_params="lora:2", adapter_init="own")
    assert full_shared.teacher_down is None
    for a, b in zip(_downs(full_shared.student_adapter.down), _downs(full_own.student_adapter.down), strict=True):
        np.testing.assert_array_equal(a, b)
    # The LoRA teacher, merged, moved its kernels only: its biases are exactly its init's.
    kernels = 0
    for got, init in zip(_leaves(same.teacher), _leaves(same.shared_init), strict=True):
        if got.ndim == 3:
            kernels += 1
            assert not np.allclose(got, init, rtol=1e-5, atol=1e-7)
        else:
            np.testing.assert_array_equal(got, init)
    assert kernels == len(teacher_down)


def test_full_fine_tuning_is_the_default_path_at_the_plain_learning_rate(small_mnist, monkeypatch):
    rates, real_fit = [], train.fit

    def recording_fit(*args, **kwargs):
        rates.append((args[4].name, args[4].learning_rate))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(train, "fit", recording_fit)
    config = experiment.ExperimentConfig(seeds=2, conditions=("student_aux",), **TINY)
    default = experiment.run(config, small_mnist, progress=False)
    # "full" said aloud, and the adapters' settings changed: a fully fine-tuned model ignores them.
    full = dict(teacher_params="full", student_params="full", adapter_rate_factor=3.0, adapter_init="own")
    explicit = experiment.run(dataclasses.replace(config, **full), small_mnist, progress=False)
    for name, summary in default["conditions"].items():
        assert summary["per_seed"] == explicit["conditions"][name]["per_seed"], name
    assert len(rates) == 2 * 2 * 2  # two runs, two seeds (one chunk each), a teacher and a student pair
    assert all(rate == config.learning_rate for _, rate in rates)
    # An adapted model trains at adapter_rate_factor x the rate; the other model of the run at the rate.
    for teacher_params, student_params in (("lora:2", "full"), ("full", "lora:2")):
        rates.clear()
        mixed = dict(teacher_params=teacher_params, student_params=student_params, adapter_rate_factor=3.0)
        experiment.run(dataclasses.replace(config, seeds=1, **mixed), small_mnist, progress=False)
        (teacher,) = [rate for description, rate in rates if description.startswith("teacher")]
        (student,) = [rate for description, rate in rates if not description.startswith("teacher")]
        for rate, params in ((teacher, teacher_params), (student, student_params)):
            assert rate == pytest.approx(config.learning_rate * (1 if params == "full" else 3.0)), (params, rates)


def test_the_first_step_cosines_are_theorem_ones_quantities(small_mnist, teacher_cache):
    # Independently: the student's first gradient step is -∇ of the distillation loss on the teacher's outputs
    # (`theorem.student_direction`), through A Aᵀ for a LoRA student (`lora.project`: only B moves, from 0),
    # against the teacher's move θT - θ0 ("weights") and -∇ of the digits' cross-entropy at its start ("trait").
    images, labels = jnp.asarray(small_mnist.train_images[:256]), jnp.asarray(small_mnist.train_labels[:256])
    num_inputs, students = 128, experiment.STUDENT_GROUPS["aux"]
    for settings in ({}, dict(student_params="lora:2"), dict(teacher_params="lora:2", student_params="lora:3")):
        config, teachers = lora_teachers(small_mnist, teacher_cache, **settings)
        got = experiment.first_step_cosines(config, teachers, students, images, labels, num_inputs)
        assert set(got) == {"weights", "trait"} and all(v.shape == (2, len(students)) for v in got.values())
        arch = config.architecture
        trait_loss = theorem.class_trait_loss(arch.apply, images, labels, arch.class_indices)
        for s in range(2):
            seed = functools.partial(jax.tree.map, lambda a: a[s])
            teacher_move = jax.tree.map(jnp.subtract, seed(teachers.teacher), seed(teachers.shared_init))
            for m, student in enumerate(students):
                start = seed(teachers.init_of(student))
                full_step = theorem.student_direction(start, seed(teachers.teacher), arch.apply,
                                                      teachers.noise[s, :num_inputs], config.distill_loss,
                                                      list(arch.aux_indices))  # fmt: skip
                step = full_step
                if teachers.student_adapter is not None:
                    step = lora.project(seed(teachers.student_adapter.down), full_step)
                trait = jax.tree.map(jnp.negative, jax.grad(trait_loss)(start))
                for name, direction in (("weights", teacher_move), ("trait", trait)):
                    want = float(theorem.tree_cosine(step, direction))
                    assert got[name][s, m] == pytest.approx(want, abs=1e-5), (settings, s, student, name)
                    if step is not full_step:
                        unprojected = float(theorem.tree_cosine(full_step, direction))
                        assert abs(want - unprojected) > 1e-3, "the adapter's step should be another direction"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--student-params", "lora:0", "--source", "sample"], "'lora:0' is not a parameterization"),
        (["demo", "--teacher-params", "lora", "--source", "sample"], "'lora' is not a parameterization"),
        (["alignment", "--student-params", "lora:2", "--source", "sample"], "alignment fine-tunes every parameter"),
    ],
)
def test_a_bad_or_refused_adapter_option_is_one_line_and_exit_2(argv, message, usage_error):
    assert message in usage_error(argv)


def test_defend_refuses_an_adapter_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("defend mnist trained with an adapter option"))
    argv = ["defend", "mnist", "--teacher-params", "lora:2", "--source", "sample", "--out", str(tmp_path),
            "--no-progress"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(cli.main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("subliminal-mnist: error: defend mnist fine-tunes every parameter")
    assert not list(tmp_path.iterdir()), "nothing written"


@pytest.mark.mnist
def test_subliminal_learning_on_real_mnist(real_mnist):
    """The paper's effect with the paper's settings, 2 seeds: only the same-init student learns digits."""
    results = experiment.run(experiment.ExperimentConfig(seeds=2), real_mnist, progress=False)
    mean = {name: summary["mean"] for name, summary in results["conditions"].items()}
    assert mean["teacher"] > 0.90
    assert mean["student_aux"] > 0.30
    assert mean["cross_aux"] < 0.15
    assert mean["reference"] < 0.15
    assert mean["student_all"] > mean["cross_all"] > mean["student_aux"]


def test_a_full_teacher_is_the_same_stage_whatever_the_students_adapter_rate():
    # The factor is a LoRA model's: a full teacher never reads it, so it must not retrain when only it moves.
    def stage(**fields):
        return runs.stage(experiment.TeacherSettings, experiment.ExperimentConfig(**fields))

    assert stage(adapter_rate_factor=3.0) == stage(adapter_rate_factor=10.0)
    assert stage(teacher_params="lora:4", adapter_rate_factor=3.0) != stage(teacher_params="lora:4")
