"""Optional numba: ``njit`` compiles when numba imports, and is a no-op otherwise.

The torch path never needs numba; :data:`HAVE_NUMBA` tells the simulator
whether the compiled update kernel is available.
"""

from __future__ import annotations

import os

try:  # pragma: no cover - exercised implicitly
    if os.environ.get("RPUHW_NO_NUMBA"):
        raise ImportError("disabled by RPUHW_NO_NUMBA")
    import numba as _numba

    HAVE_NUMBA = True

    def njit(*args, **kwargs):
        """``numba.njit`` with rpuhw's defaults: cached, fastmath off (exactness), and the
        GIL released while a kernel runs (none touches Python objects), so that the
        background update thread (:mod:`rpuhw.sim.background`) runs alongside."""
        kwargs.setdefault("cache", True)
        kwargs.setdefault("nogil", True)
        return _numba.njit(*args, **kwargs)

    prange = _numba.prange
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False

    def njit(*args, **kwargs):
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]
        return lambda f: f

    prange = range
