"""Optional numba: ``njit`` compiles when numba imports, and is a no-op otherwise.

The torch path never needs numba; :data:`HAVE_NUMBA` tells the simulator
whether the compiled update kernel is available. Kernels compiled with ``cache=True``
(the default) are cached on disk in rpuhw's own folder, keyed by every source they reach
(:mod:`rpuhw._kernel_cache`); the first real compile of a process is announced once
(:mod:`rpuhw._compile_notice`).
"""

from __future__ import annotations

import os

try:  # pragma: no cover - exercised implicitly
    if os.environ.get("RPUHW_NO_NUMBA"):
        raise ImportError("disabled by RPUHW_NO_NUMBA")
    import numba as _numba

    HAVE_NUMBA = True

    def njit(*args, **kwargs):
        """``numba.njit`` with rpuhw's defaults: cached on disk by
        :mod:`rpuhw._kernel_cache` (``cache=False`` to compile in every process),
        fastmath off (exactness), and the GIL released while a kernel runs (none touches
        Python objects), so that the background update thread
        (:mod:`rpuhw.sim.background`) runs alongside."""
        cache = kwargs.pop("cache", True)
        kwargs.setdefault("nogil", True)

        def wrap(func):
            dispatcher = _numba.njit(**kwargs)(func)
            if cache and hasattr(dispatcher, "py_func"):  # not under NUMBA_DISABLE_JIT
                _kernel_cache.enable(dispatcher)
            return dispatcher

        if len(args) == 1 and callable(args[0]):
            return wrap(args[0])
        if args:
            raise TypeError("rpuhw._jit.njit: signatures are not supported (lazy compile)")
        return wrap

    prange = _numba.prange
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False

    def njit(*args, **kwargs):
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]
        return lambda f: f

    prange = range

if HAVE_NUMBA:  # pragma: no branch
    from rpuhw import _compile_notice, _kernel_cache

    _compile_notice.install()
