"""Datasets: the bundled sample, Fashion-MNIST, CIFAR-10, image folders, synthetic noise; how their images are drawn.

Their images become a model's input through the one preprocessing spec (pipeline/model/preprocess.py)."""

from __future__ import annotations

import functools
import gzip
import logging
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.model.preprocess import Preprocess
from resnetx.errors import BadInput

__all__ = [
    "Preprocess",
    "Dataset",
    "Batch",
    "ImageSet",
    "DATASETS",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "SAMPLE_FILE",
    "open_dataset",
    "iter_batches",
    "select_indices",
    "stratified_indices",
    "drawn_across",
    "spread_words",
    "spread_over_classes",
    "eval_indices",
    "undecodable",
    "decode_image",
    "IMAGE_EXTENSIONS",
    "read_idx",
    "calibration_split",
    "calibration_overlap_note",
    "label_order_note",
    "near_chance_note",
]

log = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
SAMPLE_FILE = Path(__file__).parents[1] / "assets" / "fashion_mnist_sample.npz"


# --------------------------------------------------------------------------- datasets
@dataclass
class Dataset:
    """Decoded-on-demand images with optional labels."""

    name: str
    size: int
    labels: np.ndarray | None
    class_names: tuple[str, ...] | None
    _images: np.ndarray | None = None  # uint8 (N,H,W[,C]) when held in memory
    _files: list[Path] | None = None  # image files, decoded per batch
    _synthetic_shape: tuple[int, int, int] | None = None
    _preprocess: Preprocess | None = None  # for decoding files straight to the model's size

    def __len__(self) -> int:
        return self.size

    def frame(self, i: int) -> np.ndarray:
        """Image i at its own size, uint8 (H, W, C), not resized or cropped: what a video pipeline is handed."""
        if self._files is not None:
            gray = self._preprocess is not None and self._preprocess.channels == 1
            return decode_image(self._files[i], None, gray=gray)
        a = self.raw(np.array([i]))[0]
        return a if a.ndim == 3 else a[..., None]

    def raw(self, idx: np.ndarray) -> np.ndarray:
        """uint8 images for the given indices."""
        if self._images is not None:
            return self._images[idx]
        if self._files is not None:
            return _decode_all([self._files[i] for i in idx], self._preprocess)
        h, w, c = self._synthetic_shape or (32, 32, 3)
        out = np.empty((len(idx), h, w, c), np.uint8)
        for j, i in enumerate(idx):  # per-index seeds: every runner sees identical inputs
            out[j] = np.random.default_rng(int(i)).integers(0, 256, (h, w, c), dtype=np.uint8)
        return out


@dataclass(frozen=True)
class Batch:
    x: np.ndarray  # float32 NCHW, preprocessed
    y: np.ndarray | None  # int64 labels
    index: np.ndarray


@dataclass(frozen=True)
class ImageSet:
    """Some images of a dataset, decoded and preprocessed a chunk at a time whenever they are read: memory does not
    grow with their number, and every read gives the same bytes."""

    ds: Dataset
    pre: Preprocess
    index: np.ndarray  # the dataset's indices, in the order they are read

    def __len__(self) -> int:
        return len(self.index)

    @property
    def labels(self) -> np.ndarray | None:
        return None if self.ds.labels is None else self.ds.labels[self.index].astype(np.int64)

    def chunks(self, size: int, rows: np.ndarray | None = None) -> Iterator[np.ndarray]:
        """float32 NCHW, at most `size` images at a time: all of them, or those at positions `rows`."""
        index = self.index if rows is None else self.index[rows]
        for i in range(0, len(index), size):
            yield self.pre(self.ds.raw(index[i : i + size]))


def select_indices(n_total: int, limit: int | None, seed: int, shuffle: bool = False) -> np.ndarray:
    """The first `limit` items, or a seeded random subset of them when shuffle is set."""
    n = n_total if limit is None else min(limit, n_total)
    if shuffle:
        return np.sort(np.random.default_rng(seed).permutation(n_total)[:n])
    return np.arange(n)


def iter_batches(
    ds: Dataset,
    preprocess: Preprocess,
    batch_size: int,
    *,
    limit: int | None = None,
    seed: int = 0,
    shuffle: bool = False,
) -> Iterator[Batch]:
    idx = select_indices(len(ds), limit, seed, shuffle)
    for start in range(0, len(idx), batch_size):
        chunk = idx[start : start + batch_size]
        y = None if ds.labels is None else ds.labels[chunk].astype(np.int64)
        yield Batch(preprocess(ds.raw(chunk)), y, chunk)


# --------------------------------------------------------------------------- readers
def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (MNIST format), gzipped or raw. The last few read are kept (read-only): an export opens
    the same split several times (preflight, calibration, the accuracy search)."""
    try:
        st = path.stat()
    except OSError:
        st = None
    return _read_idx(path, (st.st_size, st.st_mtime_ns) if st else None)


@functools.lru_cache(maxsize=4)
def _read_idx(path: Path, _stamp: tuple[int, int] | None) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise BadInput(f"{path} cannot be read ({e}); re-download the dataset") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise BadInput(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise BadInput(f"{path} is truncated or corrupt: header says {shape}, size is {len(data)} bytes")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _find(dir_: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (dir_ / name).is_file():
            return dir_ / name
    raise BadInput(f"{dir_} has no {stem}[.gz]")


def _fashion_mnist(split: str, data_dir: Path | None, _: Preprocess | None) -> Dataset:
    root = Path(data_dir) if data_dir else FASHION_MNIST_DIR
    if not root.is_dir():
        raise BadInput(
            f"Fashion-MNIST not found in {root}; install it with "
            "'apt-get install dataset-fashion-mnist' or pass --data-dir DIR with the idx files"
        )
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise BadInput(f"{root}: {prefix} images {images.shape} and labels {labels.shape} do not match")
    return Dataset("fashion-mnist", len(images), labels, FASHION_MNIST_CLASSES, _images=images)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles: allow numpy arrays and builtins only, never arbitrary code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        data = np.asarray(d[b"data"], np.uint8)
        labels = np.asarray(d[b"labels"], np.int64)
    except BadInput:
        raise
    except Exception as e:
        raise BadInput(f"{path} is not a CIFAR-10 python batch file ({e})") from e
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise BadInput(f"{path}: data {data.shape} / labels {labels.shape} are not CIFAR-10 batches")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _cifar10(split: str, data_dir: Path | None, _: Preprocess | None) -> Dataset:
    if data_dir is None:
        raise BadInput("cifar10 needs --data-dir DIR (the 'cifar-10-batches-py' folder)")
    root = Path(data_dir)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise BadInput(f"{root} lacks CIFAR-10 file(s) {', '.join(missing)}")
    parts = [_load_cifar_batch(root / n) for n in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return Dataset("cifar10", len(images), labels, CIFAR10_CLASSES, _images=images)


IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def _decode_all(files: list[Path], pre: Preprocess | None) -> np.ndarray:
    """The images, decoded to the model's size; every file that cannot be decoded is named in one error."""
    out, bad = [], []
    for f in files:
        try:
            out.append(decode_image(f, pre))
        except BadInput:
            bad.append(str(f))
    if bad:
        raise BadInput(f"{len(bad)} image(s) cannot be decoded: {', '.join(bad[:8])}"
                       f"{f' and {len(bad) - 8} more' if len(bad) > 8 else ''}; remove or replace them")
    if len({a.shape for a in out}) > 1:  # read at their own size (no model's preprocessing yet: training)
        sizes = sorted({f"{a.shape[1]}x{a.shape[0]}" + (f"x{a.shape[2]}" if a.ndim == 3 else "") for a in out})
        raise BadInput(f"the images differ in size ({', '.join(sizes[:4])}{', ...' if len(sizes) > 4 else ''}), "
                       f"e.g. {files[0].parent}: resize them to one size (and one colour mode) first")
    return np.stack(out)


def undecodable(ds: Dataset, idx: np.ndarray) -> list[str]:
    """The image files among `idx` that do not open as images (header and data checked, not decoded): found before
    any long work, all at once."""
    if ds._files is None:
        return []
    from PIL import Image

    bad = []
    for i in idx:
        try:
            with Image.open(ds._files[i]) as im:
                im.verify()
        except Exception:  # noqa: BLE001 - PIL raises many kinds for a broken file
            bad.append(str(ds._files[i]))
    return bad


def spread_over_classes(ds: Dataset, n: int) -> bool:
    """Whether n images of `ds` are drawn across its classes: an image folder (read in class order) asked for fewer
    images than it holds; the other datasets' first images are already mixed."""
    return ds.name.startswith("imagefolder:") and ds.labels is not None and n < len(ds)


def eval_indices(ds: Dataset, n: int, seed: int) -> np.ndarray:
    """The n images of a test split that verify (and what reproduces its inputs) reads: seeded and spread over the
    classes where `spread_over_classes`, else the first n."""
    return stratified_indices(ds.labels, n, seed) if spread_over_classes(ds, n) else np.arange(n)


def stratified_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n indices drawn seeded and spread over the classes as evenly as they allow (round-robin over each class's
    shuffled images), sorted: a small --samples of a folder read in class order still sees every class."""
    rng = np.random.default_rng(seed)
    pools = [rng.permutation(np.flatnonzero(labels == k)) for k in np.unique(labels)]
    picked: list[int] = []
    depth = 0
    while len(picked) < n:
        layer = [int(p[depth]) for p in pools if depth < len(p)]
        if not layer:
            break
        picked += [int(i) for i in rng.permutation(layer)][: n - len(picked)]
        depth += 1
    return np.sort(np.asarray(picked, dtype=np.int64))


def drawn_across(labels: np.ndarray, idx: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """n of the indices `idx` (sorted), drawn seeded across their classes (stratified_indices); all of them when n
    is None or not smaller."""
    return idx if n is None or n >= len(idx) else idx[stratified_indices(labels[idx], n, seed)]


def spread_words(drawn: np.ndarray, classes: int) -> str:
    """How the labels of a draw spread over the classes, in words: "drawn seeded across 10 classes, 5-5 each"."""
    per = np.bincount(drawn, minlength=classes)
    return f"drawn seeded across {int((per > 0).sum())} classes, {per.min()}-{per.max()} each"


def decode_image(path: Path, pre: Preprocess | None, gray: bool = False) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("L" if (pre and pre.channels == 1) or gray else "RGB")
            if pre is not None:  # shorter side -> resize, center crop -> image_size
                w, h = im.size
                s = pre.resize / min(w, h)
                im = im.resize((max(pre.image_size, round(w * s)), max(pre.image_size, round(h * s))),
                               Image.BILINEAR)
                w, h = im.size
                left, top = (w - pre.image_size) // 2, (h - pre.image_size) // 2
                im = im.crop((left, top, left + pre.image_size, top + pre.image_size))
            a = np.asarray(im, np.uint8)
    except Exception as e:
        raise BadInput(f"image {path} cannot be decoded ({e}); remove or replace it") from e
    return a if a.ndim == 3 else a[..., None]


def _imagefolder(split: str, data_dir: Path | None, pre: Preprocess | None) -> Dataset:
    if data_dir is None:
        raise BadInput("imagefolder needs a directory: --data imagefolder:DIR")
    root = Path(data_dir)
    if not root.is_dir():
        raise BadInput(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:  # unlabelled images straight in the folder: calibration, parity and predict need no labels
        files = sorted(f for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise BadInput(f"{root} holds neither class folders nor images: expected DIR/<class>/<image>.jpg "
                           "(labelled) or DIR/<image>.jpg (unlabelled)")
        return Dataset(f"imagefolder:{root}", len(files), None, None, _files=files, _preprocess=pre)
    files, labels = [], []
    for k, c in enumerate(classes):
        for f in sorted((root / c).rglob("*")):
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(f)
                labels.append(k)
    if not files:
        raise BadInput(f"{root} has class folders but no .jpg/.png images")
    return Dataset(f"imagefolder:{root}", len(files), np.asarray(labels), tuple(classes),
                   _files=files, _preprocess=pre)


def _sample(split: str, data_dir: Path | None, _: Preprocess | None) -> Dataset:
    with np.load(SAMPLE_FILE) as z:
        images, labels = z["images"], z["labels"]
    return Dataset("sample", len(images), labels, FASHION_MNIST_CLASSES, _images=images)


def _synthetic(split: str, data_dir: Path | None, pre: Preprocess | None) -> Dataset:
    size = pre.image_size if pre else 32
    ch = pre.channels if pre else 3
    return Dataset("synthetic", 1024, None, None, _synthetic_shape=(size, size, ch))


DATASETS = {
    "sample": _sample,
    "fashion-mnist": _fashion_mnist,
    "cifar10": _cifar10,
    "imagefolder": _imagefolder,
    "synthetic": _synthetic,
}


SPLIT_DATASETS = ("fashion-mnist", "cifar10")  # separate train and test images; the others have one set


def calibration_split(name: str) -> str:
    """What calibration draws from: the train split where the dataset has one, else its only set."""
    return "train" if name.partition(":")[0] in SPLIT_DATASETS else "all images"


def calibration_overlap_note(calibrated_on: str | None, data: str) -> str | None:
    """A note when int8 accuracy is measured on the images it was calibrated on (same one-split dataset)."""
    if calibrated_on != data or calibration_split(data) == "train":
        return None
    return (f"int8 was calibrated on images drawn from {data}, the data measured here: its "
            "accuracy is optimistic; export with --calib-data on other images (a train split: fashion-mnist, "
            "cifar10, imagefolder:TRAIN_DIR) for an unbiased number")


def label_order_note(name: str, data_classes: tuple[str, ...] | None,
                     model_classes: tuple[str, ...] | None) -> str | None:
    """Labels map to the model's classes by position (sorted folder names for imagefolder): say so when the
    names differ, because then the accuracy columns may be about the wrong classes."""
    if not data_classes or not model_classes or len(data_classes) != len(model_classes):
        return None
    if [c.lower() for c in data_classes] == [c.lower() for c in model_classes]:
        return None
    pairs = ", ".join(f"{a} -> {b}" for a, b in list(zip(data_classes, model_classes, strict=True))[:3])
    return (f"labels of {name} are matched to the model's classes by position ({pairs}, ...): if that is not "
            "the model's class order, the accuracy columns are wrong (parity and agreement are not affected)")


def open_dataset(
    name: str, *, split: str = "test", data_dir: Path | None = None, preprocess: Preprocess | None = None
) -> Dataset:
    """Open a dataset by name (`imagefolder:DIR` names its directory inline)."""
    if split not in ("train", "test"):
        raise BadInput(f"unknown split {split!r}; use train or test")
    key, _, inline = name.partition(":")
    if key not in DATASETS:
        raise BadInput(f"unknown dataset {name!r}; known: {', '.join(DATASETS)} (imagefolder:DIR)")
    directory = Path(inline) if inline else (Path(data_dir) if data_dir else None)
    return DATASETS[key](split, directory, preprocess)


def near_chance_note(top1: float | None, num_classes: int, what: str) -> str | None:
    """A note when the fp32 model scores near chance on labelled data: preprocessing or labels likely differ."""
    if top1 is None or num_classes < 2:
        return None
    chance = 100.0 / num_classes
    if top1 > 1.5 * chance + 5.0:
        return None
    return (f"the fp32 model scores {top1:.1f}% top-1 on {what}, near chance ({chance:.1f}%): the preprocessing "
            "(--mean/--std/--resize/--image-size) or the labels (class order, --class-names) likely differ from "
            "training, and every accuracy number here is about that")
