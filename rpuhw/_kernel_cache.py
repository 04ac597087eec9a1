"""rpuhw's on-disk cache of compiled kernels, across runs and processes.

Every kernel compiled through :func:`rpuhw._jit.njit` (``cache=True``, the default) gets a
:class:`LazyCache` instead of numba's own: on first use it becomes a :class:`KeyedCache`,
numba's file cache with three changes:

* **where**: one folder, :func:`cache_dir` (``$RPUHW_CACHE_DIR``; else ``rpuhw`` under
  ``$NUMBA_CACHE_DIR`` when that is set; else ``~/.cache/rpuhw``), subfolder ``numba/``;
* **key**: numba's (signature, CPU, the kernel's bytecode) plus
  :func:`rpuhw._kernel_key.source_digest` of the kernel: every source file and constant it
  reaches and the Python/numba/llvmlite/numpy versions, so that a changed step rule or
  inlined helper recompiles (numba itself checks only the kernel's own file). A kernel
  whose digest cannot be formed is compiled in every process and never cached;
* **concurrency**: a save writes the data file under a fresh name first, then the index,
  holding a lock file, so that processes that start together (a sweep, test subprocesses)
  never load an index entry whose data file is missing, half-written or another entry's.

The simulator's per-model kernels are one source file compiled once per device model:
:func:`bound_module` executes that file as a separate module with the model's rule bound
as a global, so that numba caches each model's kernels (with its rule inlined) on disk.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import logging
import os
import sys
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from numba.core.caching import (
    CompileResultCacheImpl,
    FunctionCache,
    IndexDataCacheFile,
    NullCache,
    _Cache,
    _CacheLocator,
    _SourceFileBackedLocatorMixin,
)

from rpuhw._kernel_key import Unkeyable, source_digest

log = logging.getLogger("rpuhw.kernels")


def cache_dir() -> Path:
    """The folder of rpuhw's compiled kernels: ``$RPUHW_CACHE_DIR``, else ``rpuhw`` under
    ``$NUMBA_CACHE_DIR`` when set, else ``rpuhw`` under ``$XDG_CACHE_HOME`` (``~/.cache``)."""
    if os.environ.get("RPUHW_CACHE_DIR"):
        return Path(os.environ["RPUHW_CACHE_DIR"]).expanduser()
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"]).expanduser() / "rpuhw"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "rpuhw"


class _Locator(_SourceFileBackedLocatorMixin, _CacheLocator):
    """numba's files of a kernel in ``cache_dir()/numba/<source folder>_<hash of its path>``."""

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = str(cache_dir() / "numba" / self.get_suitable_cache_subpath(py_file))

    def get_cache_path(self) -> str:
        return self._cache_path


class _Impl(CompileResultCacheImpl):
    # rpuhw's folder first; numba's usual places when it is not writable
    _locator_classes = [_Locator, *CompileResultCacheImpl._locator_classes]


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """An exclusive lock on the file ``path`` between processes (none where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, "ab") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class _IndexFile(IndexDataCacheFile):
    """numba's index and data files, saved safely against concurrent processes (see the
    module doc); data files that no index entry names any more are removed."""

    def __init__(self, cache_path: str, filename_base: str, source_stamp: object):
        super().__init__(cache_path, filename_base, source_stamp)
        self._base = filename_base

    def save(self, key, data) -> None:
        with _locked(os.path.join(self._cache_path, "save.lock")):
            overloads = self._load_index()
            name = f"{self._base}.{uuid.uuid4().hex[:16]}.nbc"
            self._save_data(name, data)  # complete (written to a temporary, then renamed) ...
            overloads[key] = name
            self._save_index(overloads)  # ... before an index names it
            self._prune(set(overloads.values()))

    def _prune(self, keep: set[str]) -> None:
        for entry in os.listdir(self._cache_path):
            if entry.startswith(self._base + ".") and entry.endswith(".nbc") and entry not in keep:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self._cache_path, entry))


class KeyedCache(FunctionCache):
    """numba's per-function file cache in :func:`cache_dir`, keyed by the sources the
    kernel reaches as well (see the module doc)."""

    _impl_class = _Impl

    def __init__(self, py_func):
        super().__init__(py_func)
        self._cache_file = _IndexFile(self._cache_path, self._impl.filename_base,
                                      self._impl.locator.get_source_stamp())
        self.digest: str | None = None
        """The kernel's source digest, formed on its first load (None: not cached)."""

    def _form_digest(self) -> str | None:
        try:
            self.digest = source_digest(self._py_func)
        except Unkeyable as exc:
            log.info("not caching %s: %s", self._py_func.__qualname__, exc)
            self.digest = None
        return self.digest

    def _index_key(self, sig, codegen):
        return (*super()._index_key(sig, codegen), self.digest)

    def load_overload(self, sig, target_context):
        if self._form_digest() is None:
            return None
        return super().load_overload(sig, target_context)

    def save_overload(self, sig, data) -> None:
        if self.digest is None:
            return
        try:
            super().save_overload(sig, data)
        except OSError as exc:  # a full or read-only disk costs a compile, never a run
            warnings.warn(f"rpuhw: could not cache a compiled kernel in {self._cache_path}: "
                          f"{exc}", RuntimeWarning, stacklevel=2)


class LazyCache(_Cache):
    """A :class:`KeyedCache` made on first use, so that importing a module of kernels
    touches no file; a kernel numba cannot cache anywhere (no source file, no writable
    folder) is simply not cached."""

    def __init__(self, py_func):
        self._py_func = py_func
        self._cache: _Cache | None = None

    @property
    def cache(self) -> _Cache:
        """The cache behind: a :class:`KeyedCache`, or numba's ``NullCache``."""
        if self._cache is None:
            try:
                self._cache = KeyedCache(self._py_func)
            except (RuntimeError, OSError) as exc:  # numba: "no locator available"
                log.info("not caching %s: %s", self._py_func.__qualname__, exc)
                self._cache = NullCache()
        return self._cache

    @property
    def keyed(self) -> bool:
        """Whether the kernel's compiled code goes to disk (known after its first load)."""
        return isinstance(self._cache, KeyedCache) and self._cache.digest is not None

    @property
    def cache_path(self):
        return self.cache.cache_path

    def load_overload(self, sig, target_context):
        return self.cache.load_overload(sig, target_context)

    def save_overload(self, sig, data):
        self.cache.save_overload(sig, data)

    def enable(self):
        self.cache.enable()

    def disable(self):
        self.cache.disable()

    def flush(self):
        self.cache.flush()


def enable(dispatcher) -> None:
    """Cache ``dispatcher``'s compiled code in :func:`cache_dir` (instead of numba's cache)."""
    dispatcher._cache = LazyCache(dispatcher.py_func)


_serial = itertools.count()


def bound_module(template: str, **bindings: object) -> ModuleType:
    """A fresh module executed from the source file of the module ``template``, with
    ``bindings`` set as its globals (after its own code ran; numba reads globals when it
    compiles).

    Its name is ``<template>.bound_<digest>``, from the source digest of the bindings: the
    same bindings give the same module in every process, which numba needs to load the
    module's kernels from the cache (and their machine code needs distinct names per
    binding). Bindings without a digest get a name of their own in this process (their
    kernels are not cached). Asking twice for the same name returns the module made first.
    """
    try:
        tag = source_digest(*bindings.values())[:20]
    except Unkeyable:
        tag = f"p{os.getpid()}_{next(_serial)}"
    name = f"{template}.bound_{tag}"
    if name in sys.modules:
        return sys.modules[name]
    origin = importlib.util.find_spec(template).origin
    spec = importlib.util.spec_from_file_location(name, origin)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    for key, value in bindings.items():
        setattr(module, key, value)
    return module
