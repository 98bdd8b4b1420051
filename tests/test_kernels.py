"""Kernels against their float64 references: the Triton kernels (in the interpreter without a GPU) and the
PyTorch CPU paths, on odd sizes. Outputs are pre-filled with NaN so that an unwritten tile fails."""
from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from irforge.kernels import INSTRUCTION, QUERY, SegmentLayout, attention_mass, block_sparse_attention  # noqa: E402
from irforge.kernels.attention_mass import kernel as mass_kernel  # noqa: E402
from irforge.kernels.block_sparse_attention import kernel as bsa_kernel  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu
DEVICE = "cuda" if HAS_CUDA else "cpu"
# tensor-memory loads (tma=True): in the interpreter, and on NVIDIA GPUs from compute capability 9.0
HAS_TMA = not HAS_CUDA or (torch.version.hip is None and torch.cuda.get_device_capability()[0] >= 9)
needs_tma = pytest.mark.skipif(not HAS_TMA, reason="needs the Tensor Memory Accelerator (compute capability 9.0)")


def close(got, ref, atol, rtol, what):
    """Assert closeness; report the first bad indices and any NaN/inf."""
    got, ref = got.double().cpu(), ref.double().cpu()
    bad = ~torch.isfinite(got)
    assert not bad.any(), f"{what}: non-finite values at {bad.nonzero()[:5].tolist()}"
    err = (got - ref).abs() - (atol + rtol * ref.abs())
    if (err > 0).any():
        idx = (err > 0).nonzero()[:5].tolist()
        raise AssertionError(f"{what}: {int((err > 0).sum())} values off, first at {idx}: "
                             f"got {[got[tuple(i)].item() for i in idx]}, want {[ref[tuple(i)].item() for i in idx]}")


LAYOUTS = {
    "odd": [(5, [1, 63, 97], 7)],
    "long_doc": [(3, [257], 4)],
    "empty_query": [(6, [9, 2], 0)],
    "many_tiny_docs": [(4, [1] * 20 + [2] * 5, 3)],
    "two_prompts": [(2, [5, 1], 3), (0, [4], 2)],
    "three_prompts": [(3, [10, 20], 5), (2, [7], 9), (4, [1, 1, 30], 6)],  # key tiles straddle prompts
    "no_docs": [(7, [], 5)],
    "long_instruction": [(70, [40, 3], 33)],  # whole and partial prefix blocks
    "interleaved": [(4, [5, 7, 5, 7, 5], 3)],  # equal-length documents that are not back to back
}
# (dtype, atol, rtol): tolerances per dtype; bfloat16 only on a GPU (the interpreter's bf16 dot is wrong)
DTYPES = [(torch.float32, 2e-5, 1e-4), (torch.float16, 2e-2, 2e-2)]


def make(layout_name, D, hq, hkv, dtype, seed=0):
    layout = SegmentLayout.from_lengths(LAYOUTS[layout_name])
    g = torch.Generator().manual_seed(seed)
    T = layout.total_tokens
    q, k, v = (torch.randn(T, h, D, generator=g).to(dtype).to(DEVICE) for h in (hq, hkv, hkv))
    return layout, q, k, v


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
@pytest.mark.parametrize("D,hq,hkv", [(64, 4, 1), (80, 3, 3), (128, 4, 2), (64, 6, 2), (64, 8, 1)])
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
def test_block_sparse_attention_triton_and_cpu_match_reference(layout_name, D, hq, hkv, dtype, atol, rtol):
    layout, q, k, v = make(layout_name, D, hq, hkv, dtype)
    ref_o, ref_l = block_sparse_attention(q, k, v, layout, backend="naive")
    out = torch.full_like(q, float("nan"))
    lse = torch.full((q.shape[0], hq), float("nan"), device=q.device)
    bsa_kernel.block_sparse_attention(q, k, v, layout, out=out, lse=lse, block_m=32, block_n=32)
    close(out, ref_o, atol, rtol, "triton out")
    close(lse, ref_l, atol, rtol, "triton lse")
    out.fill_(float("nan"))
    lse.fill_(float("nan"))
    bsa_kernel.block_sparse_attention(q, k, v, layout, out=out, lse=lse, block_m=32, block_n=32, one_loop=True)
    close(out, ref_o, atol, rtol, "triton out, one loop")
    close(lse, ref_l, atol, rtol, "triton lse, one loop")
    o, l = block_sparse_attention(q, k, v, layout, backend="torch")
    close(o, ref_o, atol, rtol, "cpu out")
    close(l, ref_l, atol, rtol, "cpu lse")


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("hq,hkv", [(28, 4), (5, 1), (14, 2)])
def test_groups_of_five_and_seven_query_heads(hq, hkv, dtype, atol, rtol):
    """Query-head groups that are not powers of two and above 4 (Qwen2.5-7B: 28 query and 4 key/value heads)
    in both kernels: product rows padded past the group's rows."""
    layout, q, k, v = make("three_prompts", 64, hq, hkv, dtype, seed=11)
    ref_o, ref_l = block_sparse_attention(q, k, v, layout, backend="naive")
    out, lse = bsa_kernel.block_sparse_attention(q, k, v, layout)
    close(out, ref_o, atol, rtol, "out")
    close(lse, ref_l, atol, rtol, "lse")
    T = layout.total_tokens
    rows = torch.tensor([2, 30, 37, T - 7, T - 1])
    for mode in ("causal", "documents"):
        ref = attention_mass(q[rows], rows, k, layout, mode=mode, backend="naive")
        tol = (1e-3, 1e-2) if dtype == torch.float16 else (1e-6, 1e-4)
        close(mass_kernel.attention_mass(q[rows], rows, k, layout, mode=mode), ref, *tol, f"mass, {mode}")


@pytest.mark.parametrize("D,hq,hkv", [(64, 4, 1), (80, 3, 3)])
def test_64bit_offsets_give_the_same_results(D, hq, hkv):
    """The WIDE (64-bit offset) variants, used from 2^31 tensor elements, computed here on small inputs."""
    layout, q, k, v = make("two_prompts", D, hq, hkv, torch.float32)
    ref_o, ref_l = block_sparse_attention(q, k, v, layout, backend="naive")
    o, l = bsa_kernel.block_sparse_attention(q, k, v, layout, block_m=32, block_n=32, wide=True)
    close(o, ref_o, 2e-5, 1e-4, "wide out")
    close(l, ref_l, 2e-5, 1e-4, "wide lse")
    for fused in (False, True):  # split tiles merged by the merge kernel, and in the kernel
        o, l = bsa_kernel.block_sparse_attention(q, k, v, layout, block_m=32, block_n=16, max_blocks=1, wide=True,
                                                 fused_merge=fused)
        close(o, ref_o, 2e-5, 1e-4, f"wide out, split tiles, fused_merge={fused}")
        close(l, ref_l, 2e-5, 1e-4, f"wide lse, split tiles, fused_merge={fused}")
    if HAS_TMA and D == 64:  # tensor-memory loads beside 64-bit offsets for the query rows and the output
        o, l = bsa_kernel.block_sparse_attention(q, k, v, layout, block_m=32, block_n=32, wide=True, tma=True)
        close(o, ref_o, 2e-5, 1e-4, "wide out, tensor-memory loads")
        close(l, ref_l, 2e-5, 1e-4, "wide lse, tensor-memory loads")
    rows = torch.arange(layout.total_tokens - 3, layout.total_tokens, device=DEVICE)
    ref = attention_mass(q[rows], rows, k, layout, mode="causal", backend="naive")
    got = mass_kernel.attention_mass(q[rows], rows, k, layout, mode="causal", block_m=16, block_n=32, wide=True)
    close(got, ref, 1e-6, 1e-4, "wide mass")
    _, pos_t, p0_t, *_ = mass_kernel._row_tables(layout, rows, None, layout.total_tokens, 16, q.device)
    args = (q[rows].contiguous(), k, pos_t, p0_t, torch.empty(0, dtype=torch.bool, device=DEVICE), "causal",
            D ** -0.5, 16, 16, "ieee", True, 4, 2)  # (rows in order) 64-bit offsets, 2 key splits
    assert torch.equal(mass_kernel._row_lse(*args, fused=True), mass_kernel._row_lse(*args))
    assert not bsa_kernel.needs_wide(q, k, v)


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
def test_triton_default_launch_config_matches_reference(dtype, atol, rtol):
    """The tile sizes users get by default (64 x 64 in 16 bits, 32 x 32 for full-precision float32)."""
    layout, q, k, v = make("three_prompts", 128, 4, 2, dtype, seed=3)
    assert bsa_kernel.launch_config(dtype, 128)["block_m"] == (32 if dtype == torch.float32 else 64)
    # Hopper, rows of 256 bytes in 16 bits: one warpgroup and the one-loop form by default, with 32-key blocks
    # and three stages (two stages and 64 keys in the four-loop form); elsewhere the four-loop form, eight warps,
    # Triton's stages
    hopper = bsa_kernel.launch_config(dtype, 128, capability=(9, 0))
    hopper_one = bsa_kernel.launch_config(dtype, 128, capability=(9, 0), one_loop=True)
    ampere = bsa_kernel.launch_config(dtype, 128, capability=(8, 0))
    assert not bsa_kernel.default_one_loop(dtype, 128, (8, 0)) and not bsa_kernel.default_one_loop(dtype, 128, None)
    assert not bsa_kernel.default_one_loop(dtype, 64, (9, 0))
    if dtype == torch.float32:
        assert hopper == ampere == bsa_kernel.launch_config(dtype, 128, capability=(8, 0), one_loop=True)
        assert not bsa_kernel.default_one_loop(dtype, 128, (9, 0))
    else:
        assert bsa_kernel.default_one_loop(dtype, 128, (9, 0))
        assert (hopper["num_warps"], hopper["num_stages"], hopper["block_n"], ampere["num_warps"]) == (4, 2, 64, 8)
        assert (hopper_one["num_warps"], hopper_one["num_stages"], hopper_one["block_n"]) == (4, 3, 32)
        assert "num_stages" not in ampere
        # at most 168 registers (three programs per SM) in the Hopper one-loop form at D 128 only; none at D 256,
        # in the four-loop form or off Hopper
        assert hopper_one["maxnreg"] == 168
        # the lazy rescale by default in Hopper's four-loop form with one warpgroup only (not in its one-loop
        # default, where the H100 timed it slower)
        assert bsa_kernel.default_lazy_rescale(dtype, 128, (9, 0), 4)
        assert not any(bsa_kernel.default_lazy_rescale(dtype, d, c, w, one)
                       for d, c, w, one in ((128, (9, 0), 8, False), (128, (8, 0), 4, False), (128, None, 4, False),
                                            (64, (9, 0), 4, False), (128, (9, 0), 4, True)))
        assert all("maxnreg" not in c for c in (hopper, ampere, bsa_kernel.launch_config(
            dtype, 256, capability=(9, 0), one_loop=True)))
        # what the caller sets is kept
        assert bsa_kernel.launch_config(dtype, 128, block_n=64, num_stages=2, capability=(9, 0), one_loop=True,
                                        max_registers=200) == {
            "block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 2, "maxnreg": 200}
    ref_o, ref_l = block_sparse_attention(q, k, v, layout, backend="naive")
    o, l = block_sparse_attention(q, k, v, layout, backend="triton")
    close(o, ref_o, atol, rtol, "default-config out")
    close(l, ref_l, atol, rtol, "default-config lse")


@pytest.mark.parametrize("one_loop,per_program,query_load", [(False, 1, "block"), (True, 1, "block"),
                                                              (True, 3, "block"), (True, 3, "tile")])
@pytest.mark.parametrize("hq,hkv", [(4, 2), (3, 1)])
@pytest.mark.parametrize("max_blocks", [1, 3])
@pytest.mark.parametrize("layout_name", ["long_instruction", "long_doc", "three_prompts"])
def test_split_tiles_merge_to_the_reference(layout_name, max_blocks, hq, hkv, one_loop, per_program, query_load):
    """Tiles cut into chunks of key blocks (prefix and causal range), run as separate programs and merged by
    log-sum-exp, give the unsplit result; in the four-loop and the one-loop form, and with the unsplit tiles of
    a segment taken three at a time by one program (query rows loaded with every key block, or per tile)."""
    layout, q, k, v = make(layout_name, 64, hq, hkv, torch.float32, seed=2)
    ref_o, ref_l = block_sparse_attention(q, k, v, layout, backend="naive")
    out = torch.full_like(q, float("nan"))
    lse = torch.full((q.shape[0], hq), float("nan"), device=q.device)
    bsa_kernel.block_sparse_attention(q, k, v, layout, out=out, lse=lse, block_m=32, block_n=16,
                                      max_blocks=max_blocks, one_loop=one_loop, tiles_per_program=per_program,
                                      query_load=query_load)
    close(out, ref_o, 2e-5, 1e-4, "split out")
    close(lse, ref_l, 2e-5, 1e-4, "split lse")


def test_ticket_counters_kept_per_device_and_stream_and_grown():
    """The counters of the in-kernel merges (kernels/_tickets.py): zero, at least as many as asked for, the same
    buffer for the next launch on the stream, and a larger one when more are asked for."""
    from irforge.kernels._tickets import tickets

    a = tickets(10, torch.device(DEVICE))
    assert a.dtype == torch.int32 and a.numel() >= 10 and int(a.abs().sum()) == 0
    assert tickets(5, torch.device(DEVICE)) is a
    b = tickets(a.numel() + 1, torch.device(DEVICE))
    assert b.numel() > a.numel() and int(b.abs().sum()) == 0 and tickets(3, torch.device(DEVICE)) is b


@pytest.mark.parametrize("layout_name,one_loop,tma,D,hq,hkv,dtype,per_program", [
    ("three_prompts", False, False, 64, 4, 2, torch.float32, 1),
    ("three_prompts", True, False, 80, 3, 1, torch.float16, 1),
    ("three_prompts", True, True, 64, 8, 2, torch.float16, 1),
    ("three_prompts", False, True, 32, 4, 4, torch.float32, 1),
    ("three_prompts", True, False, 64, 4, 2, torch.float32, 3),
    ("many_tiny_docs", True, False, 80, 3, 1, torch.float16, 1),
    ("many_tiny_docs", True, True, 64, 8, 2, torch.float16, 1)])
def test_split_tiles_merged_in_the_kernel_match_the_merge_kernel(layout_name, one_loop, tma, D, hq, hkv, dtype,
                                                                 per_program):
    """``fused_merge``: the last chunk of each split tile merges them in the same launch. The result is the
    merge kernel's, bit for bit (both read the chunks in order), and the reference's; the tickets are zero
    again after each call, so that a second call merges too (with 1 or 2 blocks a chunk: many split tiles);
    also beside runs of tiles (``tiles_per_program``), which split tiles never join."""
    if tma and bsa_kernel.tensor_descriptor_class() is None:
        pytest.skip("this triton has no host tensor descriptors")
    layout, q, k, v = make(layout_name, D, hq, hkv, dtype, seed=4)
    ref_o, ref_l = block_sparse_attention(q, k, v, layout, backend="naive")
    tol = (2e-5, 1e-4) if dtype == torch.float32 else (2e-2, 2e-2)
    for max_blocks in (1, 2):
        opts = dict(block_m=32, block_n=16, max_blocks=max_blocks, one_loop=one_loop, tma=tma,
                    tiles_per_program=per_program)
        two = bsa_kernel.block_sparse_attention(q, k, v, layout, **opts)
        for call in range(2):
            out = torch.full_like(q, float("nan"))
            lse = torch.full((q.shape[0], hq), float("nan"), device=q.device)
            bsa_kernel.block_sparse_attention(q, k, v, layout, out=out, lse=lse, fused_merge=True, **opts)
            # (tickets left over from the first call would leave the split rows' NaN unmerged in the second)
            assert torch.equal(out, two[0]) and torch.equal(lse, two[1]), (max_blocks, call)
    close(out, ref_o, *tol, "fused merge out")
    close(lse, ref_l, 2e-5 if dtype == torch.float32 else 2e-2, 1e-4, "fused merge lse")


@pytest.mark.parametrize("layout_name,one_loop,per_program,max_blocks,lazy", [
    ("long_doc", False, 1, 0, True), ("long_doc", True, 1, 0, True), ("long_doc", True, 3, 0, True),
    ("long_doc", False, 1, 2, True), ("long_doc", True, 1, 2, True), ("long_instruction", False, 1, 0, True),
    ("long_instruction", True, 1, 2, True), ("long_doc", False, 1, 0, False), ("long_doc", True, 1, 0, False)])
def test_running_maximum_that_grows_along_the_keys(layout_name, one_loop, per_program, max_blocks, lazy):
    """Scores that climb along the key axis, at a different pace per query head (so per row of one tile):
    by about 14, 4 and 1 in base 2 per 16-key block, flat, and falling. The lazy rescale (the accumulator
    rescaled only when some row's maximum grows by more than 2^8) then both rescales and keeps stale maxima in
    the middle of a tile's keys, and must still match the reference, as the rescale after every block does."""
    layout = SegmentLayout.from_lengths(LAYOUTS[layout_name])
    T, D, hq, hkv = layout.total_tokens, 64, 10, 2
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(T, h, D, generator=g) for h in (hq, hkv, hkv))
    u = torch.nn.functional.normalize(torch.randn(D, generator=g), dim=0)
    k += torch.arange(T, dtype=torch.float32)[:, None, None] * 0.1 * u  # the keys' component along u climbs
    # per 16-key block a row's score gains pace x 0.1 x 16 / sqrt(64) x log2(e) in base 2: 14, 4, 1, 0, -3
    pace = torch.tensor([48.0, 14.0, 3.5, 0.0, -10.0]).repeat(2)
    q += pace[None, :, None] * u
    q, k, v = q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)
    ref_o, ref_l = block_sparse_attention(q, k, v, layout, backend="naive")
    out = torch.full_like(q, float("nan"))
    lse = torch.full((T, hq), float("nan"), device=q.device)
    bsa_kernel.block_sparse_attention(q, k, v, layout, out=out, lse=lse, block_m=32, block_n=16,
                                      max_blocks=max_blocks, one_loop=one_loop, tiles_per_program=per_program,
                                      lazy_rescale=lazy)
    # Scores reach about 190 here: float32 rounds each to about eps x its terms' sum |q_i k_i| x scale (a few
    # times that over 64 terms, in whatever order a GPU adds them), and the probabilities change by as much,
    # relatively (PyTorch's own float32 path is 4.4e-5 off on the output). A wrong rescale is off by far more.
    terms = torch.einsum("thd,shd->hts", q.abs().double(), k.abs().double().repeat_interleave(hq // hkv, 1))
    atol = 2e-5 + 8 * torch.finfo(torch.float32).eps * terms.max().item() / D ** 0.5
    close(out, ref_o, atol, 1e-4, "out, climbing scores")
    close(lse, ref_l, atol, 1e-4, "lse, climbing scores")


@needs_tma
@pytest.mark.parametrize("one_loop", [False, True])
@pytest.mark.parametrize("D,hq,hkv,dtype,atol,rtol", [(64, 4, 1, torch.float32, 2e-5, 1e-4),
                                                      (128, 4, 2, torch.float16, 2e-2, 2e-2),
                                                      (64, 6, 2, torch.float16, 2e-2, 2e-2)])
@pytest.mark.parametrize("layout_name", list(LAYOUTS))
def test_tensor_memory_loads_match_reference(layout_name, D, hq, hkv, dtype, atol, rtol, one_loop):
    """Key and value blocks through tensor descriptors (``tma=True``): a block's rows past its range (the
    next segment's keys, or the descriptor's zero fill past the last token) are cut by the mask."""
    layout, q, k, v = make(layout_name, D, hq, hkv, dtype, seed=4)
    ref_o, ref_l = block_sparse_attention(q, k, v, layout, backend="naive")
    out = torch.full_like(q, float("nan"))
    lse = torch.full((q.shape[0], hq), float("nan"), device=q.device)
    bsa_kernel.block_sparse_attention(q, k, v, layout, out=out, lse=lse, block_m=32, block_n=32, one_loop=one_loop,
                                      tma=True)
    close(out, ref_o, atol, rtol, "out, tensor-memory loads")
    close(lse, ref_l, atol, rtol, "lse, tensor-memory loads")


@needs_tma
@pytest.mark.parametrize("layout_name", ["three_prompts", "long_doc"])
def test_wide_tiles_of_the_one_loop_sweep_match_reference(layout_name):
    """128 product rows on 8 warps with tensor-memory loads (bench_kernels.py --sweep-one-loop's 128-row rows:
    32 tokens x 4 query heads per tile), split tiles too."""
    layout, q, k, v = make(layout_name, 64, 8, 2, torch.float16, seed=6)
    ref_o, ref_l = block_sparse_attention(q, k, v, layout, backend="naive")
    for block_n, max_blocks in ((32, None), (64, 2)):
        out = torch.full_like(q, float("nan"))
        lse = torch.full((q.shape[0], 8), float("nan"), device=q.device)
        bsa_kernel.block_sparse_attention(q, k, v, layout, out=out, lse=lse, block_m=128, block_n=block_n,
                                          num_warps=8, one_loop=True, tma=True, max_blocks=max_blocks)
        close(out, ref_o, 2e-2, 2e-2, f"out, 128 rows, {block_n}-key blocks")
        close(lse, ref_l, 2e-2, 2e-2, f"lse, 128 rows, {block_n}-key blocks")


def test_tensor_memory_loads_by_default_only_where_timed(monkeypatch):
    """tma=None: tensor descriptors in Hopper's one-loop form at 16-bit D 128 (timed faster on an H100), pointer
    loads in every other case, and wherever the Triton release has no host descriptors."""
    for dtype in (torch.bfloat16, torch.float16):
        assert bsa_kernel.default_tma(dtype, 128, (9, 0), True)
        assert not any(bsa_kernel.default_tma(dtype, d, c, one)
                       for d, c, one in ((128, (9, 0), False), (128, (8, 0), True), (128, (10, 0), True),
                                         (128, None, True), (64, (9, 0), True), (256, (9, 0), True)))
    assert not bsa_kernel.default_tma(torch.float32, 128, (9, 0), True)
    monkeypatch.setitem(sys.modules, "triton.tools.tensor_descriptor", None)  # (its import then fails)
    assert not bsa_kernel.default_tma(torch.bfloat16, 128, (9, 0), True)


@needs_tma
def test_tensor_memory_loads_of_unaligned_keys_take_pointer_loads(monkeypatch):
    """Keys and values that do not start on a 16-byte boundary (a view one element into its storage) cannot
    be described to the Tensor Memory Accelerator: the kernel loads them by pointers instead, with the same
    results. A head dimension that is not a power of two is refused, and so is a Triton without host tensor
    descriptors."""
    layout, q, k, v = make("three_prompts", 64, 4, 2, torch.float32, seed=5)
    ref_o, ref_l = block_sparse_attention(q, k, v, layout, backend="naive")
    k1, v1 = (torch.cat([x.new_zeros(1), x.flatten()])[1:].view(x.shape) for x in (k, v))
    assert k1.data_ptr() % 16 and v1.data_ptr() % 16 and torch.equal(k1, k)
    o, l = bsa_kernel.block_sparse_attention(q, k1, v1, layout, block_m=32, block_n=32, tma=True)
    close(o, ref_o, 2e-5, 1e-4, "out, unaligned keys")
    close(l, ref_l, 2e-5, 1e-4, "lse, unaligned keys")
    monkeypatch.setitem(sys.modules, "triton.tools.tensor_descriptor", None)  # (its import then fails)
    with pytest.raises(ValueError, match="host tensor descriptors"):
        bsa_kernel.block_sparse_attention(q, k, v, layout, tma=True)
    layout, q, k, v = make("odd", 80, 3, 3, torch.float32)
    with pytest.raises(ValueError, match="power of two"):
        bsa_kernel.block_sparse_attention(q, k, v, layout, tma=True)


@pytest.mark.parametrize("seed", range(8))
def test_random_layouts_tiles_groups_and_splits_match_reference(seed):
    """Random packed prompts (empty and one-token segments included) under random product rows, key blocks,
    query-head groups, split thresholds and rescale rules."""
    rng = np.random.default_rng(seed)
    prompts = [(int(rng.integers(0, 40)), [int(x) for x in rng.integers(0, 70, size=rng.integers(0, 5))],
                int(rng.integers(0, 30))) for _ in range(rng.integers(1, 4))]
    if sum(a + sum(d) + b for a, d, b in prompts) == 0:
        prompts[0] = (1, [], 1)
    layout = SegmentLayout.from_lengths(prompts)
    hkv = int(rng.choice([1, 2]))
    hq = hkv * int(rng.choice([1, 2, 3, 5]))
    g = torch.Generator().manual_seed(seed)
    T = layout.total_tokens
    q, k, v = (torch.randn(T, h, 32, generator=g).to(DEVICE) for h in (hq, hkv, hkv))
    block_m, block_n = int(rng.choice([16, 32, 64])), int(rng.choice([16, 32]))
    max_blocks = int(rng.choice([0, 1, 2, 4]))
    one_loop = bool(rng.random() < 0.5)
    per_program = int(rng.choice([1, 2, 5])) if one_loop else 1
    query_load = str(rng.choice(["block", "tile"]))
    lazy = bool(rng.random() < 0.5)
    tma = bool(rng.random() < 0.5) and HAS_TMA
    ref_o, ref_l = block_sparse_attention(q, k, v, layout, backend="naive")
    out = torch.full_like(q, float("nan"))
    lse = torch.full((T, hq), float("nan"), device=q.device)
    bsa_kernel.block_sparse_attention(q, k, v, layout, out=out, lse=lse, block_m=block_m, block_n=block_n,
                                      max_blocks=max_blocks, one_loop=one_loop, tiles_per_program=per_program,
                                      query_load=query_load, lazy_rescale=lazy, tma=tma)
    what = (f"{prompts}, heads {hq}/{hkv}, block {block_m}x{block_n}, split {max_blocks}, one loop {one_loop}, "
            f"{per_program} tiles per program, query rows per {query_load}, lazy rescale {lazy}, "
            f"tensor-memory loads {tma}")
    close(out, ref_o, 2e-5, 1e-4, f"out: {what}")
    close(lse, ref_l, 2e-5, 1e-4, f"lse: {what}")


@pytest.mark.parametrize("seed", range(6))
def test_random_layouts_rows_and_groups_attention_mass_matches_reference(seed):
    """Random packed prompts, selected rows (in any order, from any prompt), weights, modes, query-head groups,
    product rows, key blocks and sliding windows."""
    rng = np.random.default_rng(100 + seed)
    prompts = [(int(rng.integers(0, 30)), [int(x) for x in rng.integers(0, 50, size=rng.integers(0, 5))],
                int(rng.integers(1, 20))) for _ in range(rng.integers(1, 4))]
    layout = SegmentLayout.from_lengths(prompts)
    hkv = int(rng.choice([1, 2]))
    hq = hkv * int(rng.choice([1, 2, 3, 4]))
    g = torch.Generator().manual_seed(seed)
    T = layout.total_tokens
    q, k = (torch.randn(T, h, 32, generator=g).to(DEVICE) for h in (hq, hkv))
    rows = torch.tensor(rng.choice(T, size=int(rng.integers(1, min(T, 40) + 1)), replace=False), device=DEVICE)
    w = torch.rand(len(rows), generator=g).to(DEVICE) if rng.random() < 0.5 else None
    mode = str(rng.choice(["causal", "documents"]))
    block_m, block_n = int(rng.choice([16, 32, 64])), int(rng.choice([16, 32, 64]))
    head_sum = str(rng.choice(["loop", "dot"]))
    window = None if rng.random() < 0.5 else int(rng.integers(1, 60))
    ref = attention_mass(q[rows], rows, k, layout, weights=w, mode=mode, window=window, backend="naive")
    for whole in (False, True):
        out = torch.full((T, hq), float("nan"), device=DEVICE)
        mass_kernel.attention_mass(q[rows], rows, k, layout, weights=w, mode=mode, window=window, out=out,
                                   block_m=block_m, block_n=block_n, head_sum=head_sum, whole_blocks=whole)
        close(out, ref, 1e-6, 1e-4, f"{prompts}, heads {hq}/{hkv}, {mode}, block {block_m}x{block_n}, {head_sum}, "
                                    f"window {window}, whole blocks {whole}")
    close(attention_mass(q[rows], rows, k, layout, weights=w, mode=mode, window=window, backend="torch"), ref, 1e-6,
          1e-4, f"cpu path, window {window}")


def test_schedule_runs_longest_first_and_chunks_cover_each_tile_once():
    layout = SegmentLayout.from_lengths([(70, [40, 3, 130], 200), (5, [9], 4)])
    tiles = layout.tiles(32)
    for max_blocks in (0, 1, 3, 7, 1000):
        table, groups = bsa_kernel.schedule(tiles, 16, max_blocks)
        cost = table[:, 7]
        unsplit = table[:, 6] < 0
        assert (cost[unsplit] == bsa_kernel.key_blocks(table[unsplit].astype(np.int64), 16)).all()
        assert (np.diff(cost) <= 0).all()  # longest first
        if max_blocks:
            assert cost.max() <= max_blocks
        # every tile's prefix and causal keys are covered exactly once by its rows' chunks
        for r0, r1, p0, p1, c0 in tiles.tolist():
            mine = table[(table[:, 0] == r0) & (table[:, 1] == r1)]
            pre = sorted((a, b) for a, b in mine[:, 2:4].tolist() if b > a)
            cau = sorted((a, b) for a, b in mine[:, 4:6].tolist() if b > a)
            assert [x for a, b in pre for x in range(a, b)] == list(range(p0, p1))
            assert [x for a, b in cau for x in range(a, b)] == list(range(c0, r1))
            assert (len(mine) > 1) == (mine[0, 6] >= 0)  # a split tile writes partials, a whole one writes out
        assert sorted(table[table[:, 6] >= 0, 6].tolist()) == list(range(int(groups[:, 3].sum()) if len(groups) else 0))


@pytest.mark.parametrize("max_blocks,per_program", [(0, 1), (48, 1), (0, 3), (48, 2), (200, 1)])
def test_schedule_groups_short_programs_by_segment(max_blocks, per_program):
    """With the tokens' segments, the same programs run: the long ones first, longest first in the order they had
    before; then the short ones (at most 1/SHORT_SHARE of the longest one's key blocks, or of max_blocks where
    that is more: 200 leaves every tile whole here), each segment's together and longest first, the segments
    with the longest of them first (then in layout order)."""
    rng = np.random.default_rng(5)
    layout = SegmentLayout.from_lengths([(8, rng.integers(1, 60, 30).tolist(), 40), (3, [50, 9, 50], 5),
                                         (16, [], 20)])
    rows, block_n = 8, 16
    tiles = layout.tiles(rows)
    segments = layout.segment_ids()
    before, groups_before = bsa_kernel.schedule(tiles, block_n, max_blocks, rows, per_program)
    table, groups = bsa_kernel.schedule(tiles, block_n, max_blocks, rows, per_program, segments)
    assert (groups == groups_before).all()
    assert sorted(map(tuple, table.tolist())) == sorted(map(tuple, before.tolist()))
    cost = table[:, 7]
    short = cost <= max(int(cost.max()), max_blocks) // bsa_kernel.SHORT_SHARE
    n_long = int((~short).sum())
    assert not short[:n_long].any() and 0 < n_long <= len(table) - 8  # the long ones first; several short ones
    long_before = before[before[:, 7] > max(int(cost.max()), max_blocks) // bsa_kernel.SHORT_SHARE]
    assert (table[:n_long] == long_before).all()  # in their old order: longest first, stable
    seg_of = segments[table[n_long:, 0]]
    seen, prev = [], None
    for s, c in zip(seg_of.tolist(), cost[n_long:].tolist()):
        if s != (prev[0] if prev else None):
            assert s not in seen, f"segment {s}'s short programs are not together"
            seen.append(s)
        else:
            assert c <= prev[1]  # longest first within a segment
        prev = (s, c)
    longest = [int(cost[n_long:][seg_of == s].max()) for s in seen]
    assert [(-x, s) for x, s in zip(longest, seen)] == sorted((-x, s) for x, s in zip(longest, seen))
    with pytest.raises(ValueError, match="segments"):
        bsa_kernel.schedule(tiles, block_n, max_blocks, rows, per_program, segments[:-1])
    with pytest.raises(ValueError, match="segments"):
        bsa_kernel.schedule(tiles, block_n, max_blocks, rows, per_program, segments - 1)


@pytest.mark.parametrize("one_loop", [False, True])
def test_launch_orders_give_the_same_results(one_loop):
    """The launch order moves programs, not what they compute: both orders give the same bits, and the
    reference. Many short documents behind a long query tile, so that the orders differ."""
    layout = SegmentLayout.from_lengths([(8, [20] * 36, 30)])
    g = torch.Generator().manual_seed(13)
    q, k, v = (torch.randn(layout.total_tokens, h, 32, generator=g).to(DEVICE) for h in (4, 2, 2))
    ref_o, ref_l = block_sparse_attention(q, k, v, layout, backend="naive")
    got = {}
    for order in ("segments", "longest"):
        out = torch.full_like(q, float("nan"))
        lse = torch.full((q.shape[0], 4), float("nan"), device=q.device)
        bsa_kernel.block_sparse_attention(q, k, v, layout, out=out, lse=lse, block_m=16, block_n=16,
                                          one_loop=one_loop, launch_order=order)
        close(out, ref_o, 2e-5, 1e-4, f"{order} out")
        close(lse, ref_l, 2e-5, 1e-4, f"{order} lse")
        got[order] = out, lse
    assert all(torch.equal(a, b) for a, b in zip(got["segments"], got["longest"]))
    tables = [entry[0] for key, entry in layout.__dict__["_memo"].items() if key[0] == "bsa"]
    assert len(tables) == 2 and not torch.equal(tables[0], tables[1])  # the orders did differ
    with pytest.raises(ValueError, match="launch_order"):
        bsa_kernel.block_sparse_attention(q, k, v, layout, launch_order="shortest")


def test_default_split_counts_the_programs_an_sm_holds():
    """Long tiles split at the average load of a program slot, and an SM holds several programs: the
    Hopper default 3 (4 warps of 168 registers), an uncapped 8-warp configuration at least 1. Never below 64
    blocks."""
    hopper = bsa_kernel.launch_config(torch.bfloat16, 128, capability=(9, 0), one_loop=True)
    assert bsa_kernel.programs_per_sm(hopper) == 3
    assert bsa_kernel.programs_per_sm(bsa_kernel.launch_config(torch.bfloat16, 128, capability=(8, 0))) == 1
    assert bsa_kernel.programs_per_sm(dict(num_warps=4, maxnreg=128)) == 4
    layout = SegmentLayout.from_lengths([(64, [160] * 100, 50)])  # the bench's 16k prompt, 16-token tiles
    blocks = bsa_kernel.total_key_blocks(layout.tiles(16), 32)
    # per document 10 tiles x 2 prefix blocks + 1+1+2+2+...+5+5 causal ones; the instruction's 4 tiles 6; the
    # query's 4 tiles 503, 503, 504 and 504
    assert blocks == 100 * (20 + 30) + 6 + 2014
    assert bsa_kernel.split_threshold(blocks, 8, 132, 3) == 142  # 8 heads' 56,160 blocks over 396 slots
    assert bsa_kernel.split_threshold(blocks, 8, 132, 1) == 426
    assert bsa_kernel.split_threshold(1000, 8, 132, 3) == 64


@pytest.mark.parametrize("per_program", [2, 3, 100])
def test_runs_join_consecutive_tiles_of_one_segment(per_program):
    """With several tiles per program, every unsplit tile lies in exactly one run; a run holds at most
    ``per_program`` tiles of one segment, each whole but the last, and sums their key blocks; split tiles stay
    alone. A prompt without documents may join its instruction and query: they share the causal rule."""
    layout = SegmentLayout.from_lengths([(70, [40, 3, 130], 200), (5, [9], 4), (32, [], 10), (20, [50], 0)])
    rows, block_n = 16, 16
    tiles = layout.tiles(rows)
    seg = layout.segment_ids()
    for max_blocks in (0, 4):
        one, _ = bsa_kernel.schedule(tiles, block_n, max_blocks)
        table, groups = bsa_kernel.schedule(tiles, block_n, max_blocks, rows, per_program)
        assert (np.diff(table[:, 7]) <= 0).all()  # longest first
        assert sorted(map(tuple, table[table[:, 6] >= 0].tolist())) == sorted(map(tuple, one[one[:, 6] >= 0].tolist()))
        singles = {tuple(t[:2]): t for t in one[one[:, 6] < 0].tolist()}
        covered = []
        for r0, r1, p0, p1, c0, c1, part, blocks in table[table[:, 6] < 0].tolist():
            assert c1 == r1 and part == -1
            starts = list(range(r0, r1, rows))
            assert 1 <= len(starts) <= per_program
            members = [singles[(a, min(a + rows, r1))] for a in starts]  # whole tiles, the last may be short
            assert all(m[2:5] == [p0, p1, c0] for m in members)
            assert blocks == sum(m[7] for m in members)
            kinds = {int(layout.kinds[seg[a]]) for a in starts}
            assert len(set(seg[starts].tolist())) == 1 or kinds <= {INSTRUCTION, QUERY}
            covered += starts
        assert sorted(covered) == sorted(a for a, _ in singles)
    small, q, k, v = make("two_prompts", 64, 2, 1, torch.float32)
    with pytest.raises(ValueError, match="tiles_per_program"):
        bsa_kernel.block_sparse_attention(q, k, v, small, tiles_per_program=0)
    with pytest.raises(ValueError, match="query_load"):
        bsa_kernel.block_sparse_attention(q, k, v, small, tiles_per_program=2, query_load="row")


def test_tiles_never_straddle_segments_and_skip_masked_blocks():
    layout = SegmentLayout.from_lengths([(64, [160] * 10, 50)])
    tiles = layout.tiles(64)
    seg = layout.segment_ids()
    for r0, r1, *_ in tiles:
        assert seg[r0] == seg[r1 - 1]
    # keys visited per tile (block granularity) stay within a small factor of the allowed pairs
    visited = sum((r1 - r0) * ((p1 - p0) + (r1 - c0)) for r0, r1, p0, p1, c0 in tiles)
    allowed = layout.allowed_pairs()
    dense_causal = layout.total_tokens * (layout.total_tokens + 1) // 2
    assert allowed < visited < 1.3 * allowed < 0.4 * dense_causal


def test_layout_arrays_are_read_only_copies():
    """A layout's arrays cannot be edited in place, so the tables the kernels keep on it (built on the first call)
    always describe it; the caller's own arrays stay theirs and writable."""
    cu, kinds = np.array([0, 4, 9, 15, 18]), np.array([0, 1, 1, 2])
    layout = SegmentLayout(cu, kinds)
    q, k, v = (torch.randn(18, h, 16, generator=torch.Generator().manual_seed(5)).to(DEVICE) for h in (2, 1, 1))
    want = block_sparse_attention(q, k, v, layout, backend="naive")[0]
    close(block_sparse_attention(q, k, v, layout)[0], want, 2e-5, 1e-4, "first call")
    for name in ("cu_seqlens", "kinds"):
        with pytest.raises(ValueError, match="read-only"):
            getattr(layout, name)[1] = 3
    cu[1], kinds[1] = 3, 2  # the caller's arrays: copied, not shared
    assert layout.cu_seqlens.tolist() == [0, 4, 9, 15, 18] and layout.kinds.tolist() == [0, 1, 1, 2]
    assert SegmentLayout.from_lengths([(4, [5, 6], 3)]).cu_seqlens.flags.writeable is False
    close(block_sparse_attention(q, k, v, layout)[0], want, 2e-5, 1e-4, "second call")


def test_layouts_compare_hash_copy_and_pickle_by_their_arrays():
    """Layouts of equal arrays are equal and hash alike (comparing two raised ValueError: the dataclass compared
    the arrays with ==); copies and pickles rebuild the layout from its arrays, read-only again, without the
    tables the kernels kept on it (device tensors, on a GPU)."""
    import copy
    import pickle

    layout = SegmentLayout.from_lengths([(4, [5, 6], 3)])
    q, k, v = (torch.randn(18, h, 16, generator=torch.Generator().manual_seed(6)).to(DEVICE) for h in (2, 1, 1))
    want = block_sparse_attention(q, k, v, layout, backend="triton")[0]
    assert layout.__dict__.get("_memo")  # tables kept after the call (the Triton path's tiles and launch table)
    for other in (pickle.loads(pickle.dumps(layout)), copy.deepcopy(layout), copy.copy(layout)):
        assert other == layout and hash(other) == hash(layout) and {layout: 1}[other] == 1
        assert not other.cu_seqlens.flags.writeable and not other.kinds.flags.writeable
        assert "_memo" not in other.__dict__
        assert torch.equal(block_sparse_attention(q, k, v, other, backend="triton")[0], want)
    changed = SegmentLayout.from_lengths([(4, [5, 7], 3)])
    assert layout != changed and not layout == changed and layout != "a layout"
    assert SegmentLayout(layout.cu_seqlens, [0, 2, 0, 2]) != layout  # the same boundaries, other kinds


@pytest.mark.parametrize("mode", ["causal", "documents"])
@pytest.mark.parametrize("layout_name", ["odd", "two_prompts", "three_prompts", "many_tiny_docs", "empty_query"])
@pytest.mark.parametrize("D,hq,hkv", [(64, 4, 2), (80, 3, 1)])
def test_attention_mass_matches_reference(mode, layout_name, D, hq, hkv):
    """Rows in no particular order (the kernel sorts them and gives each key tile only the rows that see it)."""
    layout, q, k, _ = make(layout_name, D, hq, hkv, torch.float32, seed=1)
    T = layout.total_tokens
    rng = np.random.default_rng(0)
    rows = torch.tensor(rng.permutation(sorted(set(rng.integers(0, T, size=24).tolist()))), device=DEVICE)
    w = torch.rand(len(rows), device=DEVICE)
    ref = attention_mass(q[rows], rows, k, layout, weights=w, mode=mode, backend="naive")
    out = torch.full((T, hq), float("nan"), device=DEVICE)
    mass_kernel.attention_mass(q[rows], rows, k, layout, weights=w, mode=mode, out=out, block_m=16, block_n=32)
    close(out, ref, 1e-6, 1e-4, f"triton mass ({mode})")
    close(attention_mass(q[rows], rows, k, layout, weights=w, mode=mode, backend="torch"), ref, 1e-6, 1e-4, "cpu mass")


@pytest.mark.parametrize("window", [None, 40])
@pytest.mark.parametrize("mode", ["causal", "documents"])
def test_attention_mass_whole_blocks_skip_the_mask_only_where_every_row_sees_the_block(mode, window):
    """whole_blocks: per key block, the run of rows that see all of it (a host table) goes unmasked. Two
    prompts' query spans, several row blocks per key block (groups of 3 heads: product rows past the block's
    rows), a key count that leaves the last block short: equal to the reference, and the runs as defined."""
    layout = SegmentLayout.from_lengths([(20, [50, 37], 45), (9, [70], 60)])
    T = layout.total_tokens
    g = torch.Generator().manual_seed(21)
    q, k = (torch.randn(T, h, 32, generator=g).to(DEVICE) for h in (6, 2))
    first = 20 + 50 + 37
    rows = torch.cat([torch.arange(first, first + 45), torch.arange(T - 60, T)])
    w = torch.rand(len(rows), generator=g).to(DEVICE)
    ref = attention_mass(q[rows], rows, k, layout, weights=w, mode=mode, window=window, backend="naive")
    got = mass_kernel.attention_mass(q[rows], rows, k, layout, weights=w, mode=mode, window=window, block_m=16,
                                     block_n=16, whole_blocks=True)
    close(got, ref, 1e-6, 1e-4, f"whole blocks, {mode}, window {window}")
    _, pos_t, p0_t, _, _, lo_t, hi_t, _ = mass_kernel._row_tables(layout, rows, w, T, 16, q.device, window)
    pos, p0, lo, hi = (x.cpu().numpy() for x in (pos_t, p0_t, lo_t, hi_t))
    for b, a in enumerate(range(0, T, 16)):
        sees_all = (p0 <= a) & (pos >= a + 15) & (a + 16 <= T)
        assert sees_all[lo[b]:hi[b]].all() and sees_all.sum() == max(hi[b] - lo[b], 0), b
    assert T % 16 and (hi - lo > 0).any()


@pytest.mark.parametrize("head_sum", ["loop", "dot"])
@pytest.mark.parametrize("mode", ["causal", "documents"])
@pytest.mark.parametrize("dtype,hq,hkv", [(torch.float16, 8, 2), (torch.float16, 8, 1), (torch.float32, 6, 2)])
def test_attention_mass_default_products_match_reference(mode, dtype, hq, hkv, head_sum):
    """Default product rows (64 in 16 bits, 16 for full-precision float32) with groups of 4, 8 and 3 query heads
    per key/value head."""
    layout, q, k, _ = make("three_prompts", 64, hq, hkv, dtype, seed=5)
    T = layout.total_tokens
    rows = torch.tensor([3, 9, 20, 33, 40, T - 3, T - 2, T - 1])
    ref = attention_mass(q[rows], rows, k, layout, mode=mode, backend="naive")
    got = mass_kernel.attention_mass(q[rows], rows, k, layout, mode=mode, head_sum=head_sum)
    close(got, ref, 1e-3 if dtype == torch.float16 else 1e-6, 1e-2 if dtype == torch.float16 else 1e-4, "mass")


def test_attention_mass_normaliser_takes_wider_tiles_where_rows_fill_them(monkeypatch):
    """The rows' log-sum-exp kernel runs 128 product rows on 8 warps by default where the rows fill them as
    well as 64-row tiles do (16-bit or TF32 products, D up to 128, nothing pinned), and a default 16-bit call
    that takes them matches the reference."""
    launch, cfg = mass_kernel.lse_launch, {"block_m": 64, "num_warps": 4}
    assert launch(cfg, 50, 4, "tf32", False, 128) == (128, 8)  # 2 tiles of 128 product rows, as 4 of 64
    assert launch(cfg, 50, 3, "tf32", False, 128) == (64, 4)  # 2 tiles of 126 rows would pad more than 3 of 63
    assert launch(cfg, 50, 1, "tf32", False, 64) == (64, 4)  # one tile either way: 128 rows against 64
    assert launch(cfg, 100, 2, "tf32", False, 64) == (128, 8)
    assert launch(cfg, 50, 4, "ieee", False, 128) == (64, 4)  # FMA products: the mass kernel's own
    assert launch(cfg, 50, 4, "tf32", True, 128) == (64, 4)  # a pinned launch option
    assert launch(cfg, 50, 4, "tf32", False, 256) == (64, 4)  # ptxas spills at D 256
    seen = []
    row_lse = mass_kernel._row_lse
    monkeypatch.setattr(mass_kernel, "_row_lse", lambda *a, **kw: seen.append(a[7]) or row_lse(*a, **kw))
    layout, q, k, _ = make("long_doc", 32, 8, 2, torch.float16, seed=9)
    T = layout.total_tokens
    rows = torch.arange(T - 40, T - 8)  # 32 rows x 4 heads: one tile of 128 product rows
    for mode in ("causal", "documents"):
        ref = attention_mass(q[rows], rows, k, layout, mode=mode, backend="naive")
        got = mass_kernel.attention_mass(q[rows], rows, k, layout, mode=mode)
        close(got, ref, 1e-3, 1e-2, f"wider normaliser tiles, {mode}")
    assert seen == [128, 128]


@pytest.mark.parametrize("splits", [None, 1, 2, 5])
@pytest.mark.parametrize("mode", ["causal", "documents"])
@pytest.mark.parametrize("layout_name,hq,hkv", [("three_prompts", 4, 2), ("long_doc", 6, 2), ("two_prompts", 3, 1)])
def test_attention_mass_row_lse_kernel_matches_the_pytorch_normaliser(layout_name, hq, hkv, mode, splits):
    """The Triton kernel's log-sum-exp of the selected rows (one launch, or key splits merged on the device)
    against the PyTorch path's, for rows of several prompts, unsorted, fewer than a row block and more."""
    from irforge.kernels.attention_mass import cpu as mass_cpu

    layout, q, k, _ = make(layout_name, 64, hq, hkv, torch.float32, seed=6)
    T = layout.total_tokens
    g = np.random.default_rng(7)
    for n in (1, 5, min(T, 40)):
        rows = torch.tensor(g.choice(T, size=n, replace=False))
        order = torch.argsort(rows)
        ref = mass_cpu.row_lse(q[rows.to(DEVICE)], rows, k, layout, mode, 0.125)[order.to(DEVICE)]
        order_t, pos_t, p0_t, *_ = mass_kernel._row_tables(layout, rows, None, T, 16, q.device)
        doc = mass_kernel.document_keys(layout, q.device) if mode == "documents" else torch.empty(0, dtype=torch.bool)
        got = mass_kernel._row_lse(q[rows.to(DEVICE)][order.to(DEVICE)].contiguous(), k, pos_t, p0_t, doc.to(DEVICE),
                                   mode, 0.125, 16, 16, "ieee", False, 4, splits=splits)
        assert torch.equal(torch.isinf(got), torch.isinf(ref)), f"{n} rows: -inf where the reference has none"
        fin = torch.isfinite(ref)
        close(got[fin], ref[fin], 1e-5, 1e-5, f"{layout_name}, {n} rows, {mode}, splits {splits}")


@pytest.mark.parametrize("mode", ["causal", "documents"])
def test_attention_mass_normaliser_splits_merged_in_their_kernel(mode):
    """``fused_merge``: the last key split of each row block to finish merges them in the same launch, with the
    result of the merge kernel bit for bit (both fold the splits in order), call after call (the counters are
    zero again after each), for the normaliser alone at several splits and for the whole mass call."""
    layout, q, k, _ = make("long_doc", 32, 6, 2, torch.float32, seed=10)
    T = layout.total_tokens
    rows = torch.tensor([3, 10, 100, 200, 250, T - 3, T - 1, 150, 40])
    assert mass_kernel.lse_splits(-(-T // 16), 2 * 2, 4) == 2  # the mass call's default: 2 row blocks, 2 heads
    order_t, pos_t, p0_t, *_ = mass_kernel._row_tables(layout, rows, None, T, 16, q.device)
    doc = mass_kernel.document_keys(layout, q.device) if mode == "documents" else torch.empty(0, dtype=torch.bool)
    q_rows = q[rows.to(DEVICE)][order_t].contiguous()
    for splits in (2, 5, None):
        args = (q_rows, k, pos_t, p0_t, doc.to(DEVICE), mode, 0.2, 16, 16, "ieee", False, 4, splits)
        want = mass_kernel._row_lse(*args)
        for call in range(2):
            assert torch.equal(mass_kernel._row_lse(*args, fused=True), want), (splits, call)
    want = mass_kernel.attention_mass(q[rows.to(DEVICE)], rows, k, layout, mode=mode, block_n=16)
    for call in range(2):
        got = mass_kernel.attention_mass(q[rows.to(DEVICE)], rows, k, layout, mode=mode, block_n=16,
                                         fused_merge=True)
        assert torch.equal(got, want), call


def test_attention_mass_normaliser_splits_fill_the_gpu():
    """The normaliser's key splits: two programs per SM where the rows make few programs, at most 64 blocks a
    split, never under 16 blocks a split."""
    splits = mass_kernel.lse_splits
    assert splits(252, 32, 132) == 9  # ICR's 50 query rows, 8 key/value heads, 16k keys: 288 programs
    assert splits(1565, 32, 132) == 25  # 100k keys: 64 blocks a split
    assert splits(34, 6, 132) == 3  # 2k keys: 16 blocks a split at least
    assert splits(16, 1, 132) == 1 and splits(4000, 10_000, 132) == 63
    assert splits(0, 0, 132) == 1


def test_attention_mass_long_key_ranges_split_by_default():
    """Past 16 key blocks the normaliser's keys are split across programs by default and merged (here 8
    splits: 265 blocks, one program, 4 SMs assumed in the interpreter)."""
    from irforge.kernels.attention_mass import cpu as mass_cpu

    layout = SegmentLayout.from_lengths([(4200, [], 3), (20, [5], 2)])
    T = layout.total_tokens
    g = torch.Generator().manual_seed(8)
    q, k = (torch.randn(T, h, 16, generator=g).to(DEVICE) for h in (2, 1))
    rows = torch.tensor([4201, 4202, T - 1, 4200])
    for mode in ("causal", "documents"):
        ref = attention_mass(q[rows], rows, k, layout, mode=mode, backend="naive")
        got = mass_kernel.attention_mass(q[rows], rows, k, layout, mode=mode, block_n=16)
        close(got, ref, 1e-6, 1e-4, f"long keys, {mode}")
    assert mass_kernel.lse_splits(-(-T // 16), 1, 4) == 8
    order_t, pos_t, p0_t, *_ = mass_kernel._row_tables(layout, rows, None, T, 16, q.device)
    empty = torch.empty(0, dtype=torch.bool, device=q.device)
    one = mass_kernel._row_lse(q[rows][order_t], k, pos_t, p0_t, empty, "causal", 0.25, 16, 16, "ieee", False, 4, 1)
    auto = mass_kernel._row_lse(q[rows][order_t], k, pos_t, p0_t, empty, "causal", 0.25, 16, 16, "ieee", False, 4)
    ref = mass_cpu.row_lse(q[rows], rows, k, layout, "causal", 0.25)[order_t]
    close(one, ref, 1e-5, 1e-5, "one split")
    close(auto, ref, 1e-5, 1e-5, "split by default")


def test_attention_mass_row_tables_kept_per_layout_never_stale():
    """The kernel keeps the tables of the last rows and host weights on the layout (a model passes the same rows
    in every layer); other rows or weights must rebuild them."""
    layout, q, k, _ = make("three_prompts", 64, 4, 2, torch.float32, seed=4)
    T = layout.total_tokens
    a, b = torch.arange(T - 6, T), torch.tensor([T - 1, 3, 20, T - 7])
    wa, wb = torch.rand(len(a)), torch.rand(len(a))
    calls = [(a, None), (a, None), (b, None), (a, wa), (a, wa), (a, wb), (b, torch.rand(len(b)))]
    seen = []
    for rows, w in calls:
        ref = attention_mass(q[rows], rows, k, layout, weights=w, backend="naive")
        close(attention_mass(q[rows], rows, k, layout, weights=w, backend="triton"), ref, 1e-6, 1e-4, "mass")
        seen.append(layout.memo(("mass_rows", 64, str(q.device)), list)[0][1])
    assert seen[1] is seen[0] and seen[4] is seen[3]  # the same rows and weights again: nothing rebuilt
    assert len({id(t) for t in seen}) == 5


def direct_windowed_mass(q_rows, rows, k, prompts, weights, mode, window, scale):
    """A float64 softmax row by row over the keys its definition allows (its prompt, before it, within the
    window, document keys in "documents" mode), from the prompts' lengths alone: no layout helper involved."""
    group = q_rows.shape[1] // k.shape[1]
    starts, doc = [], []
    for inst, docs, query in prompts:
        n = inst + sum(docs) + query
        starts += [len(starts)] * n
        doc += [False] * inst + [True] * sum(docs) + [False] * query
    out = torch.zeros(k.shape[0], q_rows.shape[1], dtype=torch.float64)
    kd = k.double().cpu().repeat_interleave(group, dim=1)
    for i, r in enumerate(rows.tolist()):
        keys = [j for j in range(int(starts[r]), r + 1) if r - j < window and (mode == "causal" or doc[j])]
        if keys:
            s = torch.einsum("hd,thd->ht", q_rows[i].double().cpu(), kd[keys]) * scale
            out[keys] += weights[i].item() * torch.softmax(s, -1).T
    return out


@pytest.mark.parametrize("window", [1, 3, 17, 1000])
@pytest.mark.parametrize("mode", ["causal", "documents"])
def test_attention_mass_sliding_window_matches_a_direct_softmax(mode, window):
    """A sliding window (a row at p covers keys j with p - j < window, as transformers' masks for Mistral, Qwen2
    and Gemma layers) in every backend, with the normaliser computed (one launch and split) or given; rows
    unsorted, from several prompts."""
    from irforge.kernels.attention_mass import cpu as mass_cpu

    layout, q, k, _ = make("three_prompts", 64, 4, 2, torch.float32, seed=9)
    T = layout.total_tokens
    rng = np.random.default_rng(window)
    rows = torch.tensor(rng.permutation(sorted(set(rng.integers(0, T, size=30).tolist()))))
    w = torch.rand(len(rows), generator=torch.Generator().manual_seed(window))
    ref = direct_windowed_mass(q[rows.to(DEVICE)], rows, k, LAYOUTS["three_prompts"], w, mode, window, 0.125)
    for backend in ("naive", "torch", "triton"):
        got = attention_mass(q[rows.to(DEVICE)], rows, k, layout, weights=w, mode=mode, scale=0.125, window=window,
                             backend=backend)
        close(got, ref, 1e-6, 1e-4, f"{backend}, window {window}, {mode}")
    out = torch.full((T, 4), float("nan"), device=DEVICE)
    mass_kernel.attention_mass(q[rows.to(DEVICE)], rows, k, layout, weights=w, mode=mode, scale=0.125,
                               window=window, out=out, block_m=16, block_n=16)
    close(out, ref, 1e-6, 1e-4, f"triton 16x16, window {window}, {mode}")
    lse = mass_cpu.row_lse(q[rows.to(DEVICE)], rows, k, layout, mode, 0.125, window)
    got = attention_mass(q[rows.to(DEVICE)], rows, k, layout, lse=lse, weights=w, mode=mode, scale=0.125,
                         window=window, backend="triton")
    close(got, ref, 1e-6, 1e-4, f"triton with the normaliser given, window {window}, {mode}")
    order_t, pos_t, p0_t, *_ = mass_kernel._row_tables(layout, rows, None, T, 16, q.device, window)
    doc = mass_kernel.document_keys(layout, q.device) if mode == "documents" else torch.empty(0, dtype=torch.bool,
                                                                                              device=q.device)
    for splits in (1, 3):
        part = mass_kernel._row_lse(q[rows.to(DEVICE)][order_t].contiguous(), k, pos_t, p0_t, doc, mode, 0.125, 16, 16,
                                    "ieee", False, 4, splits)
        want = lse[order_t]
        assert torch.equal(torch.isinf(part), torch.isinf(want))
        fin = torch.isfinite(want)
        close(part[fin], want[fin], 1e-5, 1e-5, f"normaliser, splits {splits}, window {window}, {mode}")


def test_attention_mass_with_forward_lse_and_reductions():
    layout, q, k, v = make("two_prompts", 64, 4, 2, torch.float32)
    out, lse = block_sparse_attention(q, k, v, layout, backend="torch")
    rows = torch.arange(layout.total_tokens - 2, layout.total_tokens, device=DEVICE)  # the last query segment
    m = attention_mass(q[rows], rows, k, layout, lse=lse[rows], backend="torch")
    # each row's causal probabilities sum to one; the mean over rows too, per head
    torch.testing.assert_close(m.sum(0), torch.ones(4, device=DEVICE), atol=1e-5, rtol=1e-5)
    seg = attention_mass(q[rows], rows, k, layout, lse=lse[rows], reduce="segment", sum_heads=True, backend="torch")
    assert seg.shape == (len(layout.kinds),)
    assert seg[:4].abs().sum() == 0  # the first prompt's segments get nothing from the second prompt's rows
    torch.testing.assert_close(seg.sum(), torch.tensor(4.0, device=DEVICE), atol=1e-4, rtol=1e-5)
    docs = attention_mass(q[rows], rows, k, layout, mode="documents", reduce="segment", backend="torch")
    torch.testing.assert_close(docs.sum(0), torch.ones(4, device=DEVICE), atol=1e-5, rtol=1e-5)


def test_segment_sums_add_each_segments_keys_and_repeat_bit_for_bit():
    """reduce="segment" sums the per-key mass over each segment's tokens: in two steps (pieces of a segment, then
    its pieces), here with a 4,200-token segment (pieces of 65 tokens), one-token and empty segments, against
    float64 sums of the same values. Two calls give the same bits: on a GPU, index_add_'s atomic adds (the sum
    before) did not."""
    from irforge.kernels.attention_mass.common import segment_sums

    layout = SegmentLayout.from_lengths([(3, [1, 300, 0, 65], 0), (4200, [7, 1], 2), (0, [129], 0)])
    cu = torch.as_tensor(layout.cu_seqlens.copy())
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        mass = torch.rand(layout.total_tokens, 3, generator=gen, dtype=dtype).to(DEVICE)
        got = segment_sums(mass, layout)
        total = torch.cat((torch.zeros(1, 3, dtype=torch.float64), mass.double().cpu().cumsum(0)))
        want = total[cu[1:]] - total[cu[:-1]]
        assert got.shape == (len(layout.kinds), 3) and got.dtype == dtype
        close(got.double().cpu(), want, 1e-12 if dtype == torch.float64 else 1e-6, 1e-6, f"segment sums, {dtype}")
        empty = torch.as_tensor(np.diff(layout.cu_seqlens) == 0)
        assert torch.equal(got[empty.to(DEVICE)].cpu(), torch.zeros(4, 3, dtype=dtype))  # 4 empty segments
        assert torch.equal(segment_sums(mass, layout), got)
    with pytest.raises(ValueError, match="layout's tokens"):  # (the sum reads the layout's T rows unchecked)
        segment_sums(mass[:-1], layout)
    rows = torch.arange(layout.total_tokens - 200, layout.total_tokens, device=DEVICE)  # the last two prompts' ends
    q, k = (torch.randn(n, 2, 16, generator=gen).to(DEVICE) for n in (len(rows), layout.total_tokens))
    per_key = attention_mass(q, rows, k, layout, backend="torch").double().cpu()
    per_seg = attention_mass(q, rows, k, layout, reduce="segment", backend="torch")
    total = torch.cat((torch.zeros(1, 2, dtype=torch.float64), per_key.cumsum(0)))
    close(per_seg, total[cu[1:]] - total[cu[:-1]], 1e-6, 1e-5, "reduce='segment'")


@pytest.mark.parametrize("backend", ["torch", "triton", "naive"])
@pytest.mark.parametrize("view", ["transposed", "every other token"])
def test_inputs_of_any_strides_give_the_results_of_contiguous_copies(view, backend):
    """q, k and v as views whose rows of D values are not contiguous (a transpose, as from a [T, D, heads]
    tensor) or whose tokens are strided: each backend gives the results of contiguous copies. (The PyTorch path
    passed the transposed views to PyTorch's CPU flash op, which read them as contiguous: wrong outputs, with
    no error.)"""
    layout = SegmentLayout.from_lengths(LAYOUTS["three_prompts"])
    T, D = layout.total_tokens, 64
    g = torch.Generator().manual_seed(4)
    make_view = {"transposed": lambda h: torch.randn(T, D, h, generator=g).to(DEVICE).transpose(1, 2),
                 "every other token": lambda h: torch.randn(2 * T, h, D, generator=g).to(DEVICE)[::2]}[view]
    q, k, v = (make_view(h) for h in (4, 2, 2))  # (views made on the device: a copy there could be contiguous)
    assert not q.is_contiguous() and not k.is_contiguous() and not v.is_contiguous()
    want_o, want_l = block_sparse_attention(q.contiguous(), k.contiguous(), v.contiguous(), layout, backend=backend)
    got_o, got_l = block_sparse_attention(q, k, v, layout, backend=backend)
    close(got_o, want_o, 1e-6, 1e-6, f"{view} out")
    close(got_l, want_l, 1e-6, 1e-6, f"{view} lse")
    rows = torch.tensor([T - 1, T - 4, 3, 50])
    want_m = attention_mass(q.contiguous()[rows.to(DEVICE)], rows, k.contiguous(), layout, backend=backend)
    close(attention_mass(q[rows.to(DEVICE)], rows, k, layout, backend=backend), want_m, 1e-7, 1e-6, f"{view} mass")


def test_kernels_called_under_torch_compile_run_as_eagerly():
    """Called from code under torch.compile (a model compiled whole), both kernels give their eager results, with
    gradients where wanted, and TorchDynamo traces none of their operations: it did, and turned the layout's
    NumPy cumsum of booleans into a torch op that has no CPU kernel for them (NotImplementedError)."""
    from torch._dynamo.testing import CompileCounter

    layout, q, k, v = make("three_prompts", 32, 4, 2, torch.float32, seed=3)
    T = layout.total_tokens
    rows = torch.tensor([T - 6, T - 2, 12, 40])
    want_o, want_l = block_sparse_attention(q, k, v, layout)
    want_m = attention_mass(q[rows.to(DEVICE)], rows, k, layout, mode="documents", sum_heads=True)
    torch._dynamo.reset()
    traced = CompileCounter()  # a backend that counts the operations of the graphs it is given, then runs them
    bsa = torch.compile(lambda q, k, v: block_sparse_attention(q, k, v, layout), backend=traced)
    mass = torch.compile(lambda q_rows, k: attention_mass(q_rows, rows, k, layout, mode="documents", sum_heads=True)
                         * 2, backend=traced)
    o, lse = bsa(q, k, v)
    assert torch.equal(o, want_o) and torch.equal(lse, want_l)
    assert torch.equal(mass(q[rows.to(DEVICE)], k), 2 * want_m)
    assert traced.op_count == 1, traced.op_count  # the "* 2" (121 operations where the mass call was traced)
    qg = q.clone().requires_grad_()  # the PyTorch path, as eagerly
    bsa(qg, k, v)[0].sum().backward()
    qe = q.clone().requires_grad_()
    block_sparse_attention(qe, k, v, layout)[0].sum().backward()
    assert torch.equal(qg.grad, qe.grad)
    torch._dynamo.reset()


def test_every_launch_pins_the_compile_options(monkeypatch):
    """Each Triton launch of the wrappers (the block-sparse kernel and its merge, the attention-mass kernel, the
    normaliser and its merge) passes COMPILE_OPTIONS: multiply-adds contracted into FMAs whatever the Triton
    release's default (3.10 turns it off), as in every GPU timing."""
    from irforge.kernels._checks import COMPILE_OPTIONS

    assert COMPILE_OPTIONS == {"enable_fp_fusion": True}
    launches = []
    jit = type(bsa_kernel._bsa_fwd)  # triton's JITFunction, or its InterpretedFunction in the interpreter
    run = jit.run

    def recording_run(self, *args, **kwargs):
        launches.append((self.fn.__name__, {k: kwargs.get(k) for k in COMPILE_OPTIONS}))
        return run(self, *args, **kwargs)

    monkeypatch.setattr(jit, "run", recording_run)
    layout, q, k, v = make("long_doc", 32, 6, 2, torch.float32, seed=10)
    T = layout.total_tokens
    bsa_kernel.block_sparse_attention(q, k, v, layout, block_m=32, block_n=16, max_blocks=1)  # split tiles
    rows = torch.tensor([3, 10, 100, 200, 250, T - 3, T - 1, 150, 40])
    mass_kernel.attention_mass(q[rows.to(DEVICE)], rows, k, layout, block_n=16)  # lse computed over 2 splits
    assert {name for name, _ in launches} == {"_bsa_fwd", "_merge", "_mass_kernel", "_lse_kernel", "_lse_merge"}
    assert all(opts == COMPILE_OPTIONS for _, opts in launches), launches


def test_bfloat16_on_gpus_without_it_names_float16(monkeypatch):
    """Triton's bfloat16 products need compute capability 8.0: on an older GPU (T4: 7.5) the dispatch says so and
    names float16, and the CLI's --dtype auto picks float16 there (a fake capability: no GPU here)."""
    from irforge.cli import auto_dtype
    from irforge.kernels._checks import cuda_capability, pick_backend

    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    cuda_capability.cache_clear()  # (kept per device: a GPU's capability never changes, but this one is faked)
    with pytest.raises(TypeError, match="use float16"):
        pick_backend("auto", cuda, torch.bfloat16)
    assert pick_backend("auto", cuda, torch.float16) == "triton"
    assert pick_backend("torch", cuda, torch.bfloat16) == "torch"
    assert auto_dtype(cuda) == "float16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    cuda_capability.cache_clear()
    assert pick_backend("auto", cuda, torch.bfloat16) == "triton" and auto_dtype(cuda) == "bfloat16"
    cuda_capability.cache_clear()  # the real GPU's, for the tests after this one
    assert auto_dtype(torch.device("cpu")) == "float32"


def test_gradients_never_go_through_the_forward_only_triton_kernels():
    """Under autograd "auto" runs the PyTorch paths, also on CUDA, and "triton" raises: a Triton output carries
    no gradient, and inside a model the residual stream would hide that (silently wrong gradients)."""
    from irforge.kernels._checks import pick_backend

    cuda = torch.device("cuda")
    assert pick_backend("auto", cuda, torch.float16, grad=True) == "torch"
    assert pick_backend("auto", cuda, torch.float16, grad=False) == "triton"
    layout, q, k, v = make("two_prompts", 64, 4, 2, torch.float32)
    q.requires_grad_()
    rows = torch.tensor([9, 10])
    with pytest.raises(ValueError, match="no backward"):
        block_sparse_attention(q, k, v, layout, backend="triton")
    with pytest.raises(ValueError, match="no backward"):
        attention_mass(q[rows], rows, k, layout, backend="triton")
    out, _ = block_sparse_attention(q, k, v, layout)  # auto: the torch path, with a gradient
    mass = attention_mass(q[rows], rows, k, layout)
    assert out.grad_fn is not None and mass.grad_fn is not None
    with torch.no_grad():  # no gradient wanted: the kernel runs
        block_sparse_attention(q, k, v, layout, backend="triton")
        attention_mass(q[rows], rows, k, layout, backend="triton")


def test_without_triton_auto_runs_pytorch_on_cuda_and_triton_names_the_package(monkeypatch):
    """A CUDA build of torch may come without the triton package (Windows): "auto" then runs the PyTorch path on
    the GPU, with a warning, instead of failing on the import; "triton" raises ImportError naming the package.
    The PyTorch path off the CPU takes the explicit softmax without trying the CPU flash op (a fake CUDA device:
    no GPU here; the op is counted)."""
    from irforge.kernels import _checks
    from irforge.kernels.block_sparse_attention import cpu as bsa_cpu

    cuda = torch.device("cuda")
    monkeypatch.setattr(_checks, "triton_installed", lambda: False)
    with pytest.warns(RuntimeWarning, match="triton package is not installed"):
        assert _checks.pick_backend("auto", cuda, torch.bfloat16) == "torch"
    with pytest.raises(ImportError, match="needs the triton package"):
        _checks.pick_backend("triton", cuda, torch.float16)
    assert _checks.pick_backend("auto", torch.device("cpu"), torch.float32) == "torch"  # no warning on the CPU
    calls = []
    monkeypatch.setattr(bsa_cpu, "_flash_op", lambda: lambda *a, **kw: calls.append(1))
    layout, q, k, v = make("two_prompts", 16, 4, 2, torch.float32)
    meta = [x.to("meta") for x in (q, k, v)]  # another device than the CPU, shapes only
    o, lse = bsa_cpu.block_sparse_attention(*meta, layout)
    assert o.device.type == "meta" and o.shape == q.shape and lse.shape == q.shape[:2] and not calls


class SmallGPU:
    """A kernel launcher that refuses, as Triton does for lack of shared memory, blocks of more than 16 keys."""

    def __init__(self, fn):
        self.fn, self.tried = fn, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            from irforge.kernels._shared_memory import OutOfResources

            self.tried.append((kwargs["BLOCK_N"], kwargs.get("num_stages")))
            if kwargs["BLOCK_N"] > 16:
                raise OutOfResources(200_000, 100_000, "shared memory")
            return self.fn[grid](*args, **kwargs)
        return launch


def test_default_launches_fall_back_to_configurations_that_fit_shared_memory(monkeypatch):
    """A GPU short of shared memory for the default configuration gets the first smaller one that launches
    (fewer stages, then fewer keys per block), with the same results; the fit is remembered per device and
    shape, and a configuration the caller set is launched as given."""
    from irforge.kernels import _shared_memory
    from irforge.kernels._shared_memory import OutOfResources

    monkeypatch.setattr(_shared_memory, "_fitted", {})
    layout, q, k, v = make("three_prompts", 64, 4, 2, torch.float32)
    ref_o, ref_l = block_sparse_attention(q, k, v, layout, backend="naive")
    bsa = SmallGPU(bsa_kernel._bsa_fwd)
    monkeypatch.setattr(bsa_kernel, "_bsa_fwd", bsa)
    for attempt in range(2):
        bsa.tried.clear()
        out, lse = bsa_kernel.block_sparse_attention(q, k, v, layout, max_blocks=2)  # split tiles: merged too
        close(out, ref_o, 2e-5, 1e-4, f"out, attempt {attempt}")
        close(lse, ref_l, 2e-5, 1e-4, f"lse, attempt {attempt}")
        assert bsa.tried[-1] == (16, 2)
    assert len(bsa.tried) == 1  # the second call starts from the configuration that fitted
    with pytest.raises(OutOfResources):
        bsa_kernel.block_sparse_attention(q, k, v, layout, block_n=32)
    bsa.tried.clear()
    bsa_kernel.block_sparse_attention(q, k, v, layout, block_n=16, num_stages=3)  # pinned: as given
    assert bsa.tried == [(16, 3)]

    rows = torch.tensor([3, 9, 20, 33, 40, 61, 62, 63])
    for name in ("_mass_kernel", "_lse_kernel"):
        monkeypatch.setattr(mass_kernel, name, SmallGPU(getattr(mass_kernel, name)))
    for mode in ("causal", "documents"):
        ref = attention_mass(q[rows], rows, k, layout, mode=mode, backend="naive")
        close(mass_kernel.attention_mass(q[rows], rows, k, layout, mode=mode), ref, 1e-6, 1e-4, f"mass, {mode}")
        assert mass_kernel._mass_kernel.tried[-1][0] == 16 and mass_kernel._lse_kernel.tried[-1][0] == 16
    with pytest.raises(OutOfResources):
        mass_kernel.attention_mass(q[rows], rows, k, layout, block_n=64)


def test_bad_inputs(monkeypatch):
    layout, q, k, v = make("odd", 64, 4, 2, torch.float32)
    with pytest.raises(ValueError, match="multiple"):
        block_sparse_attention(q, k[:, :1].expand(-1, 3, -1), v[:, :1].expand(-1, 3, -1), layout)
    with pytest.raises(ValueError, match="layout covers"):
        block_sparse_attention(q[:-1], k[:-1], v[:-1], layout)
    with pytest.raises(TypeError, match="dtype"):
        block_sparse_attention(q.double(), k.double(), v.double(), layout)
    with pytest.raises(ValueError, match="backend"):
        block_sparse_attention(q, k, v, layout, backend="cuda")
    with pytest.raises(ValueError, match=r"\[T, heads, D\]"):
        block_sparse_attention(q[0], k, v, layout)
    with pytest.raises(ValueError, match="each prompt"):
        SegmentLayout(np.array([0, 2, 4]), np.array([1, 2]))
    with pytest.raises(ValueError, match="no query"):
        SegmentLayout.from_lengths([(2, [3], 1)]).__class__(np.array([0, 2, 5]), np.array([0, 1]))
    with pytest.raises(ValueError, match="non-negative"):
        SegmentLayout.from_lengths([(2, [-1], 1)])
    # Fractional boundaries, kinds or lengths are refused, not truncated into another layout.
    with pytest.raises(TypeError, match="cu_seqlens must hold integers"):
        SegmentLayout(np.array([0, 1.5, 3.0, 4]), np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="kinds must hold integers"):
        SegmentLayout(np.array([0, 1, 3, 4]), np.array([0, 1.2, 2]))
    for bad in (1.5, None, True):
        with pytest.raises(TypeError, match="segment lengths must be ints"):
            SegmentLayout.from_lengths([(2, [bad], 1)])
    assert SegmentLayout.from_lengths([(np.int32(2), np.array([3, 0]), 1)]).total_tokens == 6
    for bad in ([(4, 5, 3)], [(4, [5])], "abc", [(4, "56", 3)]):  # a document length where a list belongs, ...
        with pytest.raises(TypeError, match=r"prompt 0 must be \(instruction length, \[document lengths\]"):
            SegmentLayout.from_lengths(bad)
    for bad in (0, 2.5, "16", True):
        with pytest.raises(ValueError, match="block_m must be a positive int"):
            layout.tiles(bad)
    with pytest.raises(ValueError, match="at least one head and D"):
        block_sparse_attention(q[..., :0], k[..., :0], v[..., :0], layout)
    with pytest.raises(ValueError, match="at least one head and D"):
        attention_mass(q[:2, :, :0], torch.tensor([0, 1]), k[..., :0], layout)
    if not torch.cuda.is_available():
        with monkeypatch.context() as m:  # the interpreter, which runs CPU tensors, is off in a user's process
            m.delenv("TRITON_INTERPRET", raising=False)
            with pytest.raises(ValueError, match="needs CUDA tensors"):
                block_sparse_attention(q, k, v, layout, backend="triton")
    for bad in (dict(block_n=48), dict(block_m=8), dict(num_warps=3), dict(num_warps=64), dict(num_warps=True),
                dict(block_n=True), dict(max_blocks=-1), dict(max_blocks=True), dict(num_stages=0),
                dict(max_registers=300), dict(max_registers=16), dict(max_registers=True), dict(max_registers=128.0),
                dict(scale=-0.5)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            bsa_kernel.block_sparse_attention(q, k, v, layout, **bad)
    for bad in (dict(block_n=100), dict(block_m=0), dict(num_warps=6), dict(num_stages=1.5), dict(head_sum="sum")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            mass_kernel.attention_mass(q[:2], torch.tensor([0, 1]), k, layout, **bad)
    # The kernels' own entries (with their launch options) check what the public functions check, and the
    # tensors given to be written in place: unchecked, a short q or a small out or lse was read or written past
    # its end (in the interpreter: "free(): invalid size", the process killed).
    T = layout.total_tokens
    with pytest.raises(ValueError, match="must share T"):
        bsa_kernel.block_sparse_attention(q[:-10], k, v, layout)
    with pytest.raises(ValueError, match="multiple"):
        bsa_kernel.block_sparse_attention(q[:, :3], k, v, layout)
    with pytest.raises(ValueError, match="k has 163 tokens"):
        mass_kernel.attention_mass(q[:2], torch.tensor([0, 1]), k[:-10], layout)
    for kw, err, match in ((dict(out=torch.empty(T - 10, 4, 64)), ValueError, r"out must have shape \[173, 4, 64\]"),
                           (dict(out=torch.empty(T, 4, 64, dtype=torch.float16)), TypeError, "out must have dtype"),
                           (dict(out=torch.empty(T, 64, 4).transpose(1, 2)), ValueError, "out must be contiguous"),
                           (dict(lse=torch.empty(T, 2)), ValueError, r"lse must have shape \[173, 4\]"),
                           (dict(lse=torch.empty(T, 4, dtype=torch.float64)), TypeError, "lse must have dtype"),
                           (dict(lse=torch.empty(T, 4, device="meta")), ValueError, "lse must be on")):
        kw = {name: x if x.is_meta else x.to(DEVICE) for name, x in kw.items()}
        with pytest.raises(err, match=match):
            bsa_kernel.block_sparse_attention(q, k, v, layout, **kw)
    for out, err, match in ((torch.empty(T - 10, 4), ValueError, r"out must have shape \[173, 4\]"),
                            (torch.empty(T, 4, dtype=torch.float16), TypeError, "out must have dtype"),
                            ([0.0] * (4 * T), TypeError, "out must be a torch.Tensor")):
        with pytest.raises(err, match=match):
            mass_kernel.attention_mass(q[:2], torch.tensor([0, 1]), k, layout,
                                       out=out.to(DEVICE) if isinstance(out, torch.Tensor) else out)
    rows = torch.tensor([0, 3])
    with pytest.raises(IndexError):
        attention_mass(q[rows], torch.tensor([0, 10_000]), k, layout)
    with pytest.raises(ValueError, match="mode"):
        attention_mass(q[rows], rows, k, layout, mode="full")
    for bad_rows in (rows.float(), rows.bool(), rows.tolist(), rows[None]):
        with pytest.raises(ValueError, match="rows must be an integer tensor"):
            attention_mass(q[rows], bad_rows, k, layout)
    for bad in (0, -3, 2.5, True, "8"):
        with pytest.raises(ValueError, match="window"):
            attention_mass(q[rows], rows, k, layout, window=bad)
    for bad in (0.0, -1.0, float("nan"), float("inf"), "a", True):
        with pytest.raises(ValueError, match="scale"):
            attention_mass(q[rows], rows, k, layout, scale=bad)
        with pytest.raises(ValueError, match="scale"):
            block_sparse_attention(q, k, v, layout, scale=bad)
    with pytest.raises(TypeError, match="dtypes differ"):
        attention_mass(q[rows], rows, k.half(), layout)
    with pytest.raises(TypeError, match="lse"):
        attention_mass(q[rows], rows, k, layout, lse=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="lse"):
        attention_mass(q[rows], rows, k, layout, lse=torch.zeros(2, 3))
    # wide=False where a tensor needs 64-bit offsets is refused, not run with offsets that wrap (faked: 2^31
    # elements do not fit this test); given where it is not needed, it runs
    bsa_kernel.block_sparse_attention(q, k, v, layout, wide=False)
    monkeypatch.setattr(bsa_kernel, "needs_wide", lambda *tensors: True)  # (check_wide's size test, both kernels')
    with pytest.raises(ValueError, match="wide=False, but a tensor holds 2"):
        bsa_kernel.block_sparse_attention(q, k, v, layout, wide=False)
    with pytest.raises(ValueError, match="wide=False, but a tensor holds 2"):
        mass_kernel.attention_mass(q[rows], rows, k, layout, wide=False)


@gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype,atol,rtol", [(torch.bfloat16, 3e-2, 3e-2), (torch.float16, 1e-2, 1e-2)])
def test_gpu_bf16_fp16_match_reference(dtype, atol, rtol):
    """The public call (on Hopper: the one-loop form, 32-key blocks, 3 stages), then the four-loop form, the
    one-loop form, and runs of tiles (with split tiles too), each in the card's default launch configuration;
    on Hopper each with tensor-memory loads too (refused before it)."""
    layout = SegmentLayout.from_lengths([(64, [160] * 12, 50), (30, [97, 1, 63], 7)])
    g = torch.Generator().manual_seed(0)
    T = layout.total_tokens
    q, k, v = (torch.randn(T, h, 128, generator=g).to(dtype).cuda() for h in (8, 2, 2))
    ref_o, ref_l = block_sparse_attention(q, k, v, layout, backend="naive")
    o, l = block_sparse_attention(q, k, v, layout, backend="triton")
    close(o, ref_o, atol, rtol, "gpu out")
    close(l, ref_l, 1e-2, 1e-2, "gpu lse")
    forms = [dict(one_loop=False), dict(one_loop=True), dict(tiles_per_program=4),
             dict(tiles_per_program=16, max_blocks=2), dict(tiles_per_program=4, query_load="tile", block_n=32)]
    if HAS_TMA:  # tensor-memory loads: in each form, 4 programs per SM, and the sweep's 128-row tiles
        forms += [dict(tma=True), dict(tma=True, one_loop=False), dict(tma=True, tiles_per_program=4, max_blocks=2),
                  dict(tma=True, num_stages=2, max_registers=128),
                  dict(tma=True, block_m=128, block_n=32, num_warps=8, num_stages=3, max_registers=128),
                  dict(tma=True, block_m=128, block_n=64, num_warps=8, num_stages=2, max_registers=128)]
    else:
        with pytest.raises(ValueError, match="compute capability"):
            bsa_kernel.block_sparse_attention(q, k, v, layout, tma=True)
    for form in forms:
        o, l = bsa_kernel.block_sparse_attention(q, k, v, layout, **form)  # the default launch configuration
        close(o, ref_o, atol, rtol, f"gpu out, {form}")
        close(l, ref_l, 1e-2, 1e-2, f"gpu lse, {form}")


@gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["causal", "documents"])
def test_gpu_attention_mass_with_rows_and_weights_on_either_device(mode):
    """Rows and weights given on the CPU (no synchronisation: copied through pinned memory) or on the GPU; with
    and without a sliding window."""
    layout = SegmentLayout.from_lengths([(64, [160] * 12, 50), (30, [97, 1, 63], 7)])
    g = torch.Generator().manual_seed(0)
    T = layout.total_tokens
    q, k = (torch.randn(T, h, 128, generator=g).cuda() for h in (8, 2))
    rows = torch.arange(T - 57, T)
    w = torch.rand(len(rows), generator=g)
    for window in (None, 300):
        ref = attention_mass(q[rows.cuda()], rows, k, layout, weights=w, mode=mode, window=window, backend="naive")
        for r, weights in ((rows, w), (rows.cuda(), w.cuda()), (rows, w.cuda())):
            got = attention_mass(q[rows.cuda()], r, k, layout, weights=weights, mode=mode, window=window,
                                 backend="triton")
            close(got, ref, 1e-5, 1e-3, f"gpu mass, rows on {r.device}, weights on {weights.device}, window {window}")


@gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_warm_calls_never_wait_for_the_gpu():
    """A model calls the kernels once per layer with one layout and the same rows. After the first call, which
    builds the launch and row tables and copies them, a call must not make the host wait for the GPU (a wait per
    layer would keep the host from queueing the next layers' work while the GPU runs). torch's sync debug mode
    raises at any synchronising torch call: a pageable copy to the GPU, a read back, an .item()."""
    layout = SegmentLayout.from_lengths([(64, [160] * 40, 50)])
    T = layout.total_tokens
    q, k, v = (torch.randn(T, h, 128, device="cuda", dtype=torch.bfloat16) for h in (8, 2, 2))
    rows = torch.arange(T - 50, T)  # on the host, as the rerankers pass them
    _, lse = block_sparse_attention(q, k, v, layout)
    q_rows, lse_rows = q[rows.cuda()], lse[rows.cuda()]
    calls = [lambda: block_sparse_attention(q, k, v, layout),
             lambda: attention_mass(q_rows, rows, k, layout, lse=lse_rows),
             lambda: attention_mass(q_rows, rows, k, layout),  # the rows' log-sum-exp computed (ICR)
             lambda: attention_mass(q_rows, rows, k, layout, mode="documents", reduce="segment", sum_heads=True)]
    first = [f() for f in calls]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        again = [f() for f in calls]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    for a, b in zip(first, again):
        for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            assert torch.equal(x, y)


@gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_kernels_replay_from_a_cuda_graph():
    """Serving stacks capture a model's forward pass in a CUDA graph. Both kernels, captured after a first call
    (which builds the launch tables kept on the layout), replay on new inputs written into the same tensors and
    give what eager calls give: the block-sparse kernel with a split query tile (its merge kernel too) and the
    attention mass with host positions."""
    layout = SegmentLayout.from_lengths([(64, [160] * 120, 50)])  # the query tile's 19k keys are split
    T = layout.total_tokens
    q, k, v = (torch.randn(T, h, 128, device="cuda", dtype=torch.bfloat16) for h in (8, 2, 2))
    rows = torch.arange(T - 50, T)
    rows_dev = rows.cuda()  # (no host-to-device copy inside the capture)

    def step():
        o, lse = block_sparse_attention(q, k, v, layout, backend="triton")
        return o, lse, attention_mass(q[rows_dev], rows, k, layout, lse=lse[rows_dev], backend="triton")

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graphs asks
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for x in (q, k, v):
        x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    for name, got, want in zip(("output", "log-sum-exp", "mass"), captured, step()):
        assert torch.equal(got, want), f"{name} replayed from a CUDA graph differs from an eager call"


@gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("opts", [{}, dict(one_loop=False), dict(max_blocks=8), dict(max_blocks=8, tma=False)])
def test_gpu_split_tiles_merged_in_the_kernel_every_time(opts):
    """``fused_merge`` on the GPU, where chunks of one tile finish in any order and on different SMs: in each of
    30 calls, and from two CUDA graphs captured on one stream, the same bits as the merge kernel's (a chunk that
    merged before another's partials reached it would differ). The default split, and chunks of 8 blocks (60
    or more per query tile)."""
    layout = SegmentLayout.from_lengths([(64, [160] * 120, 50), (30, [97, 1, 63], 7)])
    T = layout.total_tokens
    g = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(T, h, 128, generator=g).to(torch.bfloat16).cuda() for h in (32, 8, 8))
    want = bsa_kernel.block_sparse_attention(q, k, v, layout, **opts)
    for call in range(30):
        got = bsa_kernel.block_sparse_attention(q, k, v, layout, fused_merge=True, **opts)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), call
    # two graphs captured on the same stream, the second replayed first: each zeroes its own counters
    outs = [(torch.full_like(q, float("nan")), torch.full((T, 32), float("nan"), device="cuda")) for _ in "ab"]
    graphs = [torch.cuda.CUDAGraph() for _ in "ab"]
    for graph, (out, lse) in zip(graphs, outs):
        with torch.cuda.graph(graph):
            bsa_kernel.block_sparse_attention(q, k, v, layout, out=out, lse=lse, fused_merge=True, **opts)
    for i in (1, 0, 1, 1, 0):
        outs[i][0].fill_(float("nan"))
        graphs[i].replay()
        torch.cuda.synchronize()
        assert torch.equal(outs[i][0], want[0]) and torch.equal(outs[i][1], want[1]), i


@gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["causal", "documents"])
def test_gpu_attention_mass_normaliser_kernel_one_launch_and_split(mode):
    """The rows' log-sum-exp kernel in bf16 on the GPU, in one launch and split by default over a 20k-key range,
    against the PyTorch normaliser; then the mass it feeds against the float64 reference."""
    from irforge.kernels.attention_mass import cpu as mass_cpu

    layout = SegmentLayout.from_lengths([(64, [160] * 120, 50)])
    T = layout.total_tokens
    g = torch.Generator().manual_seed(9)
    q, k = (torch.randn(T, h, 128, generator=g).to(torch.bfloat16).cuda() for h in (32, 8))
    rows = torch.arange(T - 50, T)
    q_rows = q[rows.cuda()]
    ref = mass_cpu.row_lse(q_rows, rows, k, layout, mode, 128 ** -0.5)
    _, pos_t, p0_t, *_ = mass_kernel._row_tables(layout, rows, None, T, 64, q.device)
    doc = mass_kernel.document_keys(layout, q.device) if mode == "documents" else torch.empty(0, dtype=torch.bool,
                                                                                              device="cuda")
    for splits in (1, None):
        got = mass_kernel._row_lse(q_rows, k, pos_t, p0_t, doc, mode, 128 ** -0.5, 64, 64, "tf32", False, 4, splits)
        close(got, ref, 1e-4, 1e-4, f"gpu normaliser, {mode}, splits {splits}")
    for call in range(30):  # the splits merged in their own launch (fused): the merge kernel's bits every time
        fused = mass_kernel._row_lse(q_rows, k, pos_t, p0_t, doc, mode, 128 ** -0.5, 64, 64, "tf32", False, 4,
                                     fused=True)
        assert torch.equal(fused, got), call
    want = attention_mass(q_rows, rows, k, layout, mode=mode, backend="naive")
    close(attention_mass(q_rows, rows, k, layout, mode=mode, backend="triton"), want, 1e-6, 1e-2, f"gpu mass, {mode}")


def test_cpu_path_repeats_grouped_heads_where_the_flash_op_rejects_them(monkeypatch):
    """Builds of the CPU flash op that need as many key/value heads as query heads get them repeated. (The op
    runs on CPU tensors only: on a GPU machine the tensors are moved to the CPU.)"""
    from irforge.kernels.block_sparse_attention import cpu

    real = cpu._flash_op()
    calls = []

    def strict(q, k, v, *args, **kwargs):
        calls.append(k.shape[1])
        if k.shape[1] != q.shape[1]:
            raise RuntimeError("number of heads in key/value must equal the number of heads in query")
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(cpu, "_flash_op", lambda: strict)
    layout, *qkv = make("two_prompts", 64, 4, 2, torch.float32)
    q, k, v = (t.cpu() for t in qkv)
    ref_o, ref_l = block_sparse_attention(q, k, v, layout, backend="naive")
    o, l = block_sparse_attention(q, k, v, layout, backend="torch")
    close(o, ref_o, 2e-5, 1e-4, "repeated-heads out")
    close(l, ref_l, 2e-5, 1e-4, "repeated-heads lse")
    assert 2 in calls and 4 in calls  # tried as given, then repeated


def test_cpu_path_fallback_without_the_flash_op(monkeypatch):
    from irforge.kernels.block_sparse_attention import cpu

    monkeypatch.setattr(cpu, "_flash", cpu._explicit)
    layout, q, k, v = make("two_prompts", 80, 4, 2, torch.float32)
    ref_o, ref_l = block_sparse_attention(q, k, v, layout, backend="naive")
    o, l = block_sparse_attention(q, k, v, layout, backend="torch")
    close(o, ref_o, 2e-5, 1e-4, "fallback out")
    close(l, ref_l, 2e-5, 1e-4, "fallback lse")


def cpu_path_case(monkeypatch, op, native: bool, hq: int, seed: int):
    """The CPU path with its flash op replaced by ``op`` and native bfloat16 as given; float32 inputs q [T, hq, 64],
    k and v [T, 2, 64] over a layout that takes all three of its forms (CPU_FORMS below)."""
    from irforge.kernels.block_sparse_attention import cpu

    monkeypatch.setattr(cpu, "_flash_op", lambda: op)
    monkeypatch.setattr(cpu, "native_bf16", lambda: native)
    layout = SegmentLayout.from_lengths([p for form in ("chunks, gathered", "stacked", "long document")
                                         for p in CPU_FORMS[form][0]])
    g = torch.Generator().manual_seed(seed)
    return (layout, *(torch.randn(layout.total_tokens, h, 64, generator=g) for h in (hq, 2, 2)))


def test_cpu_path_bfloat16_calls_the_flash_op_rejects_fall_back_to_float32(monkeypatch):
    """A torch build whose CPU flash op refuses bfloat16 (where the CPU multiplies it natively) gets the explicit
    softmax in float32: the log-sum-exps as exact as with float32 copies, not rounded to bfloat16."""
    from irforge.kernels.block_sparse_attention import cpu

    real = cpu._flash_op()

    def no_bf16(q, k, v, *args, **kwargs):
        if q.dtype == torch.bfloat16:
            raise RuntimeError("bfloat16 is not supported")
        return real(q, k, v, *args, **kwargs)

    layout, *qkv = cpu_path_case(monkeypatch, no_bf16, True, 4, seed=4)
    q, k, v = (x.to(torch.bfloat16) for x in qkv)
    ref_o, ref_l = block_sparse_attention(q, k, v, layout, backend="naive")
    o, l = block_sparse_attention(q, k, v, layout, backend="torch")
    close(o, ref_o, 2e-2, 2e-2, "out")
    close(l, ref_l, 1e-5, 1e-5, "lse")


# layouts for the CPU path's three forms (kernels/block_sparse_attention/cpu.py), with the forms each must take
CPU_FORMS = {
    # documents of differing lengths: gathered, padded, up to 3 chunks (the query, its prefix over 2 x 40 + 128:
    # two parts, merged)
    "chunks, gathered": ([(6, [33, 70, 5, 64, 64], 40)], {"_chunks", "_two_parts"}),
    # equal documents back to back: read and written as views; two prompts, each with its own prefix
    "chunks, views": ([(6, [64, 64, 64], 4), (3, [32, 32], 2)], {"_chunks", "_two_parts"}),
    # documents after an instruction longer than 2 x length + 128: their own parts in chunks over copies of their
    # rows (gathered, padded), the instruction part of all of them in one call, merged; the query's two parts
    "stacked": ([(200, [9, 9, 30, 1, 17], 5), (150, [3, 70], 2)], {"_stacked", "_chunks", "_two_parts"}),
    # a document longer than CHUNKED_MAX_LEN
    "long document": ([(4, [600], 3)], {"_two_parts"}),
}


@pytest.mark.parametrize("form", list(CPU_FORMS))
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES + [(torch.bfloat16, 2e-2, 2e-2)])  # (the CPU path runs bf16)
def test_cpu_path_forms_match_the_reference(monkeypatch, form, dtype, atol, rtol):
    """The CPU path's chunked calls (views or gathers, padded chunks), its stacked form and its merged two-part
    calls each match the reference, and each layout takes the forms it is meant to (so no form goes untested)."""
    from irforge.kernels.block_sparse_attention import cpu

    spec, forms = CPU_FORMS[form]
    taken = set()
    for name in ("_chunks", "_two_parts", "_stacked"):
        real = getattr(cpu, name)
        monkeypatch.setattr(cpu, name, lambda *a, _f=real, _n=name: (taken.add(_n), _f(*a))[1])
    layout = SegmentLayout.from_lengths(spec)
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(layout.total_tokens, h, 64, generator=g).to(dtype) for h in (4, 2, 2))
    ref_o, ref_l = block_sparse_attention(q, k, v, layout, backend="naive")
    o, l = block_sparse_attention(q, k, v, layout, backend="torch")
    assert taken == forms
    assert o.shape == q.shape and o.dtype == dtype and o.is_contiguous() and l.shape == q.shape[:2]
    close(o, ref_o, atol, rtol, f"{form} out")
    close(l, ref_l, atol, rtol, f"{form} lse")


@pytest.mark.parametrize("native", [True, False])
def test_cpu_path_runs_bfloat16_natively_where_the_cpu_multiplies_it(monkeypatch, native):
    """bfloat16 inputs reach PyTorch's flash op as they are where the CPU multiplies bfloat16 natively (AVX512-BF16
    or AMX), and as float32 copies elsewhere, or where a gradient is wanted; float16 always as float32 copies.
    Either way, in both forms, the results match the reference within bfloat16's precision."""
    from irforge.kernels.block_sparse_attention import cpu

    real = cpu._flash_op()
    seen = []

    def spy(q, k, v, *args, **kwargs):
        seen.append((q.dtype, k.dtype, v.dtype))
        return real(q, k, v, *args, **kwargs)

    layout, q, k, v = cpu_path_case(monkeypatch, spy, native, 6, seed=3)
    for dtype, want in ((torch.bfloat16, torch.bfloat16 if native else torch.float32),
                        (torch.float16, torch.float32)):
        qd, kd, vd = (x.to(dtype) for x in (q, k, v))
        ref_o, ref_l = block_sparse_attention(qd, kd, vd, layout, backend="naive")
        seen.clear()
        o, l = block_sparse_attention(qd, kd, vd, layout, backend="torch")
        assert seen and set(seen) == {(want, want, want)}, (dtype, native, set(seen))
        assert o.dtype == dtype and l.dtype == torch.float32
        close(o, ref_o, 2e-2, 2e-2, f"{dtype} out, native {native}")
        close(l, ref_l, 2e-2, 2e-2, f"{dtype} lse, native {native}")
    qg = q.to(torch.bfloat16).requires_grad_()
    seen.clear()
    o, _ = block_sparse_attention(qg, k.to(torch.bfloat16), v.to(torch.bfloat16), layout, backend="torch")
    assert not seen and o.dtype == torch.bfloat16  # the explicit float32 softmax, which passes gradients


@pytest.mark.parametrize("layout_name", ["odd", "three_prompts", "long_instruction", "stacked", "long document",
                                         "chunks, gathered"])
def test_cpu_path_gradients_match_the_reference(layout_name):
    """Fine-tuning (BlockRank's loss) differentiates the torch paths: their gradients for q, k and v, through
    both the output and the log-sum-exp, equal the float64 reference's. PyTorch's CPU flash op passes no
    gradient through its log-sum-exp, which the merge of a document's prefix and own part needs. The last three
    layouts take the CPU path's stacked form, its merged two-part form and its gathered, padded chunks."""
    if layout_name in CPU_FORMS:
        layout = SegmentLayout.from_lengths(CPU_FORMS[layout_name][0])
        g = torch.Generator().manual_seed(3)
        q, k, v = (torch.randn(layout.total_tokens, h, 64, generator=g) for h in (4, 2, 2))
    else:
        layout, q, k, v = make(layout_name, 64, 4, 2, torch.float32, seed=3)
    g = torch.Generator().manual_seed(4)
    w_o, w_l = torch.randn(q.shape, generator=g).to(q.device), torch.randn(q.shape[:2], generator=g).to(q.device)
    grads = {}
    for backend in ("torch", "naive"):
        x = [t.detach().requires_grad_() for t in (q, k, v)]
        o, l = block_sparse_attention(*x, layout, backend=backend)
        grads[backend] = torch.autograd.grad((o * w_o).sum() + (l * w_l).sum(), x)
    for name, got, want in zip("qkv", grads["torch"], grads["naive"]):
        close(got, want, 1e-4, 1e-4, f"d{name}")


def cpu_mass_in_chunks(monkeypatch, chunk: int):
    """The CPU mass path's module, with key chunks of ``chunk`` keys however few the rows."""
    from irforge.kernels.attention_mass import cpu as mass_cpu

    monkeypatch.setattr(mass_cpu, "KEY_CHUNK", chunk)
    monkeypatch.setattr(mass_cpu, "SCORE_ELEMENTS", 1)
    return mass_cpu


@pytest.mark.parametrize("chunk", [7, 10_000])
@pytest.mark.parametrize("mode", ["causal", "documents"])
@pytest.mark.parametrize("window", [None, 9])
def test_cpu_mass_key_chunks_match_the_reference(monkeypatch, chunk, mode, window):
    """The CPU path's forms: a prompt whose keys fit one chunk takes one pass (its normaliser from the same
    scores); 7-key chunks force the first pass for the normaliser; a given log-sum-exp takes neither. Rows of
    three prompts, one with no document key before it in "documents" mode (it must contribute nothing)."""
    mass_cpu = cpu_mass_in_chunks(monkeypatch, chunk)
    layout, q, k, _ = make("three_prompts", 64, 4, 2, torch.float32, seed=8)
    rows = torch.tensor([1, 33, 34, 37, 45, 47, 55, 92, 97])  # row 1: an instruction row, no document before it
    w = torch.rand(len(rows), generator=torch.Generator().manual_seed(9)).to(DEVICE)
    lse = mass_cpu.row_lse(q[rows], rows, k, layout, mode, 0.125, window)
    for given in (None, lse):
        ref = attention_mass(q[rows], rows, k, layout, lse=given, weights=w, mode=mode, window=window, scale=0.125,
                             backend="naive")
        got = attention_mass(q[rows], rows, k, layout, lse=given, weights=w, mode=mode, window=window, scale=0.125,
                             backend="torch")
        close(got, ref, 1e-6, 1e-4, f"chunk {chunk}, lse given: {given is not None}")


@pytest.mark.parametrize("mode, window, kept, masked", [
    ("causal", None, 8, [(61, 68)]), ("documents", None, 8, []), ("causal", 5, 8, [(56, 68)]),
    ("documents", 5, 4, [(56, 59)])])
def test_cpu_mass_masks_only_the_columns_where_the_rows_ranges_differ(mode, window, kept, masked):
    """Each row covers one contiguous key range. The CPU path masks only the columns where its rows' ranges start
    or end apart: the query segment's own keys in "causal" mode, none in "documents" mode (every query row covers
    all of its prompt's documents), the window's edges under a window. Rows covering no key (past the documents'
    window) are left out. Its chunks and masks allow exactly the reference's pairs."""
    from irforge.kernels.attention_mass import cpu as mass_cpu
    from irforge.kernels.attention_mass.naive import allowed_keys

    layout = SegmentLayout.from_lengths([(10, [20, 30], 8)])  # documents 10-59, query 60-67
    rows = torch.arange(60, 68)
    [(sel, chunks, masks)] = mass_cpu._prompts(layout, rows, mode, torch.device("cpu"), 4, window)
    assert sel.tolist() == list(range(kept))
    allowed, columns = torch.zeros(8, 68, dtype=torch.bool), []
    for c0, c1 in chunks:
        allowed[sel, c0:c1] = True
        for j0, j1, m in masks(c0, c1):
            allowed[sel, c0 + j0:c0 + j1] &= ~m
            columns.append((c0 + j0, c0 + j1))
    assert columns == masked
    assert torch.equal(allowed, allowed_keys(layout, rows, mode, "cpu", window))


@pytest.mark.parametrize("chunk", [7, 10_000])
@pytest.mark.parametrize("mode", ["causal", "documents"])
@pytest.mark.parametrize("window", [None, 9])
def test_cpu_mass_gradients_match_the_reference(monkeypatch, chunk, mode, window):
    """Through the one-pass form, and through 7-key chunks with the normaliser's own pass first."""
    cpu_mass_in_chunks(monkeypatch, chunk)
    layout, q, k, _ = make("three_prompts", 64, 4, 2, torch.float32, seed=5)
    rows = torch.tensor([33, 34, 35, 36, 37, 45, 47, 55, 92, 97])  # query rows of each prompt and a document row
    w = torch.randn(layout.total_tokens, 4, generator=torch.Generator().manual_seed(6)).to(DEVICE)
    grads = {}
    for backend in ("torch", "naive"):
        x = [q[rows].detach().requires_grad_(), k.detach().requires_grad_()]
        m = attention_mass(x[0], rows, x[1], layout, mode=mode, window=window, backend=backend)
        grads[backend] = torch.autograd.grad((m * w).sum(), x)
    for name, got, want in zip("qk", grads["torch"], grads["naive"]):
        close(got, want, 1e-6, 1e-4, f"d{name}")
