"""im2col / col2im for the analog convolution, with the bias column built in.

A convolution on an array is one MVM per output position: the position's input patch,
flattened in torch's weight order (channel, kernel row, kernel column), plus a constant
1 for the bias column. :func:`im2col` writes these rows for a batch of images in one
pass (image-major, then output row, then output column), :func:`col2im` adds patch
gradients back onto the input pixels (the adjoint). Compiled with numba when it is
installed; otherwise ``F.unfold`` / ``F.fold`` give the same numbers.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from rpuhw._jit import HAVE_NUMBA, njit


def out_size(h: int, w: int, kernel: tuple[int, int], stride: tuple[int, int],
             padding: tuple[int, int]) -> tuple[int, int]:
    """Output height and width of a convolution (no dilation)."""
    return ((h + 2 * padding[0] - kernel[0]) // stride[0] + 1,
            (w + 2 * padding[1] - kernel[1]) // stride[1] + 1)


@njit
def _patch_kernel(x, kh, kw, sh, sw, ph, pw, ho, wo, bias, out, adjoint):
    """im2col: ``out[r, k] = x[pixel]`` (0 in the padding), bias column 1; with
    ``adjoint`` the other way: ``x[pixel] += out[r, k]`` (col2im, x zeroed first)."""
    n, c, h, w = x.shape
    if adjoint:
        x[:] = 0.0
    for b in range(n):
        for oy in range(ho):
            for ox in range(wo):
                r = (b * ho + oy) * wo + ox
                y0, x0 = oy * sh - ph, ox * sw - pw
                inside = y0 >= 0 and x0 >= 0 and y0 + kh <= h and x0 + kw <= w
                k = 0
                for ch in range(c):
                    for i in range(kh):
                        y = y0 + i
                        if inside:  # the common case: no bounds test per pixel
                            if adjoint:
                                for j in range(kw):
                                    x[b, ch, y, x0 + j] += out[r, k + j]
                            else:
                                for j in range(kw):
                                    out[r, k + j] = x[b, ch, y, x0 + j]
                            k += kw
                            continue
                        for j in range(kw):
                            xx = x0 + j
                            hit = 0 <= y < h and 0 <= xx < w
                            if adjoint:
                                if hit:
                                    x[b, ch, y, xx] += out[r, k]
                            else:
                                out[r, k] = x[b, ch, y, xx] if hit else 0.0
                            k += 1
                if bias and not adjoint:
                    out[r, k] = 1.0


def im2col(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
           padding: tuple[int, int], bias: bool) -> torch.Tensor:
    """Patches of ``x [N, C, H, W]`` as ``[N * Ho * Wo, C * kh * kw (+ 1)]`` float32,
    with a last column of ones when ``bias``."""
    n, c, h, w = x.shape
    ho, wo = out_size(h, w, kernel, stride, padding)
    if not HAVE_NUMBA:
        cols = F.unfold(x.float(), kernel, padding=padding, stride=stride)
        rows = cols.transpose(1, 2).reshape(n * ho * wo, -1)
        return torch.cat([rows, torch.ones(rows.shape[0], 1)], 1) if bias else rows
    xa = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
    out = np.empty((n * ho * wo, c * kernel[0] * kernel[1] + int(bias)), np.float32)
    _patch_kernel(xa, kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1],
                  ho, wo, bias, out, False)
    return torch.from_numpy(out)


def col2im(z: torch.Tensor, shape: tuple[int, int, int, int], kernel: tuple[int, int],
           stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """Adjoint of :func:`im2col`: patch gradients ``z [N * Ho * Wo, >= C * kh * kw]``
    (a bias column is ignored) summed onto an image gradient of ``shape``."""
    n, c, h, w = shape
    ho, wo = out_size(h, w, kernel, stride, padding)
    fan_in = c * kernel[0] * kernel[1]
    if not HAVE_NUMBA:
        cols = z[:, :fan_in].reshape(n, ho * wo, fan_in).transpose(1, 2)
        return F.fold(cols, (h, w), kernel, padding=padding, stride=stride)
    za = np.ascontiguousarray(z.detach().to("cpu", torch.float32).numpy())
    out = np.empty((n, c, h, w), np.float32)
    _patch_kernel(out, kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1],
                  ho, wo, False, za, True)
    return torch.from_numpy(out)
