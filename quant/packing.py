"""Pack b-bit integer codes densely into bytes (and back), so a bank stores exactly n·b bits,
and decode packed codes straight into weights (`decode_packed`: the hot path of packed layers).

Stream layout: bit j of code i lands at stream position i·bits + j (little-endian within each
byte). Every reader here sees the stream as a sequence of f-bit *fields* (f = bits, or f = 2·bits
when two neighbouring codes are read as one field): `8 // gcd(f, 8)` consecutive fields fill
exactly `f // gcd(f, 8)` whole bytes, which are read as one little-endian integer word and split
with one vectorised shift and one mask. No per-element Python, no per-column copies, one code
path for every size (there is no size threshold).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
from math import gcd
from pathlib import Path

import torch


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Flatten `codes` (values in [0, 2^bits)) into a uint8 tensor of ceil(numel·bits/8) bytes.

    Bit j of code i lands at stream position i·bits + j (little-endian within each byte).
    """
    flat = codes.reshape(-1).to(torch.uint8)
    if bits == 8:
        return flat.clone()
    shifts = torch.arange(bits, dtype=torch.uint8, device=flat.device)
    stream = ((flat[:, None] >> shifts) & 1).reshape(-1)  # (numel·bits,) of 0/1
    pad = (-stream.numel()) % 8
    if pad:
        stream = torch.cat([stream, stream.new_zeros(pad)])
    weights = (1 << torch.arange(8, dtype=torch.int32, device=flat.device)).to(torch.uint8)
    return (stream.reshape(-1, 8) * weights).sum(dim=1, dtype=torch.int32).to(torch.uint8)


def unpack_fields(packed: torch.Tensor, width: int, count: int, *, wide: bool = False) -> torch.Tensor:
    """The first `count` `width`-bit fields (1 ≤ width ≤ 14, or 16) of the little-endian bit
    stream `packed` (uint8), as a flat tensor on `packed`'s device.

    dtype: an integer dtype — uint8 when a field is a whole byte or divides one (1/2/4/8 bits),
    else int32 or int64 (the word the fields were cut from); int64 when `wide` (what
    `index_select` takes fastest). Fields past the end of
    `packed` read as zero bits.
    """
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed codes must be uint8, got {packed.dtype}")
    packed = packed.reshape(-1)
    dev = packed.device
    if width == 8:
        out = packed[:count]
        if out.numel() < count:
            out = torch.cat([out, out.new_zeros(count - out.numel())])
        return out.to(torch.int64) if wide else out
    if 8 % width == 0:  # whole fields per byte: one broadcast shift
        per = 8 // width
        need = -(-count // per)
        data = packed[:need]
        if data.numel() < need:
            data = torch.cat([data, data.new_zeros(need - data.numel())])
        shifts = torch.arange(0, 8, width, dtype=data.dtype, device=dev)
        fields = torch.bitwise_right_shift(data[:, None].expand(data.numel(), per), shifts)
        fields = fields.bitwise_and_((1 << width) - 1).reshape(-1)[:count]
        return fields.to(torch.int64) if wide else fields
    g = 8 // gcd(width, 8)  # fields per word
    nb = width * g // 8  # bytes per word (3, 5, 6 or 7 for the widths used here)
    if nb > 8:
        raise ValueError(f"field width {width} is not supported (a word of {g} fields needs {nb} bytes)")
    groups = -(-count // g)
    have = min(packed.numel(), groups * nb)
    wbytes = 4 if nb <= 3 else 8  # int32 words where they fit (half the memory traffic)
    buf = torch.zeros(groups, wbytes, dtype=torch.uint8, device=dev)
    full = have // nb
    if full:
        buf[:full, :nb] = packed[: full * nb].reshape(full, nb)
    if full < groups and have > full * nb:
        buf[full, : have - full * nb] = packed[full * nb: have]
    word = buf.view(torch.int32 if wbytes == 4 else torch.int64)  # (groups, 1); bits above nb·8 are 0
    shifts = torch.arange(0, width * g, width, dtype=word.dtype, device=dev)
    # bitwise_right_shift on an expanded word: on CPU several times faster than `word >> shifts`
    fields = torch.bitwise_right_shift(word.expand(groups, g), shifts).bitwise_and_((1 << width) - 1)
    fields = fields.reshape(-1)[:count]
    return fields.to(torch.int64) if wide and fields.dtype != torch.int64 else fields


def unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of `pack_codes`: (bytes,) uint8 -> (numel,) uint8 codes, on `packed`'s device."""
    if bits == 8:
        return packed[:numel].clone()
    out = unpack_fields(packed, bits, numel)
    return out if out.dtype == torch.uint8 else out.to(torch.uint8)


def decode_packed(packed: torch.Tensor, bits: int, numel: int, table: torch.Tensor, rows: int,
                  dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """Weights from packed codes and a lookup table, in one gather: (numel,) of `dtype`, the
    codes in row-major order of the weight as (rows, numel // rows).

    table: (rows, 2^bits) or (1, 2^bits) float32 — the weight each code stands for, per output
        row (UAQ's `(c − zero)·scale` per row, K-Means-C's codebooks) or for the whole tensor
        (K-Means-A). Values are looked up, not recomputed, so the result equals the elementwise
        float32 decode cast to `dtype` bit for bit.
    When the table is small next to a row, two neighbouring codes are decoded at once: a
    2·bits-bit field indexes a table of code pairs (half the gathers, half the index work).
    On CPU the whole decode is one pass of a small C loop (`quant/_decode.c`, built on first use
    with the system C compiler, loaded with ctypes) when it can be built; the torch ops below
    are the fallback and the path on other devices (same bits either way).

    out: a contiguous (numel,) tensor of `dtype` on `packed`'s device to write into (a reused
    workspace spares the page faults of a fresh allocation), or None.
    """
    if out is not None and (out.dtype != dtype or out.numel() != numel or not out.is_contiguous()
                            or out.device != packed.device):
        raise ValueError(f"out must be a contiguous ({numel},) {dtype} tensor on {packed.device}")
    done = _decode_native(packed, bits, numel, table, rows, dtype, out)
    if done is not None:
        return done
    per_row_table = table.shape[0] != 1
    k = 1 << bits
    row_len = numel // rows
    lut = table.to(dtype)
    pair = (bits < 8 and row_len % 2 == 0 and (2 * k * k <= row_len if per_row_table else 2 * k * k <= numel)
            and _pair_dtype(dtype) is not None)
    if pair:
        r = lut.shape[0]
        # entry c0 + c1·K of row r = (lut[r, c0], lut[r, c1]), stored as one wider element
        lo = lut[:, None, :].expand(r, k, k)
        hi = lut[:, :, None].expand(r, k, k)
        table2 = torch.stack([lo, hi], dim=-1).reshape(r * k * k, 2).view(_pair_dtype(dtype)).reshape(-1)
        idx = _index(unpack_fields(packed, 2 * bits, numel // 2), rows if per_row_table else 0, k * k)
        if out is not None:
            torch.index_select(table2, 0, idx, out=out.view(table2.dtype))
            return out
        return table2.index_select(0, idx).view(dtype).reshape(-1)
    idx = _index(unpack_fields(packed, bits, numel), rows if per_row_table else 0, k)
    if out is not None:
        return torch.index_select(lut.reshape(-1), 0, idx, out=out)
    return lut.reshape(-1).index_select(0, idx)


def _index(fields: torch.Tensor, rows: int, stride: int) -> torch.Tensor:
    """int64 table indices: `fields` plus `row · stride` per row (rows > 0), in one pass."""
    if not rows:
        return fields.to(torch.int64)
    offsets = torch.arange(0, rows * stride, stride, dtype=torch.int64, device=fields.device)[:, None]
    return torch.add(fields.view(rows, -1), offsets).reshape(-1)


def _pair_dtype(dtype: torch.dtype) -> torch.dtype | None:
    size = torch.empty(0, dtype=dtype).element_size()
    return {2: torch.int32, 4: torch.int64}.get(size)


# ------------------------------------------------------------------------------- native CPU decode
_SRC = Path(__file__).with_name("_decode.c")
_LIB: list = []  # [ctypes lib or None] once tried


def _simd_flags() -> list[str]:
    """x86-64: SSE4.1 (rounding instructions: `nearbyintf` inlined and vectorised), AVX2 where this
    CPU has it (part of the cache key, so a shared home never loads it on a CPU without). IEEE
    results are the same with any of them: no fast-math, no FMA contraction."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    try:
        cpu = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in cpu.splitlines() if line.startswith("flags")), [])
    out = ["-msse4.1"] if "sse4_1" in flags else []
    return out + (["-mavx2"] if "avx2" in flags else [])


def native_decode_available() -> bool:
    """Whether the C decode loop is built and loaded (QSENS_NATIVE_DECODE=0 switches it off)."""
    return _native() is not None


def _native():
    if os.environ.get("QSENS_NATIVE_DECODE", "1") == "0":
        return None
    if _LIB:
        return _LIB[0]
    lib = None
    try:
        src = _SRC.read_bytes()
        flags = ["-O3", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno", *_simd_flags()]
        key = hashlib.sha256(src + platform.machine().encode() + " ".join(flags).encode()).hexdigest()[:16]
        cache = Path(os.environ.get("QSENS_CACHE_DIR") or Path.home() / ".cache" / "qsens")
        so = cache / f"decode-{key}.so"
        if not so.is_file():
            cache.mkdir(parents=True, exist_ok=True)
            cc = os.environ.get("CC", "cc")
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
            os.close(fd)
            subprocess.run([cc, *flags, "-shared", "-fPIC", "-o", tmp, str(_SRC), "-lm"], check=True,
                           capture_output=True, timeout=120)
            os.replace(tmp, so)  # atomic: concurrent builders each install a whole file
        lib = ctypes.CDLL(str(so))
        for name in ("qsens_decode_uint16_t", "qsens_decode_uint32_t"):
            fn = getattr(lib, name)
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int64, ctypes.c_void_p,
                           ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        fn = lib.qsens_fq_dynamic_cl_f32
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                       ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p]
        fn = lib.qsens_fq_dynamic_f32
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                       ctypes.c_float, ctypes.c_void_p]
        for name in ("qsens_fq_grid_f32", "qsens_fq_range_f32"):
            fn = getattr(lib, name)
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                           ctypes.c_int64, ctypes.c_float, ctypes.c_void_p]
    except Exception:  # no compiler, read-only home, foreign platform: the torch path serves
        lib = None
    _LIB.append(lib)
    return lib


def native_fake_quant_dynamic(x: torch.Tensor, reduce_dims: tuple[int, ...], qmax: int):
    """Dynamic fake-quantization of float32 CPU `x` over trailing `reduce_dims` in one C call
    (ranges, scale, zero point, grid): (out, lo, hi, some range is zero-width), or None when it
    does not apply (other dtype/device/layout, reduced dims not the trailing ones, no library)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.numel() == 0:
        return None
    dims = sorted({d % x.dim() for d in reduce_dims})
    if not dims or dims != list(range(dims[0], x.dim())):
        return None
    lib = _native()
    if lib is None:
        return None
    if x.dim() == 4 and dims == [2, 3] and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        n, c, h, w = x.shape
        lo = torch.empty(n, c, 1, 1, dtype=torch.float32)
        hi = torch.empty(n, c, 1, 1, dtype=torch.float32)
        out = torch.empty_like(x)  # channels_last too
        rc = lib.qsens_fq_dynamic_cl_f32(x.data_ptr(), n, h * w, c, lo.data_ptr(), hi.data_ptr(), float(qmax),
                                         out.data_ptr())
        return None if rc not in (0, 3) else (out, lo, hi, rc == 3)
    x = x.contiguous()  # one copy (a transposed attention input) beats the torch path's passes
    keep = tuple(x.shape[:dims[0]]) + (1,) * len(dims)
    lo = torch.empty(keep, dtype=torch.float32)
    hi = torch.empty(keep, dtype=torch.float32)
    out = torch.empty_like(x)
    rc = lib.qsens_fq_dynamic_f32(x.data_ptr(), x.numel(), x.numel() // max(lo.numel(), 1), lo.data_ptr(),
                                  hi.data_ptr(), float(qmax), out.data_ptr())
    return None if rc not in (0, 3) else (out, lo, hi, rc == 3)


def native_fake_quant(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, qmax: int) -> tuple[torch.Tensor, bool] | None:
    """The activation grid from the ranges in one C call (scale, zero point and grid: the same
    float32 ops as quant.activations._fake_quantize's torch path): (out, some range is zero-width)
    — the caller keeps those rows' values — or None when it does not apply (see `native_grid`)."""
    if not _grid_fits(x, lo) or hi.shape != lo.shape or hi.dtype != torch.float32:
        return None
    lib = _native()
    if lib is None:
        return None
    rows = lo.numel()
    lo, hi = lo.contiguous(), hi.contiguous()
    out = torch.empty_like(x)
    rc = lib.qsens_fq_range_f32(x.data_ptr(), x.numel(), x.numel() // rows, lo.data_ptr(), hi.data_ptr(),
                                1 if rows > 1 else 0, float(qmax), out.data_ptr())
    return None if rc not in (0, 3) else (out, rc == 3)


def _grid_fits(x: torch.Tensor, per_row: torch.Tensor) -> bool:
    if x.device.type != "cpu" or x.dtype != torch.float32 or not x.is_contiguous() or x.numel() == 0:
        return False
    rows = per_row.numel()
    if per_row.dtype != torch.float32 or x.numel() % rows:
        return False
    lead = _lead(per_row)
    return rows == 1 or (per_row.dim() == x.dim() and tuple(per_row.shape[:lead]) == tuple(x.shape[:lead]))


def native_grid(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmax: int) -> torch.Tensor | None:
    """`(clamp(round(x / scale) + zero, 0, qmax) - zero) * scale` in one pass of the C loop, bit for
    bit the torch ops' result; x float32 contiguous on CPU, scale/zero float32 of one value per
    row of x's last dims (x.numel() / scale.numel() values each) or one value. None when the
    native library is absent or the layout does not fit (the caller uses torch ops then)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or not x.is_contiguous() or x.numel() == 0:
        return None
    lib = _native()
    if lib is None:
        return None
    rows = scale.numel()
    if zero.numel() != rows or x.numel() % rows or scale.dtype != torch.float32 or zero.dtype != torch.float32:
        return None
    if rows > 1 and (scale.dim() != x.dim() or any(
            a != b for a, b in zip(scale.shape[:_lead(scale)], x.shape[:_lead(scale)]))):
        return None
    scale, zero = scale.contiguous(), zero.contiguous()
    out = torch.empty_like(x)
    rc = lib.qsens_fq_grid_f32(x.data_ptr(), x.numel(), x.numel() // rows, scale.data_ptr(), zero.data_ptr(),
                               1 if rows > 1 else 0, float(qmax), out.data_ptr())
    return out if rc == 0 else None


def _lead(t: torch.Tensor) -> int:
    """Number of leading dims of a keepdim-reduced tensor before its trailing size-1 dims."""
    n = t.dim()
    while n > 0 and t.shape[n - 1] == 1:
        n -= 1
    return n


def _decode_native(packed: torch.Tensor, bits: int, numel: int, table: torch.Tensor, rows: int,
                   dtype: torch.dtype, out: torch.Tensor | None) -> torch.Tensor | None:
    if packed.device.type != "cpu" or not 1 <= bits <= 8 or numel % rows:
        return None
    size = torch.empty(0, dtype=dtype).element_size()
    if size not in (2, 4) or packed.numel() < -(-numel * bits // 8):
        return None
    lib = _native()
    if lib is None:
        return None
    k = 1 << bits
    lut = table.to(dtype).contiguous()
    if lut.shape[-1] != k or lut.shape[0] not in (1, rows):
        return None
    packed = packed.contiguous()
    out = torch.empty(numel, dtype=dtype) if out is None else out
    per_row = lut.shape[0] != 1 or rows == 1
    fn = lib.qsens_decode_uint16_t if size == 2 else lib.qsens_decode_uint32_t
    rc = fn(packed.data_ptr(), packed.numel(), bits, numel, lut.data_ptr(), numel // rows if per_row else numel,
            k if per_row else 0, out.data_ptr())
    return out if rc == 0 else None
