"""Tests for rpuhw.data: embedded mnist5k, IDX reader, splits and epoch order."""

from __future__ import annotations

import gzip
import struct
from importlib import resources

import numpy as np
import pytest
import torch

from rpuhw.data import (
    Dataset,
    convert_csv,
    epoch_order,
    load_dataset,
    load_idx,
    load_idx_dir,
)
from rpuhw.errors import ConfigError

# --------------------------------------------------------------------------- helpers


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    """IDX encoding from the format spec: 0x00 0x00 <type> <ndim>, big-endian u32 dims, data."""
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    header = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + np.ascontiguousarray(arr, dtype=dtypes[code]).tobytes()


def write_idx(path, arr: np.ndarray, gz: bool = False, code: int = 0x08):
    data = idx_bytes(arr, code)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_mnist_dir(folder, n_train=12, n_test=5, gz_train=False, gz_test=True, seed=1):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        gz = gz_train if name.startswith("train") else gz_test
        write_idx(folder / (name + (".gz" if gz else "")), arr, gz=gz)
    return arrays


@pytest.fixture(scope="module")
def mnist5k() -> Dataset:
    return load_dataset("mnist5k")


def _keys(x: torch.Tensor) -> set[bytes]:
    return {bytes(row) for row in (x * 255).round().to(torch.uint8).reshape(len(x), -1).numpy()}


# --------------------------------------------------------------------------- embedded set


def test_mnist5k_shapes_dtypes_ranges(mnist5k):
    d = mnist5k
    assert d.name == "mnist5k"
    assert d.x_train.shape == (4000, 1, 28, 28) and d.x_test.shape == (1000, 1, 28, 28)
    assert d.y_train.shape == (4000,) and d.y_test.shape == (1000,)
    assert d.x_train.dtype == torch.float32 and d.x_test.dtype == torch.float32
    assert d.y_train.dtype == torch.int64 and d.y_test.dtype == torch.int64
    for x in (d.x_train, d.x_test):
        assert x.min() == 0.0 and x.max() == 1.0
    for y in (d.y_train, d.y_test):
        assert y.min() == 0 and y.max() == 9
    assert d.num_classes == 10


def test_mnist5k_stratified_split(mnist5k):
    with (resources.files("rpuhw.datasets") / "mnist5k.npz").open("rb") as f:
        raw = np.load(f)
        raw = {"labels": raw["labels"]}
    total = np.bincount(raw["labels"], minlength=10)
    tr = np.bincount(mnist5k.y_train.numpy(), minlength=10)
    te = np.bincount(mnist5k.y_test.numpy(), minlength=10)
    assert (tr > 0).all() and (te > 0).all()
    np.testing.assert_array_equal(tr + te, total)
    assert (np.abs(tr - 0.8 * total) <= 1).all()
    assert (np.abs(te - 0.2 * total) <= 1).all()
    # splits are shuffled, not sorted by label
    assert (np.diff(mnist5k.y_train.numpy()) != 0).sum() > 1000


def test_mnist5k_no_image_in_both_splits(mnist5k):
    assert not _keys(mnist5k.x_train) & _keys(mnist5k.x_test)


def test_mnist5k_split_independent_of_seed_and_call(mnist5k):
    for seed in (0, 1, 12345):
        other = load_dataset("mnist5k", seed=seed)
        assert torch.equal(other.x_train, mnist5k.x_train)
        assert torch.equal(other.y_train, mnist5k.y_train)
        assert torch.equal(other.x_test, mnist5k.x_test)
        assert torch.equal(other.y_test, mnist5k.y_test)


def test_limits_take_prefix_and_keep_classes(mnist5k):
    d = load_dataset("mnist5k", train_limit=500, test_limit=100, seed=3)
    assert d.x_train.shape == (500, 1, 28, 28) and d.y_test.shape == (100,)
    assert torch.equal(d.x_train, mnist5k.x_train[:500])
    assert torch.equal(d.y_test, mnist5k.y_test[:100])
    counts = np.bincount(d.y_train.numpy(), minlength=10)
    assert counts.min() >= 25 and counts.max() <= 75  # roughly balanced (50 each)
    assert load_dataset("mnist5k", train_limit=0).x_train.shape == (0, 1, 28, 28)
    big = load_dataset("mnist5k", train_limit=10**6)
    assert big.x_train.shape[0] == 4000
    with pytest.raises(ConfigError, match="train_limit"):
        load_dataset("mnist5k", train_limit=-1)


def test_convert_csv_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    pix = rng.integers(0, 256, (7, 784))
    lab = rng.integers(0, 10, 7)
    lines = ["p" + ",p".join(map(str, range(784))) + ",label"]  # header line
    lines += [",".join(map(str, [*p, lb])) for p, lb in zip(pix, lab, strict=True)]
    src = tmp_path / "s.csv.gz"
    src.write_bytes(gzip.compress("\n".join(lines).encode()))
    n, size = convert_csv(src, tmp_path / "a.npz")
    assert n == 7 and size > 0
    z = np.load(tmp_path / "a.npz")
    assert z["images"].dtype == np.uint8 and z["labels"].dtype == np.uint8
    np.testing.assert_array_equal(z["images"], pix.reshape(7, 28, 28))
    np.testing.assert_array_equal(z["labels"], lab)
    convert_csv(src, tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


# --------------------------------------------------------------------------- epoch order


def test_epoch_order():
    n = 1000
    o = epoch_order(n, epoch=0, seed=7)
    assert o.dtype == torch.int64 and o.shape == (n,)
    assert torch.equal(torch.sort(o).values, torch.arange(n))
    assert torch.equal(o, epoch_order(n, 0, 7))
    assert not torch.equal(o, epoch_order(n, 1, 7))
    assert not torch.equal(o, epoch_order(n, 0, 8))
    assert not torch.equal(o, torch.arange(n))


def test_epoch_order_independent_of_global_rng():
    torch.manual_seed(0)
    np.random.seed(0)
    a = epoch_order(100, 3, 5)
    torch.manual_seed(99)
    np.random.seed(99)
    torch.rand(10)
    b = epoch_order(100, 3, 5)
    assert torch.equal(a, b)


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip_images_and_labels(tmp_path, gz):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    lab = rng.integers(0, 10, 4, dtype=np.uint8)
    # deliberately misleading suffixes: gzip must be detected from the content
    ip = write_idx(tmp_path / "images.bin", img, gz=gz)
    lp = write_idx(tmp_path / ("labels.gz" if not gz else "labels.raw"), lab, gz=gz)
    assert ip.read_bytes()[:2] == b"\x1f\x8b" if gz else ip.read_bytes()[:4] == b"\0\0\x08\x03"
    r_img, r_lab = load_idx(ip), load_idx(lp)
    assert r_img.dtype == np.uint8 and r_img.shape == (4, 28, 28)
    assert r_lab.dtype == np.uint8 and r_lab.shape == (4,)
    np.testing.assert_array_equal(r_img, img)
    np.testing.assert_array_equal(r_lab, lab)


def test_idx_other_dtype(tmp_path):
    a = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    r = load_idx(write_idx(tmp_path / "x", a, code=0x0C))
    assert r.dtype == np.int32 and r.dtype.isnative
    np.testing.assert_array_equal(r, a)


def test_load_idx_dir_and_load_dataset_dir(tmp_path):
    folder = tmp_path / "fashion"
    arrays = make_mnist_dir(folder, n_train=12, n_test=5)
    xtr, ytr, xte, yte = load_idx_dir(folder)
    np.testing.assert_array_equal(xtr, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(yte, arrays["t10k-labels-idx1-ubyte"])

    d = load_dataset(str(folder))
    assert d.name == "fashion"
    assert d.x_train.shape == (12, 1, 28, 28) and d.x_test.shape == (5, 1, 28, 28)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0
    np.testing.assert_allclose(
        d.x_test.numpy()[:, 0], arrays["t10k-images-idx3-ubyte"].astype(np.float32) / 255
    )
    np.testing.assert_array_equal(d.y_train.numpy(), arrays["train-labels-idx1-ubyte"])
    lim = load_dataset(folder, train_limit=3, test_limit=2)
    assert lim.y_train.shape == (3,) and lim.y_test.shape == (2,)
    np.testing.assert_array_equal(lim.y_train.numpy(), arrays["train-labels-idx1-ubyte"][:3])


# --------------------------------------------------------------------------- errors


def test_error_missing_file(tmp_path):
    p = tmp_path / "nope-idx1-ubyte"
    with pytest.raises(ConfigError, match="nope-idx1-ubyte") as e:
        load_idx(p)
    assert "not found" in str(e.value)


def test_error_wrong_magic(tmp_path):
    p = tmp_path / "bad.idx"
    p.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 2) + b"\x00\x01")
    with pytest.raises(ConfigError, match="bad.idx") as e:
        load_idx(p)
    assert "magic" in str(e.value) and "0x12340801" in str(e.value)
    gzp = tmp_path / "text.gz"
    gzp.write_bytes(gzip.compress(b"hello world, not idx"))
    with pytest.raises(ConfigError, match="text.gz.*magic"):
        load_idx(gzp)


def test_error_unsupported_dtype(tmp_path):
    p = tmp_path / "weird"
    p.write_bytes(bytes([0, 0, 0x07, 1]) + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(ConfigError, match="weird.*unsupported IDX data type code 0x07"):
        load_idx(p)


@pytest.mark.parametrize("gz", [False, True])
def test_error_truncated(tmp_path, gz):
    data = idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))[:-10]
    p = tmp_path / "short-images"
    p.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(ConfigError, match="short-images.*truncated"):
        load_idx(p)
    hdr = tmp_path / "short-header"
    hdr.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">I", 3))
    with pytest.raises(ConfigError, match="short-header.*truncated"):
        load_idx(hdr)
    tiny = tmp_path / "tiny"
    tiny.write_bytes(b"\x00\x00")
    with pytest.raises(ConfigError, match="tiny"):
        load_idx(tiny)


def test_error_missing_directory_file(tmp_path):
    folder = tmp_path / "mnist"
    make_mnist_dir(folder, gz_test=True)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ConfigError) as e:
        load_dataset(str(folder))
    msg = str(e.value)
    assert str(folder) in msg and "t10k-labels-idx1-ubyte" in msg


def test_error_not_a_directory(tmp_path):
    with pytest.raises(ConfigError, match="no-such-dataset"):
        load_dataset(str(tmp_path / "no-such-dataset"))
    with pytest.raises(ConfigError, match="mnist6k"):
        load_dataset("mnist6k")


def test_error_count_mismatch(tmp_path):
    folder = tmp_path / "m"
    make_mnist_dir(folder, gz_test=False)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(4, dtype=np.uint8))
    with pytest.raises(ConfigError, match="5 images.*4 labels"):
        load_idx_dir(folder)
