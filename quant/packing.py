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
    """Inverse of `pack_codes`: (bytes,) uint8 -> (numel,) uint8 codes."""
    if bits == 8:
        return packed[:numel].clone()
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    stream = ((packed[:, None] >> shifts) & 1).reshape(-1)[: numel * bits]
    weights = (1 << torch.arange(bits, dtype=torch.int32, device=packed.device)).to(torch.uint8)
    return (stream.reshape(numel, bits) * weights).sum(dim=1, dtype=torch.int32).to(torch.uint8)
