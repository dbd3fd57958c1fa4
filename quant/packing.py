"""Pack b-bit integer codes densely into bytes (and back), so a bank stores exactly n·b bits."""
from __future__ import annotations

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


_SMALL = 1 << 18  # codes; below this a few whole-tensor ops beat per-column uint8 work


def unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of `pack_codes`: (bytes,) uint8 -> (numel,) uint8 codes, on `packed`'s device.

    This runs in every forward of a packed layer (quant.pack), so it takes the fewest ops for
    the case: 1/2/4 bits are whole codes per byte (one broadcast shift); otherwise eight
    consecutive codes fill exactly `bits` bytes, read as one little-endian integer per group
    (small tensors: few ops) or column by column in uint8 (large tensors: little memory).
    """
    if bits == 8:
        return packed[:numel].clone()
    mask = (1 << bits) - 1
    if 8 % bits == 0:
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
        return ((packed[:, None] >> shifts) & mask).reshape(-1)[:numel]
    groups, nbytes = -(-numel // 8), -(-numel * bits // 8)
    if numel <= _SMALL:
        width = 4 if bits <= 4 else 8  # 8 codes of ≤ 4 bits fit an int32, of ≤ 7 bits an int64
        buf = torch.zeros(groups, width, dtype=torch.uint8, device=packed.device)
        full = nbytes // bits
        buf[:full, :bits] = packed[: full * bits].reshape(full, bits)
        if full < groups:
            buf[full, : nbytes - full * bits] = packed[full * bits: nbytes]
        word = buf.view(torch.int32 if width == 4 else torch.int64)  # (groups, 1); sign bits masked off
        shifts = torch.arange(0, 8 * bits, bits, dtype=word.dtype, device=packed.device)
        return ((word >> shifts) & mask).to(torch.uint8).reshape(-1)[:numel]
    data = packed[:nbytes]
    if groups * bits > nbytes:
        data = torch.cat([data, data.new_zeros(groups * bits - nbytes)])
    g = data.reshape(groups, bits)
    out = torch.empty(groups, 8, dtype=torch.uint8, device=packed.device)
    for j in range(8):
        lo, off = j * bits // 8, j * bits % 8
        v = g[:, lo] >> off
        if off + bits > 8:  # the code continues in the next byte (uint8 shifts drop the overflow)
            v = v | (g[:, lo + 1] << (8 - off))
        out[:, j] = v & mask
    return out.reshape(-1)[:numel]
