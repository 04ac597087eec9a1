"""The part of a compiled kernel's cache key that numba leaves out: every source it reaches.

numba keys a cached kernel by its signature, the CPU, its own bytecode and the file that
defines it. A kernel also inlines or calls functions from other files (a device model's
step rule, the random streams, the normal generator, ...) and freezes the globals it reads
as constants; a change there goes unseen by numba, and stale machine code would be loaded.
:func:`source_digest` describes all of it:

* every Python function reached from the roots, through globals, closure cells and
  defaults, numba dispatchers included (with their compile options), transitively: its
  module, its name and the content of its source file (numba's ``@overload``
  implementations live in the same files as the functions they implement);
* the values of the constants it reads: numbers, strings, tuples, numpy arrays (by their
  bytes), classes and functions of numpy, numba and the standard library (by name);
* the versions of Python, numba, llvmlite and numpy.

Anything else (an object without a stable description, a function without a source file)
raises :class:`Unkeyable`: such a kernel is compiled afresh in every process, never cached.
The digest is the same in every process for the same sources and values, and independent
of where the sources live.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import os
import sys
import types
from collections.abc import Iterator

import numpy as np

FORMAT = 1
"""Version of this key's recipe: raising it retires every cached kernel."""

_UNTRACKED = frozenset(("numba", "numpy", "llvmlite")) | frozenset(sys.stdlib_module_names)
"""Top-level packages whose code is part of an installed version (in the key), not hashed."""

_SCALARS = (bool, int, float, complex, str, bytes, type(None), np.generic)


class Unkeyable(Exception):
    """A kernel reaches something that :func:`source_digest` cannot describe."""


@functools.cache
def _versions() -> str:
    import llvmlite
    import numba

    return (f"rpuhw kernel key {FORMAT}; python {sys.version}; numba {numba.__version__}; "
            f"llvmlite {llvmlite.__version__}; numpy {np.__version__}")


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    """sha256 of a file's content (memoised per path, modification time and size)."""
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def file_digest(path: str) -> str:
    """sha256 of the content of the source file ``path``."""
    st = os.stat(path)
    return _file_digest(path, st.st_mtime_ns, st.st_size)


def _tracked(module: str | None) -> bool:
    """Whether code of ``module`` is hashed (rpuhw, user code) rather than versioned."""
    return (module or "").partition(".")[0] not in _UNTRACKED


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    """``code`` and the code objects nested in it (inner functions, lambdas)."""
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def _is_dispatcher(value: object) -> bool:
    return hasattr(value, "py_func") and type(value).__module__.startswith("numba.")


class _Walker:
    """Collects the description of everything reachable from some roots."""

    def __init__(self) -> None:
        self.records: set[str] = set()
        self.seen: set[int] = set()

    def function(self, fn: types.FunctionType) -> None:
        if id(fn) in self.seen:
            return
        self.seen.add(id(fn))
        path = fn.__code__.co_filename
        if not os.path.isfile(path):
            raise Unkeyable(f"{fn.__qualname__}: no source file ({path})")
        self.records.add(f"function {fn.__module__}.{fn.__qualname__} {file_digest(path)}")
        names = {name for code in _codes(fn.__code__) for name in code.co_names}
        for name in sorted(names):
            if name in fn.__globals__:
                self.value(fn.__globals__[name], f"{fn.__module__}.{name}")
        for k, cell in enumerate(fn.__closure__ or ()):
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell
                raise Unkeyable(f"{fn.__qualname__}: empty closure cell") from None
            self.value(contents, f"{fn.__qualname__}.<cell {k}>")
        for k, default in enumerate(fn.__defaults__ or ()):
            self.value(default, f"{fn.__qualname__}.<default {k}>")

    def value(self, value: object, where: str) -> None:
        """Describe one value a function reads (a global, a cell, a default)."""
        if _is_dispatcher(value):
            options = sorted((k, repr(v)) for k, v in value.targetoptions.items())
            self.records.add(f"dispatcher {where} {options}")
            self.function(value.py_func)
        elif isinstance(value, types.FunctionType):
            if _tracked(value.__module__):
                self.function(value)
            else:
                self.records.add(f"{where} = function {value.__module__}.{value.__qualname__}")
        elif isinstance(value, types.ModuleType):
            path = getattr(value, "__file__", None)
            if _tracked(value.__name__) and path and os.path.isfile(path):
                self.records.add(f"{where} = module {value.__name__} {file_digest(path)}")
            else:
                self.records.add(f"{where} = module {value.__name__}")
        elif isinstance(value, _SCALARS):
            self.records.add(f"{where} = {type(value).__name__} {value!r}")
        elif isinstance(value, tuple):
            self.records.add(f"{where} = tuple of {len(value)}")
            for k, item in enumerate(value):
                self.value(item, f"{where}[{k}]")
        elif isinstance(value, np.ndarray):
            data = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
            self.records.add(f"{where} = ndarray {value.dtype} {value.shape} {data}")
        elif isinstance(value, enum.Enum):
            self.records.add(f"{where} = {value!r}")
        elif isinstance(value, type) or isinstance(value, (np.ufunc, types.BuiltinFunctionType)):
            module = getattr(value, "__module__", None) or ""
            name = getattr(value, "__qualname__", None) or value.__name__
            if _tracked(module) and isinstance(value, type):
                path = getattr(sys.modules.get(module), "__file__", None)
                if not path or not os.path.isfile(path):
                    raise Unkeyable(f"{where}: class {module}.{name} has no source file")
                self.records.add(f"{where} = class {module}.{name} {file_digest(path)}")
            else:
                self.records.add(f"{where} = {type(value).__name__} {module}.{name}")
        elif type(value).__module__.startswith("numba.core.types"):
            self.records.add(f"{where} = numba type {value!r}")
        else:
            raise Unkeyable(f"{where}: cannot describe a {type(value).__qualname__}")


def source_digest(*roots: object) -> str:
    """sha256 (hex) describing the functions ``roots`` (Python functions or numba
    dispatchers) and everything they reach (see the module doc).

    Raises:
        Unkeyable: something reached cannot be described; the message says what.
    """
    walker = _Walker()
    for k, root in enumerate(roots):
        walker.value(root, f"<root {k}>")
    h = hashlib.sha256(_versions().encode())
    for record in sorted(walker.records):
        h.update(b"\n" + record.encode())
    return h.hexdigest()
