"""Datasets for training: the embedded ``mnist5k`` subset and IDX (MNIST-format) files.

``load_dataset("mnist5k")`` loads the 5,000-image MNIST subset shipped in
``rpuhw/datasets/mnist5k.npz`` with a fixed, stratified 4,000 / 1,000 train/test
split; ``load_dataset("/path/to/dir")`` reads a folder with the standard MNIST /
Fashion-MNIST IDX file names.  :func:`epoch_order` gives the per-epoch training
order, a pure function of ``(seed, epoch)`` so that a resumed run sees the same
order.

The embedded file is produced from the CSV source with::

    python -m rpuhw.data --convert shared/data/mnist_5k.csv.gz rpuhw/datasets/mnist5k.npz
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError

__all__ = [
    "Dataset",
    "EMBEDDED",
    "convert_csv",
    "epoch_order",
    "load_dataset",
    "load_idx",
    "load_idx_dir",
]

#: Names of the datasets shipped inside the package.
EMBEDDED = ("mnist5k",)

_DATASETS_DIR = Path(__file__).resolve().parent / "datasets"
_GZIP_MAGIC = b"\x1f\x8b"

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# Fixed seed of the mnist5k split; deliberately not the user's seed.
_SPLIT_SEED = 0
_TRAIN_FRACTION = 0.8

# Domain-separation constant mixed into the epoch-order seed.
_EPOCH_ORDER_TAG = 0x5EED_0DE5


# --------------------------------------------------------------------------- IDX files


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), plain or gzip-compressed.

    Compression is detected from the gzip magic bytes, not from the file name.
    The result has the file's dimensions and its dtype in native byte order
    (``uint8`` for MNIST).  Raises :class:`ConfigError` naming the file for a
    missing or unreadable file, a wrong magic number, an unsupported type code
    or truncated / over-long data.
    """
    src = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError("file not found", source=src) from None
    except OSError as e:
        raise ConfigError(f"cannot read file: {e.strerror or e}", source=src) from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
                raw = f.read()
        except (OSError, EOFError) as e:
            raise ConfigError(f"corrupt gzip data: {e}", source=src) from None
    if len(raw) < 4:
        raise ConfigError(
            f"not an IDX file: {len(raw)} bytes, too short for the 4-byte magic number",
            source=src,
        )
    magic = int.from_bytes(raw[:4], "big")
    if raw[0] != 0 or raw[1] != 0:
        raise ConfigError(
            f"not an IDX file: wrong magic number 0x{magic:08X} "
            "(expected 0x000008NN, e.g. 0x00000801 labels, 0x00000803 images)",
            source=src,
        )
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ConfigError(
            f"unsupported IDX data type code 0x{code:02X} in magic number 0x{magic:08X} "
            f"(supported: {', '.join(f'0x{c:02X}' for c in _IDX_DTYPES)})",
            source=src,
        )
    if ndim == 0:
        raise ConfigError(f"IDX magic number 0x{magic:08X} declares 0 dimensions", source=src)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ConfigError(
            f"truncated IDX header: {ndim} dimensions need {header} bytes, file has {len(raw)}",
            source=src,
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got < expected:
        raise ConfigError(
            f"truncated IDX data: shape {list(shape)} needs {expected} bytes of data, "
            f"file has {got}",
            source=src,
        )
    if got > expected:
        raise ConfigError(
            f"IDX file has {got - expected} trailing bytes after shape {list(shape)} data",
            source=src,
        )
    arr = np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return arr.reshape(shape).astype(dtype.newbyteorder("="))


_IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        p = folder / name
        if p.is_file():
            return p
    # Some mirrors use "train-images.idx3-ubyte"; accept it too.
    alt = stem.replace("-idx", ".idx")
    for name in (alt, alt + ".gz"):
        p = folder / name
        if p.is_file():
            return p
    raise ConfigError(f"missing file '{stem}' (or '{stem}.gz')", source=str(folder))


def load_idx_dir(
    folder: str | os.PathLike,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read ``(train_images, train_labels, test_images, test_labels)`` from a folder.

    The folder must hold the standard MNIST / Fashion-MNIST names
    (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally
    with ``.gz``).  Images are ``[N, H, W]``, labels ``[N]``.
    """
    d = Path(folder)
    if not d.is_dir():
        raise ConfigError(
            "not a directory (expected 'mnist5k' or a folder with MNIST IDX files)",
            source=str(folder),
        )
    paths = {k: _find_idx(d, v) for k, v in _IDX_NAMES.items()}
    arrays = {k: load_idx(p) for k, p in paths.items()}
    for split in ("train", "test"):
        img, lab = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        ip, lp = paths[f"{split}_images"], paths[f"{split}_labels"]
        if img.ndim != 3:
            raise ConfigError(f"expected 3-D images [N, H, W], got shape {list(img.shape)}",
                              source=str(ip))
        if lab.ndim != 1:
            raise ConfigError(f"expected 1-D labels [N], got shape {list(lab.shape)}",
                              source=str(lp))
        if img.shape[0] != lab.shape[0]:
            raise ConfigError(
                f"{img.shape[0]} images in '{ip.name}' but {lab.shape[0]} labels in '{lp.name}'",
                source=str(d),
            )
    return (arrays["train_images"], arrays["train_labels"],
            arrays["test_images"], arrays["test_labels"])


# --------------------------------------------------------------------------- Dataset


@dataclass
class Dataset:
    """Train/test tensors: images float32 ``[N, 1, H, W]`` in [0, 1], labels int64 ``[N]``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    name: str

    @property
    def num_classes(self) -> int:
        labels = torch.cat([self.y_train, self.y_test])
        return int(labels.max().item()) + 1 if labels.numel() else 0

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, train={tuple(self.x_train.shape)}, "
                f"test={tuple(self.x_test.shape)})")


def _images_to_tensor(img: np.ndarray) -> torch.Tensor:
    if img.dtype == np.uint8:
        x = img.astype(np.float32) / np.float32(255.0)
    else:
        x = img.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1)


def _labels_to_tensor(lab: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(lab.astype(np.int64))


def _check_limit(value, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(f"must be a non-negative integer or None, got {value!r}", key=what)
    return int(value)


def _stratified_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified 80/20 split of ``labels`` (independent of any user seed)."""
    rng = np.random.Generator(np.random.PCG64(_SPLIT_SEED))
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(_TRAIN_FRACTION * len(idx)))
        train.append(idx[:k])
        test.append(idx[k:])
    train_idx = np.concatenate(train)
    test_idx = np.concatenate(test)
    return train_idx[rng.permutation(len(train_idx))], test_idx[rng.permutation(len(test_idx))]


def _load_embedded(name: str) -> tuple[np.ndarray, np.ndarray]:
    path = _DATASETS_DIR / f"{name}.npz"
    if not path.is_file():
        raise ConfigError("embedded dataset file is missing from the installation",
                          source=str(path))
    with np.load(path) as z:
        return z["images"], z["labels"]


def load_dataset(
    name_or_dir: str | os.PathLike,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load ``"mnist5k"`` (embedded) or a folder of MNIST-layout IDX files.

    ``mnist5k`` is split 4,000 train / 1,000 test, stratified per class with a
    fixed generator: the split never depends on ``seed``.  ``train_limit`` /
    ``test_limit`` keep the first N examples of each split (the embedded splits
    are shuffled, so a limit keeps the classes roughly balanced).  ``seed`` is
    accepted for interface stability; loading is deterministic and does not
    use it (use :func:`epoch_order` for the per-epoch shuffling).
    """
    del seed  # the data and split are fixed; only the epoch order is seeded
    train_limit = _check_limit(train_limit, "train_limit")
    test_limit = _check_limit(test_limit, "test_limit")
    key = str(name_or_dir)
    if key in EMBEDDED:
        images, labels = _load_embedded(key)
        tr, te = _stratified_split(labels)
        xtr, ytr, xte, yte = images[tr], labels[tr], images[te], labels[te]
        name = key
    else:
        xtr, ytr, xte, yte = load_idx_dir(name_or_dir)
        name = Path(name_or_dir).name or key
    if train_limit is not None:
        xtr, ytr = xtr[:train_limit], ytr[:train_limit]
    if test_limit is not None:
        xte, yte = xte[:test_limit], yte[:test_limit]
    return Dataset(
        x_train=_images_to_tensor(xtr),
        y_train=_labels_to_tensor(ytr),
        x_test=_images_to_tensor(xte),
        y_test=_labels_to_tensor(yte),
        name=name,
    )


def epoch_order(n: int, epoch: int, seed: int) -> torch.Tensor:
    """Training order (int64 permutation of ``range(n)``) for one epoch.

    A pure function of ``(n, seed, epoch)``: it uses its own generator and does
    not touch or depend on any global RNG state, so a resumed run replays the
    same order.
    """
    for v, what in ((n, "n"), (epoch, "epoch"), (seed, "seed")):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ConfigError(f"must be a non-negative integer, got {v!r}", key=what)
    ss = np.random.SeedSequence([_EPOCH_ORDER_TAG, int(seed), int(epoch)])
    perm = np.random.Generator(np.random.PCG64(ss)).permutation(int(n))
    return torch.from_numpy(perm.astype(np.int64))


# --------------------------------------------------------------------------- conversion


def convert_csv(src: str | os.PathLike, dst: str | os.PathLike) -> tuple[int, int]:
    """Convert a CSV (784 pixel columns 0-255, then the label; optional header line,
    plain or gzipped) to ``dst`` (``np.savez_compressed`` with uint8 ``images``
    ``[N, 28, 28]`` and uint8 ``labels`` ``[N]``; written with fixed zip timestamps so
    the output is byte-reproducible).  Returns ``(N, bytes written)``.
    """
    raw = Path(src).read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        raw = gzip.decompress(raw)
    lines = [ln for ln in raw.decode("ascii").splitlines() if ln.strip()]
    if lines and not lines[0].split(",")[0].strip().lstrip("-").isdigit():
        lines = lines[1:]  # header line
    rows = np.array([[int(v) for v in ln.split(",")] for ln in lines], dtype=np.int64)
    if rows.ndim != 2 or rows.shape[1] != 785:
        raise ConfigError(f"expected 785 columns (784 pixels + label), got shape {rows.shape}",
                          source=str(src))
    if rows.min() < 0 or rows[:, :784].max() > 255 or rows[:, 784].max() > 9:
        raise ConfigError("pixel values must be 0-255 and labels 0-9", source=str(src))
    images = rows[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    labels = rows[:, 784].astype(np.uint8)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    _savez_reproducible(dst, images=images, labels=labels)
    return len(labels), Path(dst).stat().st_size


def _savez_reproducible(dst: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Like ``np.savez_compressed`` but byte-identical across runs (fixed zip timestamps)."""
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rpuhw.data", description=__doc__.split("\n")[0])
    ap.add_argument("--convert", nargs=2, metavar=("SRC_CSV", "DST_NPZ"), required=True,
                    help="convert a CSV (784 pixels then label, optionally .gz) to an .npz")
    args = ap.parse_args(argv)
    n, size = convert_csv(*args.convert)
    print(f"wrote {args.convert[1]}: {n} images, {size} bytes")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
