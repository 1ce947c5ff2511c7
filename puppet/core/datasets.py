"""What each data set is and where it is read from: the catalogue, the packed ``.npz`` format
and its checks, torchvision's folders, mini-ImageNet's images and the synthetic set.

A dataset is named by what it is (``cifar10``, ``cifar100``, ``mini_imagenet``,
``fashion_mnist``, ``synthetic``) and read from a *source*: by default the
torchvision folder under the data root (downloaded where a download exists), or
a packed-array ``.npz`` file named in config (``data_sources``), so an offline
copy keeps its real name in every table.

Everything is held in memory as uint8 tensors ``(N, C, H, W)``: the data sets
this harness uses are small, and CPU runs should not be loader-bound.

Separate from ``puppet.core.data`` (the seeded splits and the batch iterator a run trains on):
reading and refusing files is one concern, drawing subsets from what was read another.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATA_ROOT_ENV = "PUPPET_DATA_ROOT"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


class DataError(RuntimeError):
    """Missing, corrupt or unreachable data. The message is one line that names the fix."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    in_channels: int
    image_size: int
    description: str


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, "CIFAR-10, 32x32 RGB"),
    "cifar100": DatasetInfo("cifar100", 100, 3, 32, "CIFAR-100 (fine labels), 32x32 RGB"),
    "mini_imagenet": DatasetInfo("mini_imagenet", 100, 3, 84, "mini-ImageNet, 100 classes, resized (image_size)"),
    "fashion_mnist": DatasetInfo("fashion_mnist", 10, 1, 28, "Fashion-MNIST, 28x28 grey"),
    "synthetic": DatasetInfo("synthetic", 10, 3, 32, "procedural class-dependent gratings, 32x32 RGB"),
}


class ImageShape:
    """``in_channels`` and ``image_size`` of a dataclass holding ``x_train`` as (N, C, H, W) images."""

    x_train: torch.Tensor

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[-1])


@dataclass
class ArrayData(ImageShape):
    """A whole data set as uint8 image tensors (N, C, H, W) and int64 labels."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    source: str  # where it was read from, for provenance


def resolve_data_root(config_root: str | os.PathLike | None) -> Path:
    """The environment variable wins over config, so a cluster can point every run elsewhere."""
    return Path(os.environ.get(DATA_ROOT_ENV) or config_root or "data").expanduser()


def _layout_problem(
    shapes: dict[str, tuple],
    dtypes: dict[str, np.dtype],
    labels: dict[str, np.ndarray],
    info: DatasetInfo,
    image_size: int | None,
) -> str:
    """What is wrong with a packed data set's arrays ('' when nothing): the layout this
    harness reads is uint8 ``(N, H, W, C)`` (or ``(N, H, W)`` grey), channels last, with
    train and test images of the dataset's size and channel count, integer labels in
    ``[0, num_classes)``, and no empty split."""
    for split in ("train", "test"):
        shape, dtype, y = shapes[f"x_{split}"], dtypes[f"x_{split}"], labels[f"y_{split}"]
        if dtype != np.uint8:
            return f"x_{split} is {dtype}, not uint8; store images as uint8 0-255"
        if len(shape) not in (3, 4):
            return f"x_{split} has shape {shape}; expected (N, H, W, C) or (N, H, W)"
        if len(shape) == 4 and shape[-1] not in (1, 3) and shape[1] in (1, 3):
            return (
                f"x_{split} has shape {shape}, which looks channels-first (N, C, H, W); "
                f"store channels last: x.transpose(0, 2, 3, 1)"
            )
        if shape[0] == 0:
            return f"x_{split} is empty; the {split} split needs images"
        if y.ndim != 1 or len(y) != shape[0]:
            return f"y_{split} has shape {y.shape} for {shape[0]} images; give one label per image"
        if not np.issubdtype(y.dtype, np.integer):
            return f"y_{split} is {y.dtype}; labels must be integers 0..{info.num_classes - 1}"
    h, w, c = (shapes["x_train"] + (1,))[1:4]
    if shapes["x_test"][1:] != shapes["x_train"][1:]:
        return (
            f"test images {shapes['x_test'][1:]} differ from training images {shapes['x_train'][1:]}; "
            "both splits need one size"
        )
    if c != info.in_channels:
        return (
            f"images have {c} channel(s) but {info.name} has {info.in_channels}; "
            "convert them (or name the right dataset)"
        )
    want = image_size or info.image_size
    if info.name != "mini_imagenet" and (h, w) != (want, want):  # mini-ImageNet: any square size, see image_size
        return f"images are {h}x{w} but {info.name} is {want}x{want}; resize them or name the right dataset"
    if h != w:
        return f"images are {h}x{w}; expected square images"
    for split in ("train", "test"):
        y = labels[f"y_{split}"]
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= info.num_classes:
            return (
                f"y_{split} holds labels {lo}..{hi} but {info.name} has {info.num_classes} classes "
                f"(0..{info.num_classes - 1})"
            )
    return ""


def _npz_headers(path: Path) -> tuple[dict[str, tuple], dict[str, np.dtype]]:
    """Shapes and dtypes of an .npz's arrays from their headers, without reading the data."""
    import zipfile

    shapes, dtypes = {}, {}
    with zipfile.ZipFile(path) as zf:
        for member in zf.namelist():
            if not member.endswith(".npy"):
                continue
            with zf.open(member) as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
            shapes[member[:-4]], dtypes[member[:-4]] = shape, dtype
    return shapes, dtypes


def check_npz(path: str | os.PathLike, name: str, image_size: int | None = None) -> None:
    """Pre-flight of a configured .npz source: exists, readable, and in the layout
    ``load_npz`` accepts. Reads array headers and the labels only (milliseconds even for a
    large file); raises ``DataError`` with one line naming the file, the problem and the fix."""
    path = Path(path)
    where = f"data_sources.{name}"
    if not path.is_file():
        what = "a folder" if path.is_dir() else "no file"
        raise DataError(f"{where}: {what} at '{path}'; give the path of an .npz with keys {', '.join(NPZ_KEYS)}")
    try:
        shapes, dtypes = _npz_headers(path)
        missing = [k for k in NPZ_KEYS if k not in shapes]
        if missing:
            raise DataError(f"{where}: '{path}' lacks arrays {missing}; expected {', '.join(NPZ_KEYS)}")
        with np.load(path, allow_pickle=False) as f:
            labels = {k: f[k] for k in ("y_train", "y_test")}
            n_named = len(f["classes"]) if "classes" in f.files else None
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"{where}: cannot read '{path}' ({type(exc).__name__}: {exc}); the file is corrupt or not an .npz, fetch "
            "it again"
        ) from None
    info = DATASETS[name]
    if n_named is not None and name != "mini_imagenet" and n_named != info.num_classes:
        raise DataError(
            f"{where}: '{path}' names {n_named} classes but {name} has {info.num_classes}; point {where} at a {name} "
            "file"
        )
    if name == "mini_imagenet":  # classes from the file, any square size (see load_npz)
        info = DatasetInfo(
            name,
            n_named or 1 + int(max(labels["y_train"].max(initial=0), labels["y_test"].max(initial=0))),
            3,
            image_size or shapes["x_train"][1],
            "",
        )
    problem = _layout_problem(shapes, dtypes, labels, info, image_size)
    if problem:
        raise DataError(f"{where}: '{path}': {problem}")


def load_npz(
    path: str | os.PathLike, name: str, expected_classes: int | None = None, image_size: int | None = None
) -> ArrayData:
    """Read the packed-array format (keys x_train, y_train, x_test, y_test; uint8 images
    channels last), refusing anything else before training starts (``_layout_problem``)."""
    path = Path(path)
    where = f"data_sources.{name}"
    if not path.is_file():
        raise DataError(f"{where}: no file at '{path}'; give the path of an .npz with keys {', '.join(NPZ_KEYS)}")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in NPZ_KEYS if k not in f.files]
            if missing:
                raise DataError(f"{where}: '{path}' lacks keys {missing}; expected {', '.join(NPZ_KEYS)}")
            arrays = {k: f[k] for k in NPZ_KEYS}
            n_named = len(f["classes"]) if "classes" in f.files else None
    except DataError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError, OSError, ...
        raise DataError(
            f"{where}: cannot read '{path}' ({type(exc).__name__}: {exc}); the file is corrupt or not an .npz, fetch "
            "it again"
        ) from None
    info = DATASETS.get(name)
    if info is None or name == "mini_imagenet":  # classes from the file (mini-ImageNet: any square size)
        x = arrays["x_train"]
        num_classes = n_named or int(max(arrays["y_train"].max(initial=0), arrays["y_test"].max(initial=0))) + 1
        info = DatasetInfo(name, num_classes, x.shape[3] if x.ndim == 4 else 1, x.shape[1] if x.ndim > 1 else 0, "")
    if expected_classes is not None and info.num_classes != expected_classes:
        info = DatasetInfo(name, expected_classes, info.in_channels, info.image_size, "")
    if n_named is not None and n_named != info.num_classes:
        raise DataError(
            f"{where}: '{path}' names {n_named} classes but {name} has {info.num_classes}; point {where} at a {name} "
            "file"
        )
    problem = _layout_problem(
        {k: v.shape for k, v in arrays.items()},
        {k: v.dtype for k, v in arrays.items()},
        {k: arrays[k] for k in ("y_train", "y_test")},
        info,
        image_size,
    )
    if problem:
        raise DataError(f"{where}: '{path}': {problem}")
    return ArrayData(
        name=name,
        x_train=_to_nchw(arrays["x_train"]),
        y_train=torch.as_tensor(arrays["y_train"], dtype=torch.int64),
        x_test=_to_nchw(arrays["x_test"]),
        y_test=torch.as_tensor(arrays["y_test"], dtype=torch.int64),
        num_classes=info.num_classes,
        source=f"npz:{path}",
    )


def _to_nchw(x: np.ndarray) -> torch.Tensor:
    x = np.ascontiguousarray(x)
    if x.ndim == 3:  # (N, H, W) grey
        x = x[:, :, :, None]
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)


def _torchvision(name: str, root: Path, download: bool) -> ArrayData:
    import torchvision.datasets as tvd

    cls, folder = {
        "cifar10": (tvd.CIFAR10, "cifar-10-batches-py"),
        "cifar100": (tvd.CIFAR100, "cifar-100-python"),
        "fashion_mnist": (tvd.FashionMNIST, "FashionMNIST/raw"),
    }[name]
    if root.exists() and not root.is_dir():
        raise DataError(
            f"{name}: data_root '{root}' is a file, not a folder; point data_root (or ${DATA_ROOT_ENV}) at a folder"
        )
    if name == "fashion_mnist":
        _check_idx_files(root / folder)
    try:
        train = cls(root=str(root), train=True, download=download)
        test = cls(root=str(root), train=False, download=download)
    except Exception as exc:
        why = "the download failed (no network?)" if download else "downloads are off (download: false)"
        raise DataError(
            f"{name}: no usable data under '{root / folder}' and {why} [{type(exc).__name__}]; "
            f"put the official files there, set data_root (or ${DATA_ROOT_ENV}), "
            f"or point data_sources.{name} at an .npz (its format: docs/data.md)"
        ) from None

    def arrays(ds) -> tuple[torch.Tensor, torch.Tensor]:
        x = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
        return _to_nchw(x), torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)

    x_train, y_train = arrays(train)
    x_test, y_test = arrays(test)
    return ArrayData(name, x_train, y_train, x_test, y_test, DATASETS[name].num_classes, f"torchvision:{root / folder}")


# Fashion-MNIST's four files, as torchvision's FashionMNIST reads them from <root>/FashionMNIST/raw.
FASHION_MNIST_IDX = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _check_idx_files(folder: Path) -> None:
    """Refuse a Fashion-MNIST folder that holds some of its idx files but not all, naming the missing
    ones (each counts as present uncompressed or as its .gz): a partial copy is a local problem,
    and a download would only hide it (or hang without a network)."""
    missing = [f for f in FASHION_MNIST_IDX if not (folder / f).is_file() and not (folder / f"{f}.gz").is_file()]
    if missing and len(missing) < len(FASHION_MNIST_IDX):
        raise DataError(
            f"fashion_mnist: '{folder}' lacks {', '.join(missing)} (or the .gz of each) while the other files "
            "are there; copy the missing files in (nothing is downloaded into a partial copy)"
        )


def _mini_imagenet(root: Path, image_size: int, split_seed: int) -> ArrayData:
    """mini-ImageNet in the usual layout: ``images/`` plus ``train.csv``, ``val.csv``, ``test.csv``.

    Those CSVs are the few-shot split (disjoint classes). For classification, as in
    the paper (100 classes, Table 6), we pool the 60,000 images and draw a seeded,
    class-stratified 5:1 train/test split. Images are resized (shorter side) and
    centre-cropped to ``image_size``; the decoded arrays are cached beside the CSVs.
    """
    folder = root / "mini_imagenet"
    csvs = [folder / f"{s}.csv" for s in ("train", "val", "test")]
    cache = folder / f"cache_{image_size}px.npz"
    if cache.is_file():
        return load_npz(cache, "mini_imagenet", expected_classes=None)
    if not all(p.is_file() for p in csvs) or not (folder / "images").is_dir():
        raise DataError(
            f"mini_imagenet: expected '{folder}/images/' and train.csv, val.csv, test.csv (columns filename,label) "
            "under the data root; there is no download, get it from the official source or set "
            "data_sources.mini_imagenet to an .npz"
        )
    from PIL import Image

    files, labels = [], []
    for p in csvs:
        with open(p, newline="") as f:
            for row in csv.DictReader(f):
                files.append(row["filename"])
                labels.append(row["label"])
    classes = sorted(set(labels))
    y = np.array([classes.index(c) for c in labels], dtype=np.int64)
    x = np.empty((len(files), image_size, image_size, 3), dtype=np.uint8)
    for i, fname in enumerate(files):
        try:
            img = Image.open(folder / "images" / fname).convert("RGB")
        except Exception as exc:
            raise DataError(
                f"mini_imagenet: cannot read image '{folder / 'images' / fname}' ({exc}); re-extract images/"
            ) from None
        w, h = img.size
        s = image_size / min(w, h)
        img = img.resize((max(image_size, round(w * s)), max(image_size, round(h * s))), Image.BILINEAR)
        w, h = img.size
        left, top = (w - image_size) // 2, (h - image_size) // 2
        x[i] = np.asarray(img.crop((left, top, left + image_size, top + image_size)))
    test_mask = np.zeros(len(y), dtype=bool)
    order = balanced_order(torch.as_tensor(y), len(classes), split_seed).numpy()
    test_mask[order[: len(y) // 6]] = True
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        x_train=x[~test_mask],
        y_train=y[~test_mask],
        x_test=x[test_mask],
        y_test=y[test_mask],
        classes=np.array(classes),
    )
    os.replace(tmp, cache)
    return load_npz(cache, "mini_imagenet")


def _synthetic(
    num_classes: int = 10, n_train: int = 2000, n_test: int = 500, size: int = 32, seed: int = 1234
) -> ArrayData:
    """Procedural, class-dependent images: each class is a grating with its own
    orientation, frequency and colour, with random phase, contrast and noise.
    Learnable by a small CNN in a few epochs; made in well under a second."""
    g = torch.Generator().manual_seed(seed)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=g)]
        theta = math.pi * y.float() / num_classes  # orientation per class
        freq = 2.0 + (y % 3).float()  # cycles per image
        phase = 2 * math.pi * torch.rand(n, generator=g)
        coords = torch.linspace(0, 1, size)
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")  # (S, S)
        proj = xx * torch.cos(theta)[:, None, None] + yy * torch.sin(theta)[:, None, None]  # (N, S, S)
        wave = torch.sin(2 * math.pi * freq[:, None, None] * proj + phase[:, None, None])
        hue = torch.stack([torch.cos(2 * math.pi * (y.float() / num_classes + k / 3)) for k in range(3)], 1)  # (N, 3)
        contrast = 0.5 + 0.5 * torch.rand(n, 1, 1, 1, generator=g)
        img = 0.5 + 0.1 * hue[:, :, None, None] + 0.25 * contrast * wave[:, None] * (1 + 0.5 * hue[:, :, None, None])
        img = img + 0.08 * torch.randn(img.shape, generator=g)
        return (img.clamp(0, 1) * 255).round().to(torch.uint8), y

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    return ArrayData("synthetic", x_train, y_train, x_test, y_test, num_classes, f"synthetic:seed={seed}")


def load_dataset(
    name: str,
    data_root: str | os.PathLike | None = None,
    source: str | os.PathLike | None = None,
    download: bool = True,
    image_size: int | None = None,
    split_seed: int = 0,
) -> ArrayData:
    """Load a named data set, from ``source`` (an .npz path) if given, else its default source."""
    if name not in DATASETS:
        from puppet.core.registry import did_you_mean

        raise DataError(
            f"unknown dataset {name!r}{did_you_mean(name, list(DATASETS))}; choose one of {', '.join(DATASETS)}"
        )
    info = DATASETS[name]
    if source:
        return load_npz(
            source, name, expected_classes=None if name == "mini_imagenet" else info.num_classes, image_size=image_size
        )
    if name == "synthetic":
        return _synthetic(num_classes=info.num_classes, size=image_size or info.image_size)
    root = resolve_data_root(data_root)
    if name == "mini_imagenet":
        return _mini_imagenet(root, image_size or info.image_size, split_seed)
    return _torchvision(name, root, download)


# Where each dataset's default source lives under data_root (torchvision's layout; mini-ImageNet: ours).
DEFAULT_FOLDERS = {
    "cifar10": "cifar-10-batches-py",
    "cifar100": "cifar-100-python",
    "fashion_mnist": "FashionMNIST/raw",
    "mini_imagenet": "mini_imagenet",
}


def source_status(name: str, source: str | None, data_root: str | os.PathLike | None, download: bool) -> str:
    """One line on where a dataset's images come from and how far that was checked (``validate``)."""
    if source:
        return f"{name}: {source} (checked: readable, expected layout)"
    if name == "synthetic":
        return f"{name}: generated (nothing to check)"
    folder = resolve_data_root(data_root) / DEFAULT_FOLDERS[name]
    if folder.exists():
        return f"{name}: {folder} (found; its files are read by the first run)"
    if download and name != "mini_imagenet":
        return f"{name}: not at {folder}; the first run downloads it (needs the internet; not checked here)"
    return f"{name}: not at {folder} and no download: its runs will fail"


def default_source_problem(name: str, data_root: str | os.PathLike | None, download: bool) -> tuple[str, bool]:
    """Pre-flight of a dataset read from its default source (no ``data_sources`` entry):
    ``(problem, fatal)``. A data_root that is a file is fatal; data that is absent and cannot
    be downloaded is reported but not fatal (the run becomes a status=error row, and the
    tables say "not run", as for mini-ImageNet in the paper profile without a local copy)."""
    if name == "synthetic":
        return "", False
    root = resolve_data_root(data_root)
    if root.exists() and not root.is_dir():
        return (
            f"{name}: data_root '{root}' is a file, not a folder; point data_root (or ${DATA_ROOT_ENV}) at a folder",
            True,
        )
    folder = DEFAULT_FOLDERS[name]
    if not (root / folder).exists() and (not download or name == "mini_imagenet"):
        how = "there is no download" if name == "mini_imagenet" else "download: false"
        return (
            f"{name}: no data at '{root / folder}' and {how}; its runs will fail (set data_sources.{name} to an .npz)",
            False,
        )
    return "", False


def balanced_order(labels: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """A seeded permutation that interleaves classes (round-robin over shuffled
    classes), so any prefix of it is as class-balanced as the pool allows."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=g)
    rank = torch.empty(len(labels), dtype=torch.long)
    for c in range(num_classes):
        members = perm[labels[perm] == c]
        rank[members] = torch.arange(len(members))
    # sort by rank within class, ties broken by the random permutation position
    position = torch.empty_like(rank)
    position[perm] = torch.arange(len(perm))
    key = rank * len(labels) + position
    return torch.argsort(key)
