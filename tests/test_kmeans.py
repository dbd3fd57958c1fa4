"""quant.kmeans: optimal on small rows, near-optimal on long ones, deterministic, and the codes
and codebooks the bank stores keep their format."""
from __future__ import annotations

import itertools

import pytest
import torch

from core.errors import QsensError
from quant.kmeans import assign, kmeans_1d, kmeans_1d_exact
from quant.quantizers import quantize


def laplace(rows: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(rows, n, generator=g, dtype=torch.float64) * (1 - 2e-9) + 1e-9 - 0.5
    return (-torch.sign(u) * torch.log1p(-2 * u.abs()) / n**0.5).float()


def brute_force_sse(values: list[float], k: int) -> float:
    """Smallest SSE over every split of the sorted values into k non-empty runs."""
    xs = sorted(values)
    n, best = len(xs), float("inf")
    for cuts in itertools.combinations(range(1, n), k - 1):
        sse = 0.0
        for a, b in zip((0,) + cuts, cuts + (n,)):
            mu = sum(xs[a:b]) / (b - a)
            sse += sum((v - mu) ** 2 for v in xs[a:b])
        best = min(best, sse)
    return best


def coded_sse(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(R,) SSE of x against its nearest-centroid codes, float64."""
    return ((centroids.double().gather(1, assign(x, centroids)) - x.double()) ** 2).sum(dim=1)


@pytest.mark.parametrize("fn", [kmeans_1d, kmeans_1d_exact])
def test_small_rows_get_the_brute_force_optimum(fn, one_torch_thread) -> None:
    g = torch.Generator().manual_seed(3)
    for trial in range(60):
        n = int(torch.randint(3, 10, (1,), generator=g))
        k = int(torch.randint(2, min(n, 5) + 1, (1,), generator=g))
        x = torch.randn(1, n, generator=g)
        if trial % 3 == 0:
            x = torch.round(x * 2) / 2  # ties
        res = fn(x, k)
        best = brute_force_sse(x[0].double().tolist(), k)
        assert float(coded_sse(x, res.centroids)[0]) <= best * (1 + 1e-6) + 1e-9, (x, k)
        assert float(res.sse[0]) == pytest.approx(best, rel=1e-6, abs=1e-9)


def test_long_rows_are_within_a_percent_of_the_optimum(one_torch_thread) -> None:
    """Histogram atoms + two-stage DP against the exact DP over every split (600 values a row)."""
    x = laplace(6, 600, seed=1)
    for k in (8, 16):
        ratio = coded_sse(x, kmeans_1d(x, k).centroids) / kmeans_1d_exact(x, k).sse
        assert float(ratio.min()) >= 1 - 1e-9  # nothing beats the optimum
        assert float(ratio.mean()) <= 1.01 and float(ratio.max()) <= 1.05, ratio
    ratio = coded_sse(x[:2], kmeans_1d(x[:2], 64).centroids) / kmeans_1d_exact(x[:2], 64).sse  # 6 bits
    assert float(ratio.min()) >= 1 - 1e-9 and float(ratio.max()) <= 1.05, ratio


def test_outliers_get_the_optimal_clusters(one_torch_thread) -> None:
    """A uniform bulk plus four outliers (histogram path): the same centroids as the exact DP, the
    outliers alone in their clusters, for every k."""
    x = torch.cat([torch.linspace(-1, 1, 400), torch.tensor([6.0, 6.1, 9.0, -7.0])])[None]
    for k in (4, 6, 8):
        assert torch.allclose(kmeans_1d(x, k).centroids, kmeans_1d_exact(x, k).centroids, atol=1e-5)
    c = kmeans_1d(x, 8).centroids[0].tolist()
    assert c[0] == -7.0 and c[-2:] == pytest.approx([6.05, 9.0])


def test_one_row_kma_matches_the_optimum_of_a_sample(one_torch_thread) -> None:
    x = laplace(1, 2000, seed=2)
    for k in (8, 16):
        ratio = float(coded_sse(x, kmeans_1d(x, k).centroids)[0] / kmeans_1d_exact(x, k).sse[0])
        assert 1 - 1e-9 <= ratio <= 1.002


def test_deterministic_bit_for_bit_and_across_thread_counts() -> None:
    rows, flat = laplace(40, 3000, seed=4), laplace(1, 300_000, seed=5)
    for x in (rows, flat):
        first = kmeans_1d(x, 16).centroids
        assert torch.equal(first, kmeans_1d(x.clone(), 16).centroids)
        old = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            assert torch.equal(first, kmeans_1d(x, 16).centroids)
        finally:
            torch.set_num_threads(old)


def test_row_results_do_not_depend_on_the_other_rows(one_torch_thread) -> None:
    x = laplace(12, 2000, seed=6)
    together = kmeans_1d(x, 8).centroids
    alone = torch.cat([kmeans_1d(x[r : r + 2], 8).centroids for r in range(0, 12, 2)])
    assert torch.equal(together, alone)


def test_centroids_ascend_and_sse_matches_the_codes(one_torch_thread) -> None:
    x = laplace(8, 1500, seed=7) * torch.linspace(0.1, 10, 8)[:, None] + torch.linspace(-1, 1, 8)[:, None]
    res = kmeans_1d(x, 16)
    assert res.centroids.dtype == torch.float32 and res.centroids.shape == (8, 16)
    assert bool((res.centroids[:, 1:] >= res.centroids[:, :-1]).all())
    # sse is of the partition of the bins; nearest codes can only do as well or better
    assert bool((coded_sse(x, res.centroids) <= res.sse * (1 + 1e-6)).all())
    assert bool((coded_sse(x, res.centroids) >= res.sse * 0.99).all())


def test_few_distinct_values_and_k_above_n_are_lossless(one_torch_thread) -> None:
    g = torch.Generator().manual_seed(8)
    few = torch.tensor([-0.5, 0.25, 3.0])[torch.randint(0, 3, (4, 2000), generator=g)]  # histogram path
    short = torch.randn(3, 100, generator=g).half().float()  # k = 256 > n: one centroid per value
    for x, k in ((few, 16), (short, 256)):
        c = kmeans_1d(x, k).centroids
        assert torch.allclose(c.gather(1, assign(x, c)), x, rtol=0, atol=1e-6)
        # what the bank stores (fp16 codebooks) gives the weights back exactly
        q = quantize(x, f"kmc{k.bit_length() - 1}")
        assert torch.equal(q.dequantize(), x)


def test_k_one_and_constant_rows(one_torch_thread) -> None:
    x = torch.tensor([[1.0, 2.0, 6.0] * 50, [4.0] * 150])
    c = kmeans_1d(x, 1).centroids
    assert torch.allclose(c[:, 0], torch.tensor([3.0, 4.0]))
    c = kmeans_1d(x, 4).centroids
    assert torch.equal(c.gather(1, assign(x, c)), x)


def test_bad_input() -> None:
    with pytest.raises(QsensError, match="non-finite"):
        kmeans_1d(torch.tensor([[1.0, float("nan"), 2.0] * 40]), 4)
    with pytest.raises(QsensError, match="non-finite"):
        kmeans_1d(torch.tensor([[1.0, float("inf"), 2.0]]), 2)
    with pytest.raises(ValueError, match="2-D"):
        kmeans_1d(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="k >= 1"):
        kmeans_1d(torch.zeros(2, 5), 0)


@pytest.mark.parametrize("k", [2, 8, 16, 33, 256])
def test_assign_is_nearest_centroid_with_ties_to_the_right(k: int) -> None:
    g = torch.Generator().manual_seed(k)
    c = torch.sort(torch.randn(3, k, generator=g), dim=1).values
    mid = (c[:, 1:] + c[:, :-1]) / 2
    x = torch.cat([torch.randn(3, 500, generator=g), mid], dim=1)  # midpoints themselves: ties
    want = torch.searchsorted(mid.contiguous(), x.contiguous(), right=True)
    assert torch.equal(assign(x, c), want)
    assert torch.equal(assign(x, c, torch.uint8), want.to(torch.uint8))
    shared = assign(x, c[:1])  # one codebook for every row
    assert torch.equal(shared, torch.searchsorted(mid[:1].expand(3, -1).contiguous(), x, right=True))
    dist = (x[:, :500, None] - c[:, None, :]).abs()
    assert torch.equal(dist.gather(2, want[:, :500, None])[..., 0], dist.min(dim=2).values)


@pytest.mark.parametrize("option", ["kmc3", "kmc4", "kma3", "kma4"])
def test_stored_format_unchanged(option: str, one_torch_thread) -> None:
    """uint8 codes (C_out, n) below 2^b; an fp16-exact ascending codebook, (C_out, 2^b) for kmc and
    (1, 2^b) for kma; dequantize is the codebook lookup; each code is a nearest codebook entry."""
    w = laplace(24, 3 * 3 * 40, seed=9).reshape(24, 40, 3, 3)
    q = quantize(w, option)
    k = 2 ** q.option.bits
    assert q.codes.dtype == torch.uint8 and q.codes.shape == (24, 360) and int(q.codes.max()) < k
    assert q.params.shape == ((24, k) if option.startswith("kmc") else (1, k))
    assert torch.equal(q.params, q.params.half().float())
    assert bool((q.params[:, 1:] >= q.params[:, :-1]).all())
    book = q.params.expand(24, k)
    assert torch.equal(q.dequantize(), book.gather(1, q.codes.long()).reshape(w.shape))
    dist = (w.reshape(24, -1, 1) - book[:, None, :]).abs()
    assert torch.equal(dist.gather(2, q.codes.long()[..., None])[..., 0], dist.min(dim=2).values)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("shape", [(64, 2000), (1, 400_000), (16, 40)])
def test_cuda_matches_cpu(shape: tuple[int, int]) -> None:
    x = laplace(*shape, seed=10)
    cpu = kmeans_1d(x, 16)
    gpu = kmeans_1d(x.cuda(), 16)
    assert gpu.centroids.is_cuda
    sse_cpu = coded_sse(x, cpu.centroids)
    sse_gpu = coded_sse(x, gpu.centroids.cpu())
    assert torch.allclose(sse_gpu, sse_cpu, rtol=2e-3)  # float sums run in another order on the GPU
    assert torch.equal(assign(x.cuda(), gpu.centroids).cpu(), assign(x, gpu.centroids.cpu()))
