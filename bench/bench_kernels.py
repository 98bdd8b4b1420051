"""Kernel benchmarks: block-sparse in-context attention and attention mass, against dense causal SDPA, SDPA with
the mask (past 32k tokens on the memory-efficient backend: see masked_sdpa_setup), FlexAttention with the
equivalent BlockMask (its construction timed alone and included), and the reference where it fits in memory.

    python bench/bench_kernels.py [--write bench/RESULTS.md] [--gpu-only | --sweep | --host]

GPU (when CUDA is present): Mistral-7B-like shapes (32 query heads, 8 KV heads, D 128, bf16): a 64-token
instruction + 100 documents x 160 tokens + a 50-token query (16,114 tokens), and 500 x 200 (100,114 tokens).
Times by triton.testing.do_bench (median, 20th and 80th percentiles). The attention-mass rows compare the
kernel to materialising the query rows' attention weights over all keys (time and peak memory); the row
positions are given on the host, as the rerankers give them (rows on the GPU cost one synchronisation). Each
shape also checks the kernel's output on 256 rows (the query rows, documents' first and last rows, random rows)
against float32 attention under the layout's mask.
CPU (always): the PyTorch CPU path for 64 + 20 x 160 + 50 = 3,314 tokens, 8 query and 2 KV heads, D 64, fp32,
against SDPA with a boolean mask, dense causal SDPA and compiled FlexAttention, and the attention mass of the 50
query rows against materialising their weights; then the same for 20 documents of 30-290 tokens (seeded).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from irforge.kernels import SegmentLayout, attention_mass, block_sparse_attention


def flex_setup(layout: SegmentLayout, device, compiled: bool = False):
    """FlexAttention's BlockMask construction for ``layout``, as a function to time. ``compiled``: through
    ``torch.compile(create_block_mask)``, which never materialises the T x T mask (at 100k tokens the eager path
    asked for 74.8 GiB at once, more than an H100 had free). (To 20a7a82 the bench asked create_block_mask for
    it with ``_compile=True``, which torch 2.11 deprecates and which wraps the function in torch.compile anew
    on every call.)"""
    from torch.nn.attention.flex_attention import create_block_mask

    make = torch.compile(create_block_mask) if compiled else create_block_mask

    r = torch.as_tensor(layout.row_ranges(), device=device)
    ps, pe, cs = r[:, 0].contiguous(), r[:, 1].contiguous(), r[:, 2].contiguous()

    def mask_mod(b, h, q_idx, kv_idx):
        return ((kv_idx >= ps[q_idx]) & (kv_idx < pe[q_idx])) | ((kv_idx >= cs[q_idx]) & (kv_idx <= q_idx))

    T = layout.total_tokens
    return lambda: make(mask_mod, 1, 1, T, T, device=device)


def masked_sdpa_setup(q, k, v, layout: SegmentLayout, efficient: bool = True):
    """SDPA with the layout's explicit [T, T] mask, for prompts past 32k tokens, as a function to time. The
    math backend would hold [Hq, T, T] scores (640 GB at 100k tokens, Mistral-7B heads), so the mask goes to the
    memory-efficient backend as an additive mask in q's dtype, with the key/value heads repeated for it.
    ``efficient=False`` leaves the backend to SDPA (the CPU has no memory-efficient one: the check of this
    function off a GPU). Memory at its peak: about 4 T x T bytes (layout.dense_mask's boolean temporaries; then
    the additive mask with the copy SDPA pads to 16 keys), and the repeated key/value heads."""
    T, Hq = q.shape[:2]
    allowed = layout.dense_mask(device=q.device)
    bias = torch.zeros(T, T, dtype=q.dtype, device=q.device).masked_fill_(allowed.logical_not_(), float("-inf"))
    del allowed
    qb, kb, vb = ((x if x.shape[1] == Hq else x.repeat_interleave(Hq // x.shape[1], dim=1)).transpose(0, 1)[None]
                  for x in (q, k, v))

    def run():
        with (torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.EFFICIENT_ATTENTION) if efficient
              else contextlib.nullcontext()):
            return torch.nn.functional.scaled_dot_product_attention(qb, kb, vb, attn_mask=bias)

    return run


def failed(e: Exception) -> str:
    """A result cell for a run that raised (reported, not hidden): the error's type and the start of its
    message, on one line and without the table's column bars."""
    return f"failed ({type(e).__name__}: {' '.join(str(e).split())[:100].replace('|', '/')})"


REPS = 15  # CPU timings: median of 15 runs (this shared machine is noisy; 5 runs moved by 20%)


def wall(f, reps):
    f()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def cpu_section() -> list[str]:
    """The issue's CPU case (20 documents of 160 tokens), then documents of 30-290 tokens (drawn, seeded), as
    reranking prompts have: the CPU path batches those differently (equal lengths back to back are views)."""
    lengths = torch.randint(30, 291, (20,), generator=torch.Generator().manual_seed(0)).tolist()
    return (cpu_case([(64, [160] * 20, 50)], "64 + 20 x 160 + 50") + [""]
            + cpu_case([(64, lengths, 50)], "64 + 20 documents of 30-290 tokens + 50"))


def cpu_case(spec, label: str) -> list[str]:
    torch.manual_seed(0)
    layout = SegmentLayout.from_lengths(spec)
    T, Hq, Hkv, D = layout.total_tokens, 8, 2, 64
    q, k, v = torch.randn(T, Hq, D), torch.randn(T, Hkv, D), torch.randn(T, Hkv, D)
    qb, kb, vb = (x.transpose(0, 1)[None] for x in (q, k, v))  # [1, H, T, D]
    mask = layout.dense_mask()
    rows = []
    rows.append(("irforge CPU path (torch)", wall(lambda: block_sparse_attention(q, k, v, layout, backend="torch"), REPS)))
    rows.append(("SDPA, dense causal", wall(lambda: torch.nn.functional.scaled_dot_product_attention(
        qb, kb, vb, is_causal=True, enable_gqa=True), REPS)))
    rows.append(("SDPA, boolean mask", wall(lambda: torch.nn.functional.scaled_dot_product_attention(
        qb, kb, vb, attn_mask=mask, enable_gqa=True), REPS)))
    try:
        from torch.nn.attention.flex_attention import flex_attention

        make_mask = flex_setup(layout, "cpu")
        bm = make_mask()  # untimed: the first call in a process carries one-time set-up (about 1 s here)
        mask_ms = wall(make_mask, 3)
        flex = torch.compile(flex_attention)
        flex(qb, kb, vb, block_mask=bm, enable_gqa=True)  # compile
        rows.append((f"FlexAttention, compiled (+ {mask_ms:.1f} ms mask construction)",
                     wall(lambda: flex(qb, kb, vb, block_mask=bm, enable_gqa=True), REPS)))
    except Exception as e:  # noqa: BLE001 - report, do not hide
        rows.append((f"FlexAttention, compiled: {failed(e)}", float("nan")))
    refs = []  # slow (3 runs); the last run's output is the error check's reference below
    rows.append(("float64 reference (naive.py: explicit T x T mask)",
                 wall(lambda: refs.append(block_sparse_attention(q, k, v, layout, backend="naive")[0]), 3)))
    ref = refs[-1]
    got, got_lse = block_sparse_attention(q, k, v, layout, backend="torch")
    err = (got.double() - ref.double()).abs().max().item()
    base, frac = rows[0][1], layout.allowed_pairs() / (T * (T + 1) / 2)
    out = [f"CPU: {T:,} tokens ({label}), {Hq} query / {Hkv} KV heads, D {D}, fp32, "
           f"{torch.get_num_threads()} threads; allowed pairs {frac:.1%} of dense causal (dense causal time x that "
           f"fraction: {rows[1][1] * frac:.1f} ms); max abs error of the CPU path vs the float64 reference {err:.1e}.",
           "", "| method | median ms | ratio to irforge |", "|---|---|---|"]
    for name, ms in rows:
        out.append(f"| {name} | {ms:.1f} | {ms / base:.2f} |")
    # attention mass of the 50 query rows, against materialising their attention weights (as on the GPU)
    pos = torch.arange(T - 50, T)
    q_rows, lse = q[pos], got_lse[pos]

    def materialise():
        s = torch.einsum("rhd,thd->hrt", q_rows, k.repeat_interleave(Hq // Hkv, dim=1)) / math.sqrt(D)
        return s.masked_fill(torch.arange(T)[None, None, :] > pos[None, :, None], float("-inf")).softmax(-1).mean(1)

    t_given = wall(lambda: attention_mass(q_rows, pos, k, layout, lse=lse, backend="torch"), REPS)
    t_own = wall(lambda: attention_mass(q_rows, pos, k, layout, backend="torch"), REPS)
    t_mat = wall(materialise, REPS)
    out += ["", "| attention mass, 50 query rows | median ms | ratio to materialising |", "|---|---|---|",
            f"| irforge CPU path, log-sum-exp given | {t_given:.2f} | {t_mat / t_given:.1f}x faster |",
            f"| irforge CPU path, log-sum-exp computed (ICR's call) | {t_own:.2f} | {t_mat / t_own:.1f}x faster |",
            f"| materialised weights (einsum + softmax) | {t_mat:.2f} | 1 |"]
    return out + bf16_rows(layout, q, k, v)


def bf16_rows(layout: SegmentLayout, q, k, v) -> list[str]:
    """The CPU path on bfloat16 copies of the inputs (which the flash op takes as they are where the CPU
    multiplies bfloat16 natively), against dense causal SDPA on the same copies."""
    from irforge.kernels.block_sparse_attention.cpu import native_bf16

    qh, kh, vh = (x.bfloat16() for x in (q, k, v))
    qb, kb, vb = (x.transpose(0, 1)[None] for x in (qh, kh, vh))
    ours = wall(lambda: block_sparse_attention(qh, kh, vh, layout, backend="torch"), REPS)
    dense = wall(lambda: torch.nn.functional.scaled_dot_product_attention(qb, kb, vb, is_causal=True,
                                                                          enable_gqa=True), REPS)
    got = block_sparse_attention(qh, kh, vh, layout, backend="torch")[0].double()
    err = (got - block_sparse_attention(qh, kh, vh, layout, backend="naive")[0].double()).abs().max().item()
    return ["", f"bfloat16 inputs (this CPU multiplies bfloat16 natively: {'yes' if native_bf16() else 'no'}); "
            f"max abs error of the CPU path vs the float64 reference on them {err:.1e}.", "",
            "| method, bfloat16 | median ms | ratio to irforge |", "|---|---|---|",
            f"| irforge CPU path (torch) | {ours:.1f} | 1.00 |",
            f"| SDPA, dense causal | {dense:.1f} | {dense / ours:.2f} |"]


def sampled_rows_error(q, k, v, layout: SegmentLayout, out, lse) -> tuple[float, float]:
    """Max abs error of out and lse on 256 rows against float32 attention under the layout's mask: the query
    rows, documents' first and last rows (the tile edges the split and merge touch) and random rows."""
    T, Hq, D = q.shape
    g = torch.Generator().manual_seed(1)
    rng = layout.row_ranges()
    edges = torch.tensor(layout.cu_seqlens[1:-1], dtype=torch.long)
    pick = torch.cat([torch.arange(T - 50, T), edges[:80], edges[:80] - 1, torch.randint(0, T, (46,), generator=g)])
    rows = torch.unique(pick.clamp(0, T - 1)).to(q.device)
    r = torch.as_tensor(rng, device=q.device)[rows]
    t = torch.arange(T, device=q.device)[None]
    allowed = ((t >= r[:, :1]) & (t < r[:, 1:2])) | ((t >= r[:, 2:3]) & (t <= rows[:, None]))
    kk = k.float().repeat_interleave(Hq // k.shape[1], dim=1)
    s = torch.einsum("rhd,thd->hrt", q[rows].float(), kk) / math.sqrt(D)
    s = s.masked_fill(~allowed[None], float("-inf"))
    ref_lse = torch.logsumexp(s, -1)  # [H, rows]
    ref = torch.einsum("hrt,thd->rhd", (s - ref_lse[..., None]).exp(), v.float().repeat_interleave(Hq // k.shape[1], 1))
    return ((out[rows].float() - ref).abs().max().item(),
            (lse[rows].float() - ref_lse.T).abs().max().item())


def peak_extra(f) -> int:
    """Peak CUDA memory allocated by one call of f above what was allocated before it, in bytes (measured apart
    from do_bench, whose 256 MB L2-flush buffer would count)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    f()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def median_cell(t) -> str:
    """A table cell: the median of a timing (ms, 3 decimals), or the failure ``untried`` reported."""
    return t if isinstance(t, str) else f"{t[0]:.3f}"


def graph_ratio(slow, fast) -> str:
    """A table cell: how many times faster ``fast`` ran than ``slow`` (timings as ``untried`` returns them), or
    "not timed" where either failed."""
    if isinstance(slow, str) or isinstance(fast, str):
        return "not timed"
    return f"{slow[0] / fast[0]:.1f}x faster"


def graph_bench(f) -> list[float]:
    """Median, p20 and p80 ms of f replayed from a CUDA graph (triton.testing.do_bench_cudagraph): the GPU's
    time without the host's launches."""
    import triton

    f()  # the launch tables and compiled kernels exist before the capture
    return triton.testing.do_bench_cudagraph(f, quantiles=[0.5, 0.2, 0.8])


def warm_up(f, seconds: float = 0.5) -> None:
    """Calls f back to back for about ``seconds``, before the table's first row, the default's eager time, is
    timed: the first timing of a shape. In the H100 run of 06aa860 that row took 0.221 ms at 16k tokens (p80
    0.266) against 0.214 from its CUDA graph, while every other eager row's p80 lay within 0.005 ms of its
    median. The default is also timed again after the other rows (the row below it), which tells a first-timing
    effect from the host's time per call (a slow host bounds every eager timing of the call alike)."""
    f()
    torch.cuda.synchronize()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(10):
            f()
        torch.cuda.synchronize()


def gpu_section() -> list[str]:
    import triton

    from irforge.kernels._checks import product_rows
    from irforge.kernels.attention_mass import kernel as mass_kernel
    from irforge.kernels.block_sparse_attention import kernel as bsa_kernel

    out = []
    dev = "cuda"
    for n_docs, doc_len in ((100, 160), (500, 200)):
        layout = SegmentLayout.from_lengths([(64, [doc_len] * n_docs, 50)])
        T, Hq, Hkv, D = layout.total_tokens, 32, 8, 128
        q, k, v = (torch.randn(T, h, D, device=dev, dtype=torch.bfloat16) for h in (Hq, Hkv, Hkv))
        qb, kb, vb = (x.transpose(0, 1)[None] for x in (q, k, v))
        frac = layout.allowed_pairs() / (T * (T + 1) / 2)
        bench = lambda f: triton.testing.do_bench(f, quantiles=[0.5, 0.2, 0.8])  # noqa: E731

        def untried(f, timer=bench):  # a row that may fail on this GPU: its failure is reported, the section goes on
            try:
                return timer(f)
            except Exception as e:  # noqa: BLE001
                return failed(e)

        # the split thresholds before: to 82d3095 half an SM's average load (one program counted per SM), from
        # bd5779e half a program slot's (3 slots per SM in the Hopper default); kernel.split_threshold now
        # takes one slot's
        cap = torch.cuda.get_device_capability()
        cfg = bsa_kernel.launch_config(torch.bfloat16, 128, capability=cap,
                                       one_loop=bsa_kernel.default_one_loop(torch.bfloat16, 128, cap))
        rows_per_tile, product_m = product_rows(cfg["block_m"], Hq // Hkv)
        blocks = bsa_kernel.total_key_blocks(layout.tiles(rows_per_tile), cfg["block_n"])
        # the (product row, key) pairs the default's tiles visit per key/value head, against the allowed ones
        visited, allowed = blocks * product_m * cfg["block_n"], layout.allowed_pairs() * (Hq // Hkv)
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        old_split = bsa_kernel.split_threshold(blocks, Hkv, 2 * sms, 1)
        half_slot = bsa_kernel.split_threshold(blocks, Hkv, 2 * sms, bsa_kernel.programs_per_sm(cfg))
        default = lambda: block_sparse_attention(q, k, v, layout, backend="triton")  # noqa: E731
        warm_up(default)
        res = [("irforge Triton", bench(default)),
               (f"irforge Triton, long tiles split at half an SM's load (max_blocks={old_split}: the default to "
                f"82d3095)", bench(lambda: bsa_kernel.block_sparse_attention(q, k, v, layout, max_blocks=old_split))),
               (f"irforge Triton, long tiles split at half a program slot's load (max_blocks={half_slot}: the "
                f"default from bd5779e)", bench(lambda: bsa_kernel.block_sparse_attention(q, k, v, layout,
                                                                                          max_blocks=half_slot))),
               ("irforge Triton, long tiles split at 64 key blocks (max_blocks=64)",
                bench(lambda: bsa_kernel.block_sparse_attention(q, k, v, layout, max_blocks=64))),
               ("irforge Triton, accumulator rescaled lazily (lazy_rescale=True: the one-loop default at 5d5ceb3)",
                bench(lambda: bsa_kernel.block_sparse_attention(q, k, v, layout, lazy_rescale=True))),
               ("irforge Triton, registers not capped (max_registers=255: as many as the compiler takes)",
                bench(lambda: bsa_kernel.block_sparse_attention(q, k, v, layout, max_registers=255))),
               ("irforge Triton, pointer loads (tma=False: the default before faed31a's H100 run)",
                bench(lambda: bsa_kernel.block_sparse_attention(q, k, v, layout, tma=False))),
               ("irforge Triton, tensor-memory loads, at most 128 registers", untried(
                   lambda: bsa_kernel.block_sparse_attention(q, k, v, layout, tma=True, max_registers=128))),
               ("irforge Triton, four loops, tensor-memory loads", untried(
                   lambda: bsa_kernel.block_sparse_attention(q, k, v, layout, one_loop=False, tma=True))),
               ("irforge Triton, four loops (64-key blocks, 2 stages on Hopper: its default before the H100 sweep)",
                bench(lambda: bsa_kernel.block_sparse_attention(q, k, v, layout, one_loop=False))),
               ("irforge Triton, long tiles not split", bench(lambda: bsa_kernel.block_sparse_attention(
                   q, k, v, layout, max_blocks=0))),
               ("irforge Triton, one loop, 64-key blocks", bench(lambda: bsa_kernel.block_sparse_attention(
                   q, k, v, layout, one_loop=True, block_n=64))),
               ("irforge Triton, one loop, 4 tiles of a segment per program", bench(
                   lambda: bsa_kernel.block_sparse_attention(q, k, v, layout, tiles_per_program=4)))]
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            causal = bench(lambda: torch.nn.functional.scaled_dot_product_attention(qb, kb, vb, is_causal=True, enable_gqa=True))
        res.append(("SDPA dense causal (flash)", causal))
        if T <= 32768:
            mask = layout.dense_mask(device=dev)
            res.append(("SDPA with the mask", bench(lambda: torch.nn.functional.scaled_dot_product_attention(
                qb, kb, vb, attn_mask=mask, enable_gqa=True))))
            del mask
        else:  # (to ceccb25 no row: the default backend's scores would not fit)
            need, free = 4 * T * T + 2 * Hq * T * D * 2, torch.cuda.mem_get_info(dev)[0]
            name = "SDPA with the mask (memory-efficient backend, additive bf16 mask, key/value heads repeated)"
            if need < 0.8 * free:  # (the mask is built once, then timed; either may fail, and says so)
                res.append((name, untried(lambda: masked_sdpa_setup(q, k, v, layout), lambda setup: bench(setup()))))
                torch.cuda.empty_cache()
            else:
                res.append((name, f"not run: it needs {need / 2**30:.0f} GiB, {free / 2**30:.0f} GiB free"))
        # the float64 reference (naive.py): [Hq, T, T] scores and probabilities and a [T, T] mask, in float64
        ref_bytes, free = (2 * Hq + 1) * T * T * 8, torch.cuda.mem_get_info(dev)[0]
        res.append(("float64 reference (naive.py: explicit T x T mask)",
                    untried(lambda: block_sparse_attention(q, k, v, layout, backend="naive")) if ref_bytes < 0.8 * free
                    else f"not run: it needs {ref_bytes / 2**30:.0f} GiB, {free / 2**30:.0f} GiB free"))
        from torch.nn.attention.flex_attention import flex_attention

        make_mask, mask_how = flex_setup(layout, dev), ""
        try:
            mask_ms = bench(make_mask)
        except torch.OutOfMemoryError:  # the eager construction materialises the T x T mask
            torch.cuda.empty_cache()
            make_mask = flex_setup(layout, dev, compiled=True)
            mask_how = " (compiled create_block_mask: the eager one ran out of memory)"
            mask_ms = bench(make_mask)
        bm = make_mask()
        flex = torch.compile(flex_attention)
        fl = bench(lambda: flex(qb, kb, vb, block_mask=bm, enable_gqa=True))
        res.append(("FlexAttention (BlockMask)", fl))
        res.append(("FlexAttention + mask construction" + mask_how, [a + b for a, b in zip(fl, mask_ms)]))
        # CUDA graphs replay the launches without the host: a figure near the first row says the GPU, not the
        # wrapper's host time, bounds the call. (faed31a's run timed this row through bench(), which timed the
        # whole of do_bench_cudagraph, capture and ten 20 ms replays, once: 203 and 215 ms.)
        res.insert(1, ("irforge Triton, replayed from a CUDA graph", untried(
            lambda: block_sparse_attention(q, k, v, layout, backend="triton"), graph_bench)))
        # split tiles merged by their last chunk in the same launch (opt-in; see its docstring): one launch fewer,
        # eager (host time included) and from a graph (the second kernel's start and run on the GPU only)
        fused = lambda: bsa_kernel.block_sparse_attention(q, k, v, layout, fused_merge=True)  # noqa: E731
        res[2:2] = [("irforge Triton, split tiles merged in the kernel (fused_merge=True)", untried(fused)),
                    ("irforge Triton, fused_merge=True, replayed from a CUDA graph", untried(fused, graph_bench))]
        # every program longest first, the order to 5a32a01 (bench/model_l2.py: more reads from memory)
        longest = lambda: bsa_kernel.block_sparse_attention(q, k, v, layout, launch_order="longest")  # noqa: E731
        res[2:2] = [("irforge Triton, launch order longest first (launch_order='longest': the default to 5a32a01)",
                     untried(longest)),
                    ("irforge Triton, launch order longest first, replayed from a CUDA graph",
                     untried(longest, graph_bench))]
        # the first row again, after all the others (see warm_up)
        res.insert(1, ("irforge Triton, timed again after the rows below", untried(default)))
        ours = res[0][1][0]
        o, lse = block_sparse_attention(q, k, v, layout, backend="triton")
        err_o, err_l = sampled_rows_error(q, k, v, layout, o, lse)
        err1_o, err1_l = sampled_rows_error(q, k, v, layout, *bsa_kernel.block_sparse_attention(q, k, v, layout,
                                                                                                one_loop=False))
        err4_o, err4_l = sampled_rows_error(q, k, v, layout, *bsa_kernel.block_sparse_attention(
            q, k, v, layout, tiles_per_program=4))
        errp_o, errp_l = sampled_rows_error(q, k, v, layout, *bsa_kernel.block_sparse_attention(q, k, v, layout,
                                                                                                tma=False))
        errl_o, errl_l = sampled_rows_error(q, k, v, layout, *bsa_kernel.block_sparse_attention(
            q, k, v, layout, lazy_rescale=True))
        out += [f"GPU {torch.cuda.get_device_name()}: {T:,} tokens (64 + {n_docs} x {doc_len} + 50), 32/8 heads, D 128, "
                f"bf16; allowed pairs {frac:.2%} of dense causal. Target: irforge <= 1.5 x causal x fraction = "
                f"{1.5 * causal[0] * frac:.3f} ms, and below FlexAttention + mask construction. Max abs error on 256 "
                f"sampled rows against float32 attention: output {err_o:.1e}, log-sum-exp {err_l:.1e} (four-loop "
                f"form: {err1_o:.1e}, {err1_l:.1e}; 4 tiles per program: {err4_o:.1e}, {err4_l:.1e}; pointer loads: "
                f"{errp_o:.1e}, {errp_l:.1e}; lazy rescale: {errl_o:.1e}, {errl_l:.1e}). Work: the default's tiles "
                f"visit {visited / allowed:.3f}x the allowed (query, key) pairs, and run the visited products at "
                f"{visited * Hkv * 4 * D / ours / 1e9:.0f} TFLOPS against dense causal SDPA's "
                f"{2 * T * T * D * Hq / causal[0] / 1e9:.0f}.", "",
                "| method | median ms | p20 | p80 | ratio to irforge |", "|---|---|---|---|---|"]
        out += [f"| {n} | {t} | | | |" if isinstance(t, str) else
                f"| {n} | {t[0]:.3f} | {t[1]:.3f} | {t[2]:.3f} | {t[0] / ours:.2f} |" for n, t in res]
        # attention mass from the 50 query rows, against materialising their attention weights
        rows = torch.arange(T - 50, T, device=dev)
        rows_host = rows.cpu()  # positions as the rerankers pass them: on the host, so no synchronisation
        mass = lambda: attention_mass(q[rows], rows_host, k, layout, lse=lse[rows], backend="triton")  # noqa: E731
        t_mass, mem_mass = bench(mass), peak_extra(mass)
        t_mass2 = bench(mass)  # at once: tells a first-timing effect from one of the rows timed in between
        mass_loop = lambda: mass_kernel.attention_mass(q[rows], rows_host, k, layout, lse=lse[rows],  # noqa: E731
                                                       head_sum="loop")
        t_loop, mem_loop = bench(mass_loop), peak_extra(mass_loop)
        # the rows that see a whole key block unmasked (opt-in: no faster on 2026-11-27; the normaliser gained 35%),
        # from a CUDA graph: to compare with the default's graph row, which the host does not bound
        t_whole = untried(lambda: mass_kernel.attention_mass(q[rows], rows_host, k, layout, lse=lse[rows],
                                                             whole_blocks=True), graph_bench)

        def materialise():
            kk = k.repeat_interleave(Hq // Hkv, dim=1)
            s = torch.einsum("rhd,thd->hrt", q[rows].float(), kk.float()) / math.sqrt(D)
            s = s.masked_fill(torch.arange(T, device=dev)[None, None, :] > rows[None, :, None], float("-inf"))
            return s.softmax(-1).mean(1)

        t_mat, mem_mat = bench(materialise), peak_extra(materialise)
        # ... and from a CUDA graph: against the mass's graph row, the GPU's time alone. At 16k tokens the eager
        # mass call is bound by the host (0.107 ms per call against the kernel's 0.065 on an H200, 2026-11-27),
        # the materialised one is not, so the eager ratio follows the host's speed
        t_mat_graph = untried(materialise, graph_bench)
        # the rows' log-sum-exp not given, as in ICR's capture (SDPA gives none): computed by a first kernel
        own_lse = lambda: attention_mass(q[rows], rows_host, k, layout, backend="triton")  # noqa: E731
        t_own, mem_own = bench(own_lse), peak_extra(own_lse)
        # ... from CUDA graphs (the eager call is bound by the host's three launches), and with the normaliser's
        # splits merged in its own launch (fused_merge, opt-in: see its docstring; two launches)
        t_own_graph = untried(own_lse, graph_bench)
        t_own_fused = untried(lambda: mass_kernel.attention_mass(q[rows], rows_host, k, layout, fused_merge=True),
                              graph_bench)
        t_again = bench(mass)  # the first call timed again, last: the 16k figure came out high when timed first
        # without the host (the rows' tables, kept on the layout since the first call, are not copied again)
        t_graph = untried(mass, graph_bench)
        out += ["", "| attention mass, 50 query rows | median ms | peak extra memory MB |", "|---|---|---|",
                f"| irforge Triton | {t_mass[0]:.3f} | {mem_mass / 2**20:.1f} |",
                f"| irforge Triton, timed a second time at once | {t_mass2[0]:.3f} | |",
                f"| irforge Triton, timed again after the rows below | {t_again[0]:.3f} | |",
                f"| irforge Triton, replayed from a CUDA graph | {median_cell(t_graph)} | |",
                f"| irforge Triton, log-sum-exp not given (computed first, over split keys, as in ICR) | "
                f"{t_own[0]:.3f} | {mem_own / 2**20:.1f} |",
                f"| irforge Triton, log-sum-exp not given, replayed from a CUDA graph | {median_cell(t_own_graph)} | |",
                f"| irforge Triton, log-sum-exp not given, the normaliser's splits merged in its kernel "
                f"(fused_merge=True, not the default), replayed from a CUDA graph | {median_cell(t_own_fused)} | |",
                f"| irforge Triton, per-head sums by masked reductions (head_sum='loop') | {t_loop[0]:.3f} | "
                f"{mem_loop / 2**20:.1f} |",
                f"| irforge Triton, whole key blocks unmasked (whole_blocks=True, not the default), replayed from a "
                f"CUDA graph | {median_cell(t_whole)} | |",
                f"| materialised weights (einsum + softmax) | {t_mat[0]:.3f} | {mem_mat / 2**20:.1f} |",
                f"| materialised weights, replayed from a CUDA graph | {median_cell(t_mat_graph)} | |",
                f"| ratio | {t_mat[0] / t_mass[0]:.1f}x faster | {mem_mat / max(mem_mass, 1):.0f}x less memory |",
                f"| ratio from CUDA graphs (the GPU's time without the host's) | "
                f"{graph_ratio(t_mat_graph, t_graph)} | |", ""]
    return out


# --sweep-one-loop: the block-sparse kernel's one-loop form, one tile per program, around its Hopper default (64
# rows, 32-key blocks, 4 warps, 3 stages, the accumulator rescaled after every block, at most 168 registers, key
# and value blocks through tensor descriptors: the seventh row). (..., lazy rescale, register cap (255: uncapped),
# tensor-memory loads.) The first H100 run of 5d5ceb3 timed the lazy rescale slower at both sizes; its second run
# (faed31a, these rows) timed tensor-memory loads faster at 16k, as the first had, which made them the default.
# Around them: pointer loads, at 128 registers and uncapped, 64-key blocks, 2 stages and 128 registers (4 programs
# per SM, 48 KB of shared memory), and the lazy rescale. The last three: 128 product rows (32 tokens x 4 heads) on
# 8 warps with tensor-memory loads, each key and value block read once for twice the rows (ptxas, sm_90, triton
# 3.9, at most 128 registers: 118 registers and 80 KB of shared memory at 32 keys and 3 stages, 128 and 64 KB at 2,
# 128 and 96 KB at 64 keys and 2 stages; two programs per SM, 256 product rows in flight against the default's
# 192; no spills). Not yet timed.
ONE_LOOP_CONFIGS = [(64, 32, 4, 3, True, 1, "block", False, 168, False),
                    (64, 32, 4, 3, True, 1, "block", True, 168, False),
                    (64, 32, 4, 3, True, 1, "block", False, 128, False),
                    (64, 32, 4, 3, True, 1, "block", False, 255, False),
                    (64, 64, 4, 3, True, 1, "block", False, 168, False),
                    (64, 16, 4, 4, True, 1, "block", False, 168, False),
                    (64, 32, 4, 3, True, 1, "block", False, 168, True),
                    (64, 32, 4, 3, True, 1, "block", False, 128, True),
                    (64, 32, 4, 2, True, 1, "block", False, 128, True),
                    (64, 32, 4, 3, True, 1, "block", False, 255, True),
                    (64, 64, 4, 3, True, 1, "block", False, 168, True),
                    (64, 32, 4, 3, True, 1, "block", True, 168, True),
                    (128, 32, 8, 3, True, 1, "block", False, 128, True),
                    (128, 32, 8, 2, True, 1, "block", False, 128, True),
                    (128, 64, 8, 2, True, 1, "block", False, 128, True)]


def sweep_section(configs=None) -> list[str]:
    """Launch configurations of the two kernels on the two GPU shapes: the block-sparse kernel's product rows,
    key block, warps, stages and loop form (four loops or one); the attention-mass kernel's product rows, key
    block, warps and per-head sum (50 query rows, causal mode). ``configs``: only these block-sparse
    configurations, and no attention-mass ones."""
    import triton

    from irforge.kernels.attention_mass import kernel as mass_kernel
    from irforge.kernels.block_sparse_attention import kernel as bsa_kernel

    # (product rows, key block, warps, stages, one loop, tiles per program); the first was the Hopper default
    # before the H100 sweep, the eighth (one loop, 32-key blocks, 3 stages) is the Hopper default since. The
    # one-loop form needs fewer registers (ptxas, sm_90: 218 against 255 at 64 x 64, 145 against 187 at 64 x 32,
    # no spills at 3 stages), so it gets the 3-stage and 32-key rows too. Runs of tiles (one loop, several tiles
    # of a segment per program; sm_90, triton 3.9): 104 KB of shared memory at 64 x 64 and 2 stages (two programs
    # per SM), 152 KB at 3 stages (one), 72 KB at 64 x 32.
    # The last three load a run's query rows once per tile (query_load="tile") instead of with every key block:
    # less traffic from L2, the rows held in registers (36 bytes of spills at 64 x 64 on sm_90, none at 64 x 32).
    all_configs = [(64, 64, 4, 2, False, 1), (64, 32, 4, 3, False, 1), (64, 16, 4, 2, False, 1),
                   (128, 64, 8, 2, False, 1), (64, 64, 4, 2, True, 1), (64, 64, 4, 3, True, 1), (64, 32, 4, 2, True, 1),
                   (64, 32, 4, 3, True, 1), (128, 64, 8, 2, True, 1), (64, 64, 4, 2, True, 2), (64, 64, 4, 2, True, 4),
                   (64, 64, 4, 2, True, 16), (64, 64, 4, 3, True, 4), (64, 32, 4, 2, True, 4), (64, 32, 4, 3, True, 4)]
    all_configs = [c + ("block",) for c in all_configs] + [(64, 64, 4, 2, True, 4, "tile"),
                                                           (64, 32, 4, 2, True, 4, "tile"),
                                                           (64, 32, 4, 3, True, 16, "tile")]
    mass = configs is None
    configs = all_configs if configs is None else configs
    # (product rows, key block, warps, per-head sum); the second is the default (16-bit inputs)
    mass_configs = [(64, 64, 4, "loop"), (64, 64, 4, "dot"), (64, 128, 4, "loop"), (64, 128, 8, "dot"),
                    (128, 64, 8, "loop"), (128, 64, 8, "dot"), (64, 32, 4, "loop"), (64, 64, 8, "loop")]
    mass_configs = mass_configs if mass else []
    name = torch.cuda.get_device_name()
    out = [f"GPU {name}: block-sparse kernel launch configurations, 32 query / 8 KV heads, D 128, bf16. Product "
           f"rows = token rows x 4 query heads per KV head. Median ms by triton.testing.do_bench.", "",
           "| shape | product rows | key block | warps | stages | one loop | tiles per program | query rows loaded per "
           "| lazy rescale | max registers | tensor-memory loads | median ms |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    mass_out = ["", f"GPU {name}: attention-mass kernel launch configurations, 50 query rows (causal), same heads. "
                f"Median ms by triton.testing.do_bench.", "",
                "| shape | product rows | key block | warps | per-head sum | median ms |", "|---|---|---|---|---|---|"]

    def timed(f):
        try:
            return f"{triton.testing.do_bench(f):.3f}"
        except Exception as e:  # noqa: BLE001 - e.g. shared memory over the limit: report it
            return failed(e)

    for n_docs, doc_len in ((100, 160), (500, 200)):
        layout = SegmentLayout.from_lengths([(64, [doc_len] * n_docs, 50)])
        T = layout.total_tokens
        q, k, v = (torch.randn(T, h, 128, device="cuda", dtype=torch.bfloat16) for h in (32, 8, 8))
        shape = f"64 + {n_docs} x {doc_len} + 50"
        for bm, bn, w, st, one, per, ql, *rest in configs:
            lazy, regs, tma = rest if rest else (None, None, False)  # (None: the configuration's defaults)
            ms = timed(lambda: bsa_kernel.block_sparse_attention(q, k, v, layout, block_m=bm, block_n=bn,
                                                                  num_warps=w, num_stages=st, one_loop=one,
                                                                  tiles_per_program=per, query_load=ql,
                                                                  lazy_rescale=lazy, max_registers=regs, tma=tma))
            lazy_col = "" if lazy is None else "yes" if lazy else "no"
            out.append(f"| {shape} | {bm} | {bn} | {w} | {st} | {'yes' if one else 'no'} | {per} | "
                       f"{ql if per > 1 else ''} | {lazy_col} | {regs or ''} | {'yes' if tma else 'no'} | {ms} |")
            print(out[-1], flush=True)
        _, lse = bsa_kernel.block_sparse_attention(q, k, v, layout)
        rows = torch.arange(T - 50, T)
        qr, lr = q[rows.cuda()], lse[rows.cuda()]
        for bm, bn, w, how in mass_configs:
            ms = timed(lambda: mass_kernel.attention_mass(qr, rows, k, layout, lse=lr, block_m=bm, block_n=bn,
                                                          num_warps=w, head_sum=how))
            mass_out.append(f"| {shape} | {bm} | {bn} | {w} | {how} | {ms} |")
            print(mass_out[-1], flush=True)
    return out + (mass_out if mass else [])


def host_section() -> list[str]:
    """The wrappers' host time per call with the Triton launches replaced by no-ops: what a model pays on the
    host in every layer before the GPU sees a kernel (it runs without a GPU: CPU tensors, backend "triton")."""
    from irforge.kernels.attention_mass import kernel as mass_kernel
    from irforge.kernels.block_sparse_attention import kernel as bsa_kernel

    class NoLaunch:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    names = ("_mass_kernel", "_lse_kernel", "_lse_merge", "_bsa_fwd", "_merge")
    mods = (mass_kernel, mass_kernel, mass_kernel, bsa_kernel, bsa_kernel)
    saved = [getattr(m, n) for m, n in zip(mods, names)]
    for m, n in zip(mods, names):
        setattr(m, n, NoLaunch())
    try:
        layout = SegmentLayout.from_lengths([(64, [160] * 100, 50)])
        T = layout.total_tokens
        q, k, v = (torch.randn(T, h, 128, dtype=torch.bfloat16) for h in (32, 8, 8))
        rows = torch.arange(T - 50, T)
        q_rows, lse = q[rows], torch.zeros(50, 32)
        calls = (("attention mass, log-sum-exp given (BlockRank's and bench_kernels' call)",
                  lambda: attention_mass(q_rows, rows, k, layout, lse=lse, backend="triton")),
                 ("attention mass, log-sum-exp computed (ICR's call: three launches, the normaliser's split "
                  "keys, their merge and the mass)",
                  lambda: attention_mass(q_rows, rows, k, layout, backend="triton")),
                 ("block-sparse attention", lambda: block_sparse_attention(q, k, v, layout, backend="triton")),
                 ("block-sparse attention, tensor-memory loads (two tensor descriptors made per call)",
                  lambda: bsa_kernel.block_sparse_attention(q, k, v, layout, tma=True)))
        out = ["Each wrapper's host time per call with its Triton launches replaced by no-ops, at the 16k-token "
               "shape (32/8 heads, D 128, bf16, tensors on the CPU); best of 5 x 2,000 calls after 200 untimed.",
               "", "| call | host µs per call |", "|---|---|"]
        for name, f in calls:
            for _ in range(200):
                f()
            best = min(wall(lambda: [f() for _ in range(2000)], 1) for _ in range(5)) / 2000
            out.append(f"| {name} | {best * 1e3:.1f} |")  # wall() gives ms
        return out
    finally:
        for m, n, fn in zip(mods, names, saved):
            setattr(m, n, fn)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write")
    ap.add_argument("--sweep", action="store_true", help="only the GPU launch-configuration sweep")
    ap.add_argument("--sweep-one-loop", action="store_true",
                    help="only the block-sparse kernel's one-loop configurations around its Hopper default")
    ap.add_argument("--gpu-only", action="store_true", help="only the GPU figures (no CPU section)")
    ap.add_argument("--host", action="store_true", help="only the wrappers' host time per call (no GPU needed)")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_bm25 import machine, write_section

    meta = machine()
    command = f"Command: `python bench/bench_kernels.py {' '.join(sys.argv[1:])}`."

    def emit(marker: str, title: str, where: str, body: list[str]) -> None:
        text = "\n".join([f"{marker} (bench/bench_kernels.py {title})", "",
                          f"{where} Date: {meta['date']}; irforge git {meta['git']}. {command}", ""] + body) + "\n"
        print(text)
        if args.write:
            write_section(Path(args.write), text, marker=marker)

    if args.host:
        emit("## Kernel wrappers' host time", "--host",
             f"Machine: {meta['cpu']}, {meta['cores']} cores; torch {torch.__version__}.", host_section())
        return
    if args.sweep or args.gpu_only or args.sweep_one_loop:
        if not torch.cuda.is_available():
            sys.exit("--sweep, --sweep-one-loop and --gpu-only need a CUDA device")
        import triton

        mib = torch.cuda.get_device_properties(0).total_memory / 2**20
        card = (f"Card: {torch.cuda.get_device_name()} ({mib:,.0f} MiB); torch {torch.__version__}, triton "
                f"{triton.__version__}.")
        if args.sweep_one_loop:
            emit("## Kernel one-loop configurations", "--sweep-one-loop", card, sweep_section(ONE_LOOP_CONFIGS))
        elif args.sweep:
            emit("## Kernel launch configurations", "--sweep", card, sweep_section())
        else:
            emit("## Kernels on the GPU", "--gpu-only", card, gpu_section())
        return
    lines = ["## Kernels (bench/bench_kernels.py)", "",
             f"Machine: {meta['cpu']}, {meta['cores']} cores; torch {torch.__version__}. Date: {meta['date']}; irforge git "
             f"{meta['git']}. Command: `python bench/bench_kernels.py {' '.join(sys.argv[1:])}`.", ""]
    lines += cpu_section() + [""]
    if torch.cuda.is_available():
        lines += gpu_section()
    else:
        lines += ["GPU: no CUDA device in this run; the GPU figures are in the next sections (`--gpu-only` and "
                  "`--sweep` on a GPU, through bench/gpu_session.sh)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(Path(args.write), text, marker="## Kernels")


if __name__ == "__main__":
    main()
