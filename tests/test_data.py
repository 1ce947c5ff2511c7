"""Data: seeded disjoint splits, the npz loader, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from puppet.core.data import Batches, make_splits
from puppet.core.datasets import DataError, load_dataset, load_npz


def _write_npz(path, n_train=60, n_test=20, classes=3, size=8, channels=3):
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (n_train, size, size, channels), dtype=np.uint8),
        y_train=np.arange(n_train) % classes,
        x_test=rng.integers(0, 256, (n_test, size, size, channels), dtype=np.uint8),
        y_test=np.arange(n_test) % classes,
        classes=np.array([f"c{i}" for i in range(classes)]),
    )
    return path


def test_npz_loader_layout(tmp_path):
    data = load_npz(_write_npz(tmp_path / "d.npz"), "toy")
    assert data.x_train.shape == (60, 3, 8, 8) and data.x_train.dtype == torch.uint8
    assert data.num_classes == 3 and data.source.startswith("npz:")


def test_npz_grey_images_get_a_channel_axis(tmp_path):
    path = tmp_path / "g.npz"
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (10, 8, 8), dtype=np.uint8),
        y_train=np.arange(10) % 2,
        x_test=rng.integers(0, 256, (4, 8, 8), dtype=np.uint8),
        y_test=np.arange(4) % 2,
    )
    assert load_npz(path, "toy").x_train.shape == (10, 1, 8, 8)


def test_splits_are_seeded_disjoint_and_balanced(tmp_path):
    data = load_npz(_write_npz(tmp_path / "d.npz", n_train=90), "toy")
    a = make_splits(data, train_size=30, val_size=15, split_seed=1)
    b = make_splits(data, train_size=30, val_size=15, split_seed=1)
    c = make_splits(data, train_size=30, val_size=15, split_seed=2)
    assert torch.equal(a.train_index, b.train_index) and torch.equal(a.val_index, b.val_index)
    assert not torch.equal(a.train_index, c.train_index)
    assert not set(a.train_index.tolist()) & set(a.val_index.tolist())
    assert a.y_train.bincount().tolist() == [10, 10, 10]
    assert a.y_val.bincount().tolist() == [5, 5, 5]


def test_split_too_large_is_a_clear_error(tmp_path):
    data = load_npz(_write_npz(tmp_path / "d.npz"), "toy")
    with pytest.raises(DataError, match="lower them in config"):
        make_splits(data, train_size=60, val_size=10)


def test_missing_npz_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="no file at"):
        load_dataset("cifar10", source=tmp_path / "nope.npz")


def test_corrupt_npz_is_one_line(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", source=bad)
    assert "corrupt" in str(err.value) and "\n" not in str(err.value)


def test_npz_with_wrong_class_count_is_rejected(tmp_path):
    with pytest.raises(DataError, match="names 3 classes but cifar10 has 10"):
        load_dataset("cifar10", source=_write_npz(tmp_path / "d.npz"))


def test_offline_torchvision_dataset_names_files_and_fix(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("cifar100", data_root=tmp_path, download=False)
    msg = str(err.value)
    assert "cifar-100-python" in msg and "data_sources.cifar100" in msg and "\n" not in msg


def test_data_root_env_overrides_config(tmp_path, monkeypatch):
    from puppet.core.datasets import resolve_data_root

    monkeypatch.setenv("PUPPET_DATA_ROOT", str(tmp_path))
    assert resolve_data_root("elsewhere") == tmp_path


def test_unknown_dataset_lists_choices():
    with pytest.raises(DataError, match="cifar10"):
        load_dataset("imagenet22k")


def test_synthetic_is_deterministic_and_class_dependent():
    a, b = load_dataset("synthetic"), load_dataset("synthetic")
    assert torch.equal(a.x_train, b.x_train)
    means = torch.stack([a.x_train[a.y_train == c].float().mean(0) for c in range(a.num_classes)])
    assert (means[0] - means[5]).abs().mean() > 5  # class templates differ


def test_real_fashion_mnist_reads_offline():
    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / "FashionMNIST" / "raw").is_dir():
        pytest.skip("../shared/data/FashionMNIST is absent")
    data = load_dataset("fashion_mnist", data_root=SHARED_DATA, download=False)
    assert data.x_train.shape == (60000, 1, 28, 28) and data.num_classes == 10


def test_a_partial_fashion_mnist_copy_names_its_missing_file_and_downloads_nothing(tmp_path, monkeypatch):
    import urllib.request

    def no_network(*args, **kwargs):
        raise AssertionError("a partial copy tried the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"")
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(b"")  # a compressed file counts as present
    with pytest.raises(DataError, match=r"lacks t10k-labels-idx1-ubyte \(or the \.gz of each\)") as err:
        load_dataset("fashion_mnist", data_root=tmp_path, download=True)
    assert "\n" not in str(err.value) and "train-images" not in str(err.value).split("lacks")[1]


def test_mini_imagenet_folder_layout(tmp_path):
    from PIL import Image

    folder = tmp_path / "mini_imagenet"
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, classes in (("train", ["n01", "n02"]), ("val", ["n03"]), ("test", ["n04"])):
        rows = ["filename,label"]
        for c in classes:
            for i in range(6):
                name = f"{c}_{i}.jpg"
                Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / "images" / name)
                rows.append(f"{name},{c}")
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")
    data = load_dataset("mini_imagenet", data_root=tmp_path, image_size=16)
    assert data.num_classes == 4 and data.x_train.shape[1:] == (3, 16, 16)
    assert len(data.y_train) + len(data.y_test) == 24 and len(data.y_test) == 4
    assert (folder / "cache_16px.npz").is_file()  # decoded once, cached


def test_batches_resume_order_and_normalisation():
    x = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    y = torch.arange(10)
    b = Batches(x, y, 4, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), shuffle=True, seed=3)
    first = [yy.tolist() for _, yy in b.epoch(2)]
    again = [yy.tolist() for _, yy in b.epoch(2)]
    assert first == again and sorted(sum(first, [])) == list(range(10))
    xb, _ = next(iter(Batches(x, y, 10, (0.5,) * 3, (0.25,) * 3)))
    assert torch.allclose(xb, (x.float() / 255 - 0.5) / 0.25)
