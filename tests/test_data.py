"""Tests for subliminal_mnist.data: IDX parsing and checks, sources, download, noise.

All tests but those marked `mnist` use small synthetic files and run offline in
seconds; the `mnist` ones need $SUBLIMINAL_MNIST_DIR (see conftest.py).
"""

from __future__ import annotations

import gzip
import hashlib
import pathlib
import struct
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pooch
import pytest
import requests

from subliminal_mnist import cli, data, runs

STANDARD_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encodes (n, rows, cols) images or (n,) labels as an IDX file."""
    magic = 0x00000803 if array.ndim == 3 else 0x00000801
    header = struct.pack(f">{1 + array.ndim}I", magic, *array.shape)
    return header + array.astype(np.uint8).tobytes()


def random_images(n: int, rows: int = 28, cols: int = 28, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, rows, cols), dtype=np.uint8)


def write_idx_dir(directory: pathlib.Path, n_train: int, n_test: int, gz: bool) -> None:
    """Writes four well-formed IDX files under the standard names (with .gz when `gz`)."""
    rng = np.random.default_rng(1)
    arrays = (
        random_images(n_train),
        rng.integers(0, 10, n_train, dtype=np.uint8),
        random_images(n_test),
        rng.integers(0, 10, n_test, dtype=np.uint8),
    )
    for name, array in zip(STANDARD_NAMES, arrays, strict=True):
        payload = idx_bytes(array)
        # mtime=0 keeps the archives byte-identical across runs.
        (directory / (name + ".gz" if gz else name)).write_bytes(gzip.compress(payload, mtime=0) if gz else payload)


# --- read_idx -------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["images", "images.gz", "renamed.bin"])
def test_read_idx_round_trips_images_and_labels(tmp_path, gz, name):
    images = random_images(5)
    labels = np.arange(10, dtype=np.uint8)
    for array, path in ((images, tmp_path / name), (labels, tmp_path / f"labels-{name}")):
        payload = idx_bytes(array)
        path.write_bytes(gzip.compress(payload) if gz else payload)
        result = data.read_idx(path)
        assert result.dtype == np.uint8
        np.testing.assert_array_equal(result, array)


def test_read_idx_accepts_an_empty_set(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.zeros(0, np.uint8)))
    assert data.read_idx(path).shape == (0,)


_LABELS = idx_bytes(np.arange(10, dtype=np.uint8))
_IMAGES = idx_bytes(random_images(3))

# (file name, content, what the message must say)
BAD_FILES = {
    "empty": ("f", b"", "is empty"),
    "short header": ("f", b"\x00\x00\x08", "too short for an IDX header"),
    "short image header": ("f", _IMAGES[:12], "too short for an IDX image header"),
    "truncated images": ("f", _IMAGES[:-10], "is truncated"),
    "truncated labels": ("f", _LABELS[:-1], "is truncated"),
    "trailing bytes": ("f", _LABELS + b"\x00\x00", "2 trailing bytes"),
    "bad magic": ("f", struct.pack(">II", 0x00000802, 3) + bytes(3), "0x00000802"),
    "random bytes named .gz": ("f.gz", b"\x00\x07" + bytes(range(98)), "is not an MNIST IDX file"),
    "gzip magic then junk": ("f.gz", b"\x1f\x8b" + bytes(range(50)), "is not a valid gzip file"),
    "truncated gzip": ("f.gz", gzip.compress(_IMAGES)[:-30], "is not a valid gzip file"),
    "label out of range": ("f", idx_bytes(np.array([0, 9, 10], np.uint8)), "label 10"),
    "27x28 images": ("f", idx_bytes(random_images(2, rows=27)), "27x28"),
}


@pytest.mark.parametrize("name, content, expected", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_read_idx_rejects_bad_files_with_a_one_line_message(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(data.DataError) as info:
        data.read_idx(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_read_idx_reports_a_missing_file(tmp_path):
    with pytest.raises(data.DataError, match="not found") as info:
        data.read_idx(tmp_path / "nothing-here")
    assert str(tmp_path / "nothing-here") in str(info.value)


# --- load_idx_dir / verify ---------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_dir_rejects_well_formed_but_non_standard_files(tmp_path, gz):
    write_idx_dir(tmp_path, n_train=6, n_test=4, gz=gz)
    with pytest.raises(data.DataError, match="not the standard MNIST file") as info:
        data.load_idx_dir(tmp_path)
    assert str(tmp_path / "train-images-idx3-ubyte") in str(info.value)


def test_load_idx_dir_rejects_right_sized_files_by_sha256(tmp_path):
    # All-zero files with exactly the standard sizes: only the hash can tell.
    images = idx_bytes(np.zeros((60_000, 28, 28), np.uint8))
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(images, compresslevel=1))
    with pytest.raises(data.DataError, match="has the right shape but its SHA-256 is [0-9a-f]{64}, expected"):
        data.load_idx_dir(tmp_path)


def test_load_idx_dir_rejects_labels_under_an_images_name(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_LABELS)
    with pytest.raises(data.DataError, match="holds labels, expected images"):
        data.load_idx_dir(tmp_path)


def test_load_idx_dir_reports_missing_files_as_not_found(tmp_path):
    with pytest.raises(data.DataError, match=r"train-images-idx3-ubyte\[\.gz\]: not found; copy"):
        data.load_idx_dir(tmp_path)


# --- resolve_data_dir / load -------------------------------------------------


def test_resolve_data_dir_prefers_argument_then_env_then_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBLIMINAL_MNIST_DIR", str(tmp_path / "env"))
    assert data.resolve_data_dir(tmp_path / "arg") == (tmp_path / "arg", True)
    assert data.resolve_data_dir(str(tmp_path / "arg")) == (tmp_path / "arg", True)
    assert data.resolve_data_dir(None) == (tmp_path / "env", True)
    monkeypatch.setenv("SUBLIMINAL_MNIST_DIR", "")  # empty counts as unset
    assert data.resolve_data_dir(None) == (data.default_data_dir(), False)
    monkeypatch.delenv("SUBLIMINAL_MNIST_DIR")
    assert data.resolve_data_dir(None) == (data.default_data_dir(), False)


def test_default_data_dir_is_the_pooch_cache():
    assert data.default_data_dir() == pooch.os_cache("subliminal-mnist")


@pytest.fixture
def no_download(monkeypatch):
    """Fails the test if anything tries to download."""
    monkeypatch.setattr(data, "fetch", lambda *args, **kwargs: pytest.fail("tried to download"))


@pytest.fixture
def default_cache(tmp_path, monkeypatch) -> pathlib.Path:
    """Points the default cache at an empty temporary folder, with no $SUBLIMINAL_MNIST_DIR."""
    monkeypatch.delenv("SUBLIMINAL_MNIST_DIR", raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setattr(data, "default_data_dir", lambda: cache)
    return cache


def test_load_from_an_explicit_empty_dir_fails_without_downloading(tmp_path, no_download):
    with pytest.raises(data.DataError, match="not found"):
        data.load("idx", data_dir=tmp_path)


def test_load_from_an_env_dir_fails_without_downloading(tmp_path, monkeypatch, no_download):
    monkeypatch.setenv("SUBLIMINAL_MNIST_DIR", str(tmp_path))
    with pytest.raises(data.DataError, match="not found"):
        data.load()


def test_load_rejects_an_unknown_source():
    with pytest.raises(data.DataError, match="unknown data source 'bogus': choose idx, tfds or sample"):
        data.load("bogus")


def test_load_sample_source_is_the_sample():
    assert data.load("sample").is_sample


# --- fetch -------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch) -> list[dict]:
    """Makes pooch's HTTP downloads write part of the file, then lose the network.

    Returns the keyword arguments each downloader was made with.
    """
    made = []

    def make_downloader(**kwargs):
        made.append(kwargs)

        def download(url, output_file, pooch_instance):
            pathlib.Path(output_file).write_bytes(b"partial")
            raise requests.exceptions.ConnectionError(f"no network for {url}")

        return download

    monkeypatch.setattr(pooch, "HTTPDownloader", make_downloader)
    return made


def files_under(directory: pathlib.Path) -> list[pathlib.Path]:
    return [path for path in directory.rglob("*") if path.is_file()]


def test_fetch_without_network_fails_fast_and_leaves_no_file(tmp_path, offline):
    start = time.monotonic()
    with pytest.raises(data.DataError) as info:
        with runs.showing(False):
            data.fetch(tmp_path / "cache")
    assert time.monotonic() - start < 2
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'cache' / 'train-images-idx3-ubyte.gz'}: download from https://")
    assert "SUBLIMINAL_MNIST_DIR" in message and "--source sample" in message
    assert "\n" not in message
    assert files_under(tmp_path) == []
    # A short connect timeout is what keeps a black-holed network from hanging.
    timeout = offline[0]["timeout"]
    assert (timeout[0] if isinstance(timeout, tuple) else timeout) <= 5


def test_fetch_rejects_a_corrupt_download_and_leaves_no_file(tmp_path, monkeypatch):
    def make_downloader(**kwargs):
        return lambda url, output_file, pooch_instance: pathlib.Path(output_file).write_bytes(b"not mnist")

    monkeypatch.setattr(pooch, "HTTPDownloader", make_downloader)
    with pytest.raises(data.DataError, match="hash"):
        with runs.showing(False):
            data.fetch(tmp_path)
    assert files_under(tmp_path) == []


def test_fetch_downloads_only_missing_files(tmp_path, offline):
    write_idx_dir(tmp_path, n_train=2, n_test=2, gz=False)
    data.fetch(tmp_path)  # nothing missing: no download attempted
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.gz: download"):
        data.fetch(tmp_path)


def test_fetch_saves_verified_archives_that_load(tmp_path, monkeypatch):
    # A stand-in "mirror" of small synthetic files, with a canonical table to
    # match, so the whole download -> verify -> load path runs offline.
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    write_idx_dir(mirror, n_train=6, n_test=4, gz=True)
    table = {}
    for name in STANDARD_NAMES:
        archive = (mirror / f"{name}.gz").read_bytes()
        raw = gzip.decompress(archive)
        table[name] = data._Canonical(len(raw), hashlib.sha256(raw).hexdigest(), hashlib.sha256(archive).hexdigest())
    monkeypatch.setattr(data, "_FILES", types.MappingProxyType(table))

    def make_downloader(**kwargs):
        def download(url, output_file, pooch_instance):
            pathlib.Path(output_file).write_bytes((mirror / url.rsplit("/", 1)[1]).read_bytes())

        return download

    monkeypatch.setattr(pooch, "HTTPDownloader", make_downloader)
    with runs.showing(False):
        data.fetch(tmp_path / "cache")
    assert sorted(p.name for p in files_under(tmp_path / "cache")) == sorted(f"{name}.gz" for name in STANDARD_NAMES)
    mnist = data.load_idx_dir(tmp_path / "cache")
    assert mnist.train_images.shape == (6, 784) and mnist.test_labels.shape == (4,)


def test_load_falls_back_to_the_sample_when_download_fails(default_cache, offline, capsys):
    mnist = data.load()
    assert mnist.is_sample
    err = capsys.readouterr().err
    assert err.startswith("WARNING: full MNIST could not be had")
    assert len(err.splitlines()) > 3
    assert str(default_cache) in err and "SUBLIMINAL_MNIST_DIR" in err


def test_load_falls_back_to_the_sample_without_download(default_cache, no_download, capsys):
    assert data.load(download=False).is_sample
    assert "not found" in capsys.readouterr().err


def test_the_fallback_advice_is_printed_once_per_process(default_cache, offline, capsys):
    # Two places of one run load MNIST (a benchmark's check, then the experiment) and fall back to
    # the sample for the same reason: the advice to copy the files is printed once.
    assert data.load().is_sample and data.load().is_sample
    err = capsys.readouterr().err
    assert err.count("WARNING: full MNIST could not be had") == 1
    assert err.count(f"WARNING: into {default_cache}, or set --data-dir") == 1
    # Another reason is news, and is said.
    assert data.load(download=False).is_sample
    assert "not found" in capsys.readouterr().err


# --- scale_pixels / load_sample ----------------------------------------------


def test_scale_pixels_maps_0_to_minus_1_and_255_to_1():
    scaled = data.scale_pixels(np.tile(np.array([0, 255, 51], np.uint8), (2, 28, 28))[:, :, :28])
    assert scaled.dtype == np.float32 and scaled.shape == (2, 784)
    np.testing.assert_array_equal(scaled[0, :3], np.array([-1.0, 1.0, -0.6], np.float32))


@pytest.mark.parametrize("shape, expected", [((784,), (784,)), ((28, 28), (784,)), ((2, 3, 28, 28), (2, 3, 784))])
def test_scale_pixels_flattens_images(shape, expected):
    assert data.scale_pixels(np.zeros(shape, np.uint8)).shape == expected


def test_scale_pixels_rejects_other_shapes():
    with pytest.raises(ValueError, match="784"):
        data.scale_pixels(np.zeros((5, 100), np.uint8))


@pytest.fixture(scope="module")
def sample() -> data.MNIST:
    return data.load_sample()


def test_sample_is_a_stratified_4000_1000_split(sample):
    assert sample.is_sample and "offline sample" in sample.source
    assert sample.train_images.shape == (4000, 784) and sample.test_images.shape == (1000, 784)
    assert sample.train_images.dtype == sample.test_images.dtype == np.float32
    assert sample.train_labels.dtype == sample.test_labels.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(sample.train_labels, minlength=10), [400] * 10)
    np.testing.assert_array_equal(np.bincount(sample.test_labels, minlength=10), [100] * 10)
    for images in (sample.train_images, sample.test_images):
        assert images.min() == -1.0 and images.max() == 1.0


def test_sample_is_deterministic(sample):
    again = data.load_sample()
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(again, field), getattr(sample, field))


def test_sample_train_and_test_are_disjoint(sample):
    train = {row.tobytes() for row in sample.train_images}
    test = {row.tobytes() for row in sample.test_images}
    assert len(train) == 4000 and len(test) == 1000
    assert not train & test


def test_sample_is_shuffled_once_not_sorted_by_class(sample):
    # The file is sorted by class (500 zeros, then 500 ones, ...): the split's train and test are
    # shuffled after it, so a run that takes the first digits sees every class.
    for labels in (sample.train_labels, sample.test_labels):
        assert len(np.unique(labels[:50])) > 1
        assert np.any(np.diff(labels) < 0)
    assert len(np.unique(sample.train_labels[:100])) == 10


def test_sample_split_is_the_files_last_100_of_each_class_for_test(sample):
    """The shuffle reorders train and test; which digits go where is still decided in file order."""
    resource = data.importlib.resources.files("subliminal_mnist") / "assets" / "sample_5k.npz"
    with resource.open("rb") as f, np.load(f) as archive:
        images, labels = archive["images"], archive["labels"]
    test = np.concatenate([np.flatnonzero(labels == digit)[-100:] for digit in range(10)])
    train = np.setdiff1d(np.arange(len(labels)), test)
    for part, rows in (("train", train), ("test", test)):
        want = sorted(zip(labels[rows].tolist(), (x.tobytes() for x in data.scale_pixels(images[rows]))))
        got_images, got_labels = getattr(sample, f"{part}_images"), getattr(sample, f"{part}_labels")
        have = sorted(zip(got_labels.tolist(), (x.tobytes() for x in got_images)))
        assert have == want, part


# --- stratified_indices: what every probe of N images takes instead of the first N -------------


def test_stratified_indices_give_every_class_an_equal_share_in_a_shuffled_order():
    labels = np.repeat(np.arange(10), 50)  # sorted by class, as the sample's file
    chosen = data.stratified_indices(labels, 25, seed=3)
    assert chosen.dtype == np.int64 and len(np.unique(chosen)) == 25
    counts = np.bincount(labels[chosen], minlength=10)
    assert counts.min() == 2 and counts.max() == 3 and counts.sum() == 25
    assert np.any(np.diff(labels[chosen]) < 0)  # not grouped by class
    np.testing.assert_array_equal(chosen, data.stratified_indices(labels, 25, seed=3))  # deterministic
    assert not np.array_equal(chosen, data.stratified_indices(labels, 25, seed=4))
    np.testing.assert_array_equal(np.sort(data.stratified_indices(labels, 500)), np.arange(500))  # all of them


def test_stratified_indices_share_out_what_a_short_class_cannot_give():
    labels = np.array([0] * 3 + [1] * 100 + [2] * 50)
    np.testing.assert_array_equal(np.bincount(labels[data.stratified_indices(labels, 60)]), [3, 28, 29])
    np.testing.assert_array_equal(np.bincount(labels[data.stratified_indices(labels, 153)]), [3, 100, 50])
    assert len(data.stratified_indices(labels, 0)) == 0


def test_stratified_indices_refuse_more_than_there_are_in_one_line():
    with pytest.raises(data.DataError, match=r"^probe_test \(test images\): 154 asked for, but there are 153"):
        data.stratified_indices(np.zeros(153, int), 154, what="probe_test (test images)")


@pytest.mark.parametrize("n", [10, 100, 1000, 4000])
def test_stratified_indices_of_the_sample_hold_every_digit_equally(sample, n):
    counts = np.bincount(sample.train_labels[data.stratified_indices(sample.train_labels, n)], minlength=10)
    np.testing.assert_array_equal(counts, [n // 10] * 10)


def test_the_alignment_probe_on_the_sample_holds_every_digit(sample):
    """`subliminal-mnist alignment --source sample` at its defaults (and at small counts): the trait
    gradient's training images and the test images of the accuracy at every step hold all ten digits,
    in equal shares, each image with its own label."""
    from subliminal_mnist import alignment

    config = alignment.AlignmentConfig()
    for trait_batch, probe_test in ((config.trait_batch, config.probe_test), (10, 10), (50, 30)):
        probe = alignment.probe_sets(sample, trait_batch, probe_test)
        for part, n in (("trait", trait_batch), ("test", probe_test)):
            labels = np.asarray(probe[f"{part}_labels"])
            assert len(labels) == n
            counts = np.bincount(labels, minlength=10)
            assert counts.min() == n // 10 and counts.max() <= -(-n // 10), (part, n, counts)
        pairs = {image.tobytes(): label for image, label in zip(sample.train_images, sample.train_labels)}
        assert all(pairs[x.tobytes()] == label for x, label in zip(probe["trait_images"], probe["trait_labels"]))
    with pytest.raises(data.DataError, match="probe_test"):
        alignment.probe_sets(sample, 10, 1001)


def test_the_projection_defenses_trait_gradient_on_the_sample_holds_every_digit(sample):
    from subliminal_mnist import defenses, experiment

    settings = defenses.MnistDefenses()
    teachers = types.SimpleNamespace(noise=np.zeros((2, 1)), shared_init={"w": jnp.zeros((2, 3))})
    students = defenses.Distillation(experiment.ExperimentConfig(), teachers)
    chunk = defenses.Chunk(settings, sample, np.arange(2), None, {})
    context = defenses.projection(students, "one_sided", chunk).context(2)
    labels = np.asarray(context["trait_labels"])
    assert labels.shape == (2, 2, settings.trait_batch)
    for per_member in labels.reshape(-1, settings.trait_batch):
        counts = np.bincount(per_member, minlength=10)
        assert counts.min() >= settings.trait_batch // 10 and counts.max() <= -(-settings.trait_batch // 10)


# --- tfds --------------------------------------------------------------------


def test_load_tfds_reads_mock_mnist(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.testing import mocking

    # tfds 4.9's mock installs its batched reader (`__getitems__`) unbound, so
    # it is called without `self`; the record keys are always its last
    # positional argument.
    monkeypatch.setattr(
        mocking,
        "_getitems",
        lambda *args, generator, serialized=False: [generator[key] for key in args[-1]],
    )
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        mnist = data.load_tfds()
    assert mnist.source == "tensorflow-datasets" and not mnist.is_sample
    for images, labels in ((mnist.train_images, mnist.train_labels), (mnist.test_images, mnist.test_labels)):
        assert images.shape == (12, 784) and images.dtype == np.float32
        assert images.min() >= -1.0 and images.max() <= 1.0
        assert labels.shape == (12,) and labels.dtype == np.int32
        assert labels.min() >= 0 and labels.max() <= 9


def test_load_tfds_without_tfds_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    with pytest.raises(data.DataError, match=r"pip install 'subliminal-mnist\[tfds\]'"):
        data.load_tfds()


def test_load_tfds_turns_tfds_failures_into_one_line(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    def fail(*args, **kwargs):
        raise RuntimeError("dataset mnist not prepared\nand no network")

    monkeypatch.setattr(tfds, "data_source", fail)
    with pytest.raises(data.DataError, match="not prepared and no network") as info:
        data.load("tfds")
    assert "\n" not in str(info.value)


# --- noise_images ------------------------------------------------------------


@pytest.mark.parametrize("distribution", ["uniform", "gaussian"])
def test_noise_images_shape_dtype_and_determinism(distribution):
    images = data.noise_images(jax.random.key(0), 7, distribution)
    assert images.shape == (7, 784) and images.dtype == np.float32
    np.testing.assert_array_equal(images, data.noise_images(jax.random.key(0), 7, distribution))
    assert not np.array_equal(images, data.noise_images(jax.random.key(1), 7, distribution))


def test_uniform_noise_fills_minus_1_to_1():
    images = np.asarray(data.noise_images(jax.random.key(0), 1000))
    assert -1.0 <= images.min() < -0.999 and 0.999 < images.max() < 1.0
    assert abs(images.mean()) < 0.01


def test_gaussian_noise_is_standard_normal():
    images = np.asarray(data.noise_images(jax.random.key(0), 1000, "gaussian"))
    assert abs(images.mean()) < 0.01 and abs(images.std() - 1.0) < 0.01


def test_noise_images_rejects_an_unknown_distribution():
    with pytest.raises(data.DataError, match="choose uniform, gaussian, correlated, mnist"):
        data.noise_images(jax.random.key(0), 3, "laplace")


def _neighbour_correlation(images: np.ndarray) -> float:
    grid = images.reshape(-1, 28, 28)
    return float(np.corrcoef(grid[:, 10:18, 10:18].ravel(), grid[:, 10:18, 11:19].ravel())[0, 1])


def test_correlated_noise_keeps_every_pixel_standard_normal_and_correlates_neighbours():
    images = {scale: np.asarray(data.noise_images(jax.random.key(0), 4000, "correlated", scale)) for scale in (1, 4)}
    for scale, noise in images.items():
        assert noise.shape == (4000, 784) and noise.dtype == np.float32
        # Every pixel, the border too (where the blur sees zero padding), has mean 0 and std 1.
        assert np.abs(noise.mean(axis=0)).max() < 0.08
        assert np.abs(noise.std(axis=0) - 1).max() < 0.08
    # A Gaussian blur of std L gives neighbours correlation exp(-1 / (4 L^2)): 0.78 at L = 1, 0.98 at 4.
    assert _neighbour_correlation(images[1]) == pytest.approx(np.exp(-1 / 4), abs=0.02)
    assert _neighbour_correlation(images[4]) == pytest.approx(np.exp(-1 / 64), abs=0.01)
    white = np.asarray(data.noise_images(jax.random.key(0), 4000, "gaussian"))
    assert abs(_neighbour_correlation(white)) < 0.01


def test_mnist_noise_is_training_images_drawn_without_replacement():
    images = jnp.arange(50 * 784, dtype=jnp.float32).reshape(50, 784)
    drawn = np.asarray(data.noise_images(jax.random.key(0), 20, "mnist", images=images))
    rows = drawn[:, 0] / 784
    assert set(rows) <= set(range(50)) and len(set(rows)) == 20
    np.testing.assert_array_equal(drawn, np.asarray(images)[rows.astype(int)])
    everything = np.asarray(data.noise_images(jax.random.key(1), 50, "mnist", images=images))
    assert sorted(everything[:, 0] / 784) == list(range(50))
    more = np.asarray(data.noise_images(jax.random.key(0), 120, "mnist", images=images))  # with replacement
    assert set(more[:, 0] / 784) <= set(range(50)) and len(set(more[:, 0])) < 120


# --- full MNIST (needs $SUBLIMINAL_MNIST_DIR) ----------------------------------


def link_standard_files(source: pathlib.Path, target: pathlib.Path, skip: str = "") -> None:
    """Symlinks the standard files (NAME or NAME.gz) of `source` into `target`, except `skip`."""
    target.mkdir(exist_ok=True)
    for name in STANDARD_NAMES:
        if name != skip:
            path = next(p for p in (source / name, source / f"{name}.gz") if p.exists())
            (target / path.name).symlink_to(path.resolve())


@pytest.mark.mnist
def test_real_mnist_has_the_standard_splits(real_mnist):
    assert not real_mnist.is_sample and real_mnist.source.startswith("idx files in ")
    assert real_mnist.train_images.shape == (60_000, 784) and real_mnist.test_images.shape == (10_000, 784)
    assert real_mnist.train_labels.shape == (60_000,) and real_mnist.test_labels.shape == (10_000,)
    for images, labels in (
        (real_mnist.train_images, real_mnist.train_labels),
        (real_mnist.test_images, real_mnist.test_labels),
    ):
        assert images.dtype == np.float32 and labels.dtype == np.int32
        assert images.min() == -1.0 and images.max() == 1.0
        np.testing.assert_array_equal(np.unique(labels), np.arange(10))


@pytest.mark.mnist
def test_verify_real_mnist(real_mnist_dir):
    lines = data.verify(real_mnist_dir)
    assert len(lines) == 4
    for name, line in zip(STANDARD_NAMES, lines, strict=True):
        assert line.startswith(name) and ": ok (" in line and "sha256 " in line


@pytest.mark.mnist
@pytest.mark.parametrize("missing", STANDARD_NAMES)
def test_load_idx_dir_names_the_missing_file(tmp_path, real_mnist_dir, missing):
    link_standard_files(real_mnist_dir, tmp_path, skip=missing)
    with pytest.raises(data.DataError, match=rf"{missing}\[\.gz\]: not found"):
        data.load_idx_dir(tmp_path)


@pytest.mark.mnist
def test_load_uses_mnist_already_in_the_default_cache(real_mnist_dir, default_cache, no_download, capsys):
    link_standard_files(real_mnist_dir, default_cache)
    mnist = data.load()
    assert not mnist.is_sample and str(default_cache) in mnist.source
    assert capsys.readouterr().err == ""


@pytest.mark.mnist
def test_sample_is_the_first_500_training_digits_of_each_class(real_mnist, sample):
    """The first 400 of each class are the sample's train digits and the next 100 its test digits, in
    the order of its one shuffle (so compared as sorted rows)."""

    def rows(images):
        return sorted(x.tobytes() for x in images)

    for digit in range(10):
        first = real_mnist.train_images[real_mnist.train_labels == digit][:500]
        assert rows(sample.train_images[sample.train_labels == digit]) == rows(first[:400])
        assert rows(sample.test_images[sample.test_labels == digit]) == rows(first[400:])


def test_scale_pixels_is_the_papers_formula_for_every_value():
    pixels = np.arange(256, dtype=np.uint8).repeat(784).reshape(256, 784)
    formula = (pixels.astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
    np.testing.assert_array_equal(data.scale_pixels(pixels), formula)
    assert data.scale_pixels(pixels).dtype == np.float32


def test_no_progress_hides_the_download_bar_too(default_cache, monkeypatch):
    # --no-progress is one switch: the download of a command's data shows no bar either.
    shown = []

    def fetch(directory):
        shown.append(runs.shown())
        raise data.DataError("offline")

    monkeypatch.setattr(data, "fetch", fetch)
    with runs.showing(False):
        data.load("idx")  # the download fails: the sample, after a warning
    data.load("idx")
    assert shown == [False, True]
    loads = []

    def load(*args, **kwargs):
        loads.append(runs.shown())
        raise data.DataError("stop here")

    monkeypatch.setattr(data, "load", load)
    for command in (["demo"], ["sweep", "init_perturbation"], ["defend", "mnist"]):
        assert cli.main([*command, "--no-progress"]) == 2
    assert loads == [False] * 3
