"""Weight quantizers: UAQ, K-Means-C, K-Means-A for any bits 2-8, vectorised, CPU or CUDA, and
their registration in `quant.methods` (where another method registers the same way).

All three return a `QuantizedTensor`: uint8 codes in [0, 2^b) plus the stored floats
(scale/zero or codebook), rounded to fp16 because that is what is stored and counted
(16 bits per float in the size accounting). `dequantize()` rebuilds the weight exactly from
what is stored; nothing else is kept.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from quant.kmeans import assign, kmeans_1d
from quant.methods import QuantMethod, get_method, register_method
from quant.options import Option, parse_option

UAQ_SHRINKS: tuple[float, ...] = tuple(round(1.0 - 0.1 * i, 1) for i in range(10))  # 1.0 .. 0.1
UAQ_NORM_P = 2.4
_CHUNK_ELEMENTS = 1 << 24  # bound on temporaries per row-chunk (~64 MB of float32)


@dataclass
class QuantizedTensor:
    """A quantized weight: uint8 codes `(C_out, n)` and the stored fp16 params (module docstring)."""

    option: Option
    shape: tuple[int, ...]  # original weight shape
    codes: torch.Tensor  # (R, n) uint8, R = C_out (kma: 1 row is fine too; stored as (C_out, n))
    params: torch.Tensor  # uaq: (R, 2) [scale, zero]; kmc: (R, 2^b) codebook; kma: (1, 2^b) codebook

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight rebuilt from codes and params, in its original shape, as `dtype`.

        UAQ: (code − zero) · scale per row; K-Means-C: the row's codebook entry; K-Means-A: the shared
        codebook's entry.
        """
        w = get_method(self.option.method).dequantize(self.codes, self.params, self.option.bits)
        return w.reshape(self.shape).to(dtype)


def _fp16_exact(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).to(torch.float32)


def _row_chunks(rows: int, row_len: int, copies: int = 1) -> range:
    """Row-chunk starts such that `copies` temporaries of a chunk stay under _CHUNK_ELEMENTS."""
    step = max(1, _CHUNK_ELEMENTS // max(1, row_len * copies))
    return range(0, rows, step)


def quantize_uaq(w2d: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row asymmetric uniform quantization with the clipping range searched per row.

    For each shrink s in UAQ_SHRINKS the range [s·min(w,0), s·max(w,0)] is tried; the one with
    the lowest sum |w - ŵ|^2.4 is kept. All rows and all shrinks at once (per row-chunk).
    Returns codes (R, n) uint8 and params (R, 2) = [scale, zero] (fp16-exact float32).
    """
    qmax = (1 << bits) - 1
    R, n = w2d.shape
    shrinks = torch.tensor(UAQ_SHRINKS, dtype=torch.float32, device=w2d.device)[:, None, None]  # (S,1,1)
    codes = torch.empty(R, n, dtype=torch.uint8, device=w2d.device)
    params = torch.empty(R, 2, dtype=torch.float32, device=w2d.device)
    chunks = _row_chunks(R, n, copies=len(UAQ_SHRINKS) * 3)
    for start in chunks:
        w = w2d[start : start + chunks.step].to(torch.float32)  # (r, n)
        lo = w.min(dim=1, keepdim=True).values.clamp_max(0)[None] * shrinks  # (S, r, 1)
        hi = w.max(dim=1, keepdim=True).values.clamp_min(0)[None] * shrinks
        scale = _fp16_exact((hi - lo) / qmax)
        # An all-zero row (or an fp16 underflow) would divide by zero: any positive scale is exact there.
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.round(-lo / scale).clamp(0, qmax)
        q = torch.clamp(torch.round(w[None] / scale) + zero, 0, qmax)  # (S, r, n)
        err = ((q - zero) * scale - w[None]).abs().pow(UAQ_NORM_P).sum(dim=2)  # (S, r)
        best = err.argmin(dim=0)  # (r,)
        rows = torch.arange(w.shape[0], device=w.device)
        codes[start : start + w.shape[0]] = q[best, rows].to(torch.uint8)
        params[start : start + w.shape[0], 0] = scale[best, rows, 0]
        params[start : start + w.shape[0], 1] = zero[best, rows, 0]
    return codes, params


def quantize_kmeans(w2d: torch.Tensor, bits: int, per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """K-Means-C (per_row) or K-Means-A (one codebook for the whole tensor).

    Returns codes (R, n) uint8 and the fp16-exact codebook (R or 1, 2^b).
    """
    k = 1 << bits
    R, n = w2d.shape
    w2d = w2d.to(torch.float32)
    if not per_row:
        centroids = kmeans_1d(w2d.reshape(1, -1), k).centroids
        codebook, _ = torch.sort(_fp16_exact(centroids), dim=1)  # (1, k)
        codes = assign(w2d, codebook, torch.uint8)  # one codebook shared by every row
        return codes, codebook
    codes = torch.empty(R, n, dtype=torch.uint8, device=w2d.device)
    codebook = torch.empty(R, k, dtype=torch.float32, device=w2d.device)
    chunks = _row_chunks(R, n, copies=6)
    for start in chunks:
        w = w2d[start : start + chunks.step]
        c, _ = torch.sort(_fp16_exact(kmeans_1d(w, k).centroids), dim=1)
        codebook[start : start + w.shape[0]] = c
        codes[start : start + w.shape[0]] = assign(w, c, torch.uint8)
    return codes, codebook


def quantize(weight: torch.Tensor, option: Option | str) -> QuantizedTensor:
    """Quantize a weight tensor (C_out, ...) with one option, e.g. `quantize(w, "kmc3")`."""
    option = parse_option(option) if isinstance(option, str) else option
    if option.is_fp:
        raise ValueError("fp16 is not a quantizer option: the FP weight is used as is")
    shape = tuple(int(s) for s in weight.shape)
    # The arithmetic is float32 whatever the weight's dtype (fp16/bf16 models): min/max, scales,
    # rounding and k-means in half precision would change codes and overflow (a no-op for fp32).
    w2d = weight.detach().reshape(shape[0], -1).to(torch.float32)
    if not bool(torch.isfinite(w2d).all()):
        from core.errors import QsensError
        raise QsensError(f"cannot quantize a weight with {int((~torch.isfinite(w2d)).sum())} non-finite "
                         "(NaN/inf) values: the model's weights are damaged")
    codes, params = get_method(option.method).quantize(w2d, option.bits)
    return QuantizedTensor(option, shape, codes, params)


def _uaq_table(params: torch.Tensor, bits: int) -> torch.Tensor:
    """(C_out, 2^b): (code − zero) · scale for every code of every row (params [scale, zero])."""
    levels = torch.arange(1 << bits, dtype=torch.float32, device=params.device)
    return (levels[None, :] - params[:, 1:2]) * params[:, 0:1]


def _codebook_table(params: torch.Tensor, bits: int) -> torch.Tensor:
    return params  # the stored codebook is the table: (C_out, 2^b) for kmc, (1, 2^b) for kma


register_method(QuantMethod(
    "uaq", "uniform affine, per output channel, clipping range searched (Lp, p=2.4)",
    quantize_uaq, lambda c_out, bits: (c_out, 2), _uaq_table, torchao="affine"))
register_method(QuantMethod(
    "kmc", "1-D k-means codebook per output channel",
    lambda w, bits: quantize_kmeans(w, bits, per_row=True), lambda c_out, bits: (c_out, 1 << bits),
    _codebook_table, torchao="codebook"))
register_method(QuantMethod(
    "kma", "one 1-D k-means codebook for the whole tensor",
    lambda w, bits: quantize_kmeans(w, bits, per_row=False), lambda c_out, bits: (1, 1 << bits),
    _codebook_table, torchao="codebook"))


def fake_quantize(weight: torch.Tensor, option: Option | str) -> torch.Tensor:
    """Quantize then dequantize, in the weight's dtype."""
    return quantize(weight, option).dequantize(weight.dtype)
