"""Keep ``torch.optim`` from importing ``torch._dynamo`` (about a second) until it is used.

Several ``torch.optim.Optimizer`` methods (``add_param_group``, ``zero_grad``,
``state_dict``, ...) are wrapped by ``torch._compile._disable_dynamo``, which imports
``torch._dynamo`` on its first call only to mark the method "not to be traced by
torch.compile". Constructing any optimizer thus costs an import as long as
``import torch`` itself, in every run.

:func:`defer` gives each such method the disabled variant torch would build, but built
only once ``torch._dynamo`` has been imported by someone else: until then nothing can be
tracing (tracing needs that module), so calling the plain method is what the disabled one
would do. With torch's internals changed (another version), :func:`defer` leaves them
alone.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

_ATTR = "__dynamo_disable"  # where torch's wrapper caches the disabled function
_done = False


def _deferred(fn: Callable[..., Any], recursive: bool) -> Callable[..., Any]:
    """``fn`` while ``torch._dynamo`` is not imported; torch's disabled ``fn`` after."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if "torch._dynamo" not in sys.modules:
            return fn(*args, **kwargs)
        import torch._dynamo

        disabled = torch._dynamo.disable(fn, recursive, wrapping=False)
        setattr(fn, _ATTR, disabled)  # torch's wrapper calls this from now on
        return disabled(*args, **kwargs)

    return call


def defer() -> int:
    """Defer the import for ``torch.optim.Optimizer``'s methods; returns how many
    methods were deferred (0 where torch's wrapper is not recognised). Idempotent."""
    global _done
    if _done or "torch._dynamo" in sys.modules:
        return 0
    import torch
    import torch._compile as tc

    probe = getattr(tc, "_disable_dynamo", None)
    if probe is None:
        return 0
    code = probe(lambda: None).__code__  # the code object of torch's wrapper
    n = 0
    for klass in (torch.optim.Optimizer,):
        for attr in vars(klass).values():
            wrapped = getattr(attr, "__wrapped__", None)
            if getattr(attr, "__code__", None) is not code or wrapped is None:
                continue
            cells = dict(zip(attr.__code__.co_freevars,
                             (c.cell_contents for c in attr.__closure__ or ()), strict=True))
            if cells.get("fn") is not wrapped or getattr(wrapped, _ATTR, None) is not None:
                continue
            setattr(wrapped, _ATTR, _deferred(wrapped, bool(cells.get("recursive", True))))
            n += 1
    _done = True
    return n


def sgd_step(opt: Any) -> None:
    """``torch.optim.SGD.step(opt)`` without importing ``torch._dynamo``.

    torch's ``step`` wrapper imports it on every call only to place graph breaks for
    torch.compile; while it is not imported nothing traces, and the wrapped ``step``
    (called under ``torch.no_grad``, as the wrapper would for a non-differentiable
    optimizer) is the same computation."""
    import torch

    plain = getattr(torch.optim.SGD.step, "__wrapped__", None)
    if ("torch._dynamo" in sys.modules or plain is None
            or opt.defaults.get("differentiable", False)):
        torch.optim.SGD.step(opt)
        return
    with torch.no_grad():
        plain(opt)
