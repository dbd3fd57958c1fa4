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


def unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of `pack_codes`: (bytes,) uint8 -> (numel,) uint8 codes, on `packed`'s device.

    Eight consecutive codes fill exactly `bits` bytes, so code j of every 8-code group sits at
    the same bit offset j·bits of its group: one shift/or/mask per j over all groups at once
    (uint8 temporaries only; this runs in every forward of a packed layer, quant.pack).
    """
    if bits == 8:
        return packed[:numel].clone()
    groups = -(-numel // 8)
    data = packed[: -(-numel * bits // 8)]
    pad = groups * bits - data.numel()
    if pad:
        data = torch.cat([data, data.new_zeros(pad)])
    g = data.reshape(groups, bits)
    mask = (1 << bits) - 1
    out = torch.empty(groups, 8, dtype=torch.uint8, device=packed.device)
    for j in range(8):
        start = j * bits
        lo, off = start // 8, start % 8
        v = g[:, lo] >> off
        if off + bits > 8:  # the code continues in the next byte (uint8 shifts drop the overflow)
            v = v | (g[:, lo + 1] << (8 - off))
        out[:, j] = v & mask
    return out.reshape(-1)[:numel]
