"""The fast packed-weight decoding (quant.packing.unpack_fields / decode_packed, issue 25) against the
previous implementation, and bit-stream round trips on both sides of every size threshold (#28).

The previous implementation is kept here, as the reference, not in the library: unpack_codes as it
was (a small-tensor word path and a large-tensor per-column path above 262,144 codes) and
PackedLayer.dequantize as it was (float32 elementwise decode, then a cast).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from quant import QuantConfig, build_bank, pack, quantized
from quant.pack import packed_module
import quant.packing as packing
from quant.packing import decode_packed, native_decode_available, pack_codes, unpack_codes, unpack_fields

OLD_SMALL = 1 << 18  # the old implementation switched paths above this many codes


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread (conftest)


# ----------------------------------------------------------------- the previous implementation
def old_unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    if bits == 8:
        return packed[:numel].clone()
    mask = (1 << bits) - 1
    if 8 % bits == 0:
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8)
        return ((packed[:, None] >> shifts) & mask).reshape(-1)[:numel]
    groups, nbytes = -(-numel // 8), -(-numel * bits // 8)
    if numel <= OLD_SMALL:
        width = 4 if bits <= 4 else 8
        buf = torch.zeros(groups, width, dtype=torch.uint8)
        full = nbytes // bits
        buf[:full, :bits] = packed[: full * bits].reshape(full, bits)
        if full < groups:
            buf[full, : nbytes - full * bits] = packed[full * bits: nbytes]
        word = buf.view(torch.int32 if width == 4 else torch.int64)
        shifts = torch.arange(0, 8 * bits, bits, dtype=word.dtype)
        return ((word >> shifts) & mask).to(torch.uint8).reshape(-1)[:numel]
    data = packed[:nbytes]
    if groups * bits > nbytes:
        data = torch.cat([data, data.new_zeros(groups * bits - nbytes)])
    g = data.reshape(groups, bits)
    out = torch.empty(groups, 8, dtype=torch.uint8)
    for j in range(8):
        lo, off = j * bits // 8, j * bits % 8
        v = g[:, lo] >> off
        if off + bits > 8:
            v = v | (g[:, lo + 1] << (8 - off))
        out[:, j] = v & mask
    return out.reshape(-1)[:numel]


def old_dequantize(packed: torch.Tensor, params: torch.Tensor, method: str, bits: int,
                   shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    numel = int(torch.Size(shape).numel())
    codes = old_unpack_codes(packed, bits, numel).reshape(shape[0], -1)
    p = params.to(torch.float32)
    if method == "uaq":
        w = (codes.to(torch.float32) - p[:, 1:2]) * p[:, 0:1]
    elif method == "kmc":
        w = p.gather(1, codes.long())
    else:
        w = p[0][codes.long()]
    return w.reshape(shape).to(dtype)


# ------------------------------------------------------------------------------- round trips
def _codes(n: int, bits: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 1 << bits, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bits", range(1, 9))
def test_round_trip_on_both_sides_of_every_size_threshold(bits: int) -> None:
    # 262,144: the old small/large switch; pair decoding switches on 2·(2^b)^2 vs the row length
    sizes = (1, 7, 8, 9, 15, 16, 17, 1001, OLD_SMALL - 1, OLD_SMALL, OLD_SMALL + 1, OLD_SMALL + 8, OLD_SMALL + 13)
    for n in sizes:
        codes = _codes(n, bits, seed=n + bits)
        packed = pack_codes(codes, bits)
        assert packed.numel() == -(-n * bits // 8)
        got = unpack_codes(packed, bits, n)
        assert got.dtype == torch.uint8 and torch.equal(got, codes), (bits, n)
        assert torch.equal(old_unpack_codes(packed, bits, n), codes), (bits, n)  # the reference itself
        wide = unpack_fields(packed, bits, n, wide=True)
        assert wide.dtype == torch.int64 and torch.equal(wide, codes.long()), (bits, n)


@pytest.mark.parametrize("bits", range(1, 8))
def test_pair_fields_are_two_neighbouring_codes(bits: int) -> None:
    for n in (2, 16, 1000, OLD_SMALL + 2):
        codes = _codes(n, bits, seed=3 * n + bits).long()
        pairs = unpack_fields(pack_codes(codes, bits), 2 * bits, n // 2, wide=True)
        assert torch.equal(pairs, codes[0::2] + (codes[1::2] << bits)), (bits, n)


# ------------------------------------------------- fast dequantize == old dequantize, bit for bit
def _params(method: str, bits: int, rows: int, gen: torch.Generator) -> torch.Tensor:
    k = 1 << bits
    if method == "uaq":
        scale = torch.rand(rows, generator=gen) * 0.02 + 1e-4
        zero = torch.randint(0, k, (rows,), generator=gen).float()
        return torch.stack([scale, zero], 1).half()
    return torch.randn(rows if method == "kmc" else 1, k, generator=gen).half()


def _table(layer) -> torch.Tensor:
    method, bits, _ = layer._format
    p = layer.params.float()
    if method == "uaq":
        return (torch.arange(1 << bits, dtype=torch.float32)[None, :] - p[:, 1:2]) * p[:, 0:1]
    return p


def _layer(shape: tuple[int, ...]) -> nn.Module:
    if len(shape) == 2:
        return nn.Linear(shape[1], shape[0])
    if len(shape) == 3:
        return nn.Conv1d(shape[1], shape[0], shape[2])
    return nn.Conv2d(shape[1], shape[0], shape[2:])


# small rows (single codes), odd rows (no pairs), long rows (pair decoding), one tensor above 262,144
SHAPES = [(17, 5), (8, 3, 3), (24, 7, 3, 3), (40, 64, 3, 3), (64, 520), (40, 2600, 3, 3)]


@pytest.fixture(params=["native", "torch"])
def decode_path(request, monkeypatch):
    """Both CPU decoders: the C loop (quant/_decode.c) and the torch ops it falls back to."""
    if request.param == "torch":
        monkeypatch.setattr(packing, "_LIB", [None])
    elif not native_decode_available():
        pytest.skip("no C compiler: the native decoder is not built here")
    return request.param


def test_native_decoder_builds_where_a_compiler_exists() -> None:
    import shutil

    if shutil.which("cc") is None:
        pytest.skip("no cc")
    assert native_decode_available()


@pytest.mark.parametrize("method", ["uaq", "kmc", "kma"])
@pytest.mark.parametrize("bits", range(2, 9))
def test_fast_dequantize_is_bit_identical_to_the_previous_one(method: str, bits: int, decode_path: str) -> None:
    gen = torch.Generator().manual_seed(bits * 7 + len(method))
    for shape in SHAPES:
        n = int(torch.Size(shape).numel())
        codes = torch.randint(0, 1 << bits, (n,), dtype=torch.uint8, generator=gen)
        params = _params(method, bits, shape[0], gen)
        packed = pack_codes(codes, bits)
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            layer = packed_module(_layer(shape).to(dtype), f"{method}{bits}", packed, params)
            got, want = layer.dequantize(), old_dequantize(packed, params, method, bits, shape, dtype)
            assert got.dtype == want.dtype == dtype and got.shape == want.shape
            ints = torch.int32 if dtype == torch.float32 else torch.int16
            assert torch.equal(got.view(ints), want.view(ints)), (method, bits, shape, dtype)
            # into a reused workspace (what a no-grad CPU forward does)
            ws = torch.full((n,), float("nan"), dtype=dtype)
            got_ws = decode_packed(layer.codes, bits, n, _table(layer), shape[0], dtype, out=ws)
            assert got_ws.data_ptr() == ws.data_ptr()
            assert torch.equal(got_ws.view(ints), want.reshape(-1).view(ints)), (method, bits, shape, dtype)


def test_decode_packed_pairs_and_singles_agree(decode_path: str) -> None:
    gen = torch.Generator().manual_seed(5)
    rows, row_len, bits = 12, 2 * 2 * 16 * 16, 4  # long enough rows for pair decoding at 4 bits
    codes = torch.randint(0, 16, (rows * row_len,), dtype=torch.uint8, generator=gen)
    table = torch.randn(rows, 16, generator=gen)
    want = table.gather(1, codes.view(rows, -1).long()).reshape(-1)
    assert torch.equal(decode_packed(pack_codes(codes, bits), bits, codes.numel(), table, rows, torch.float32), want)
    odd = codes[: rows * (row_len - 1)]  # odd rows: single-code path
    want_odd = table.gather(1, odd.view(rows, -1).long()).reshape(-1)
    assert torch.equal(decode_packed(pack_codes(odd, bits), bits, odd.numel(), table, rows, torch.float32), want_odd)


# ------------------------------------------- packed == fake-quant on a layer above 262,144 weights
class Big(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(520, 640)  # 332,800 weights
        self.b = nn.Conv2d(40, 24, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x)


@pytest.mark.parametrize("option", ["uaq3", "uaq5", "uaq6", "uaq7", "kmc3", "kma5"])
def test_packed_equals_fake_quant_above_the_old_threshold(option: str, decode_path: str) -> None:
    torch.manual_seed(0)
    model = Big().eval()
    assert model.a.weight.numel() > OLD_SMALL
    bank = build_bank(model, [option], model_name="big", progress=False)
    config = QuantConfig.uniform("big", bank.layer_names, option)
    x = torch.randn(3, 520)
    with torch.no_grad(), quantized(model, config, bank):
        want = model(x)
        w_fake = model.a.weight.detach().clone()
    packed = pack(model, config, bank)
    with torch.no_grad():
        got = packed(x)  # no autograd: decoded into the reused workspace
        again = packed(x)
    assert torch.equal(packed.a.weight, w_fake)
    assert torch.equal(got, want) and torch.equal(again, want)
    assert torch.equal(packed(x).detach(), want)  # autograd on: a fresh weight tensor


def test_hold_dequantized_decodes_once_and_lets_go() -> None:
    from quant.pack import hold_dequantized

    torch.manual_seed(0)
    model = Big().eval()
    bank = build_bank(model, ["kmc3"], model_name="big", progress=False)
    packed = pack(model, QuantConfig.uniform("big", bank.layer_names, "kmc3"), bank)
    x = torch.randn(2, 520)
    with torch.no_grad():
        want = packed(x)
        with hold_dequantized(packed):
            w1 = packed.a.weight
            assert packed.a.weight is w1  # kept, not decoded again
            assert torch.equal(packed(x), want)
        assert packed.a.weight is not w1 and "_held" not in packed.a.__dict__
