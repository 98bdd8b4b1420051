"""The Triton kernels compiled for NVIDIA GPUs (Ampere's sm_80 and sm_86, Ada's sm_89, Hopper's sm_90, Blackwell's
sm_100 and sm_120, down to a cubin with the ptxas that the triton wheel ships) on a machine without one. The
interpreter that runs the kernel tests on the CPU executes the kernels with NumPy, so the GPU compiler's passes
(lowering to TTGIR, LLVM and PTX, then ptxas) never run there; this runs them for the block-sparse attention and
attention-mass kernels in the configurations users launch. The compiler runs in a subprocess without
TRITON_INTERPRET, which would otherwise turn the kernels into interpreted functions when their modules are
imported."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")
pytest.importorskip("triton")

SKIP = 77
SCRIPT = textwrap.dedent(r"""
    import json, re, sys
    from triton.backends import backends
    if "nvidia" not in backends:
        sys.exit(77)
    from irforge.kernels._checks import next_pow2, padded_d
    from irforge.kernels._compile import DTYPE_NAMES, bsa_launch, compile_for, ptxas_usage
    from irforge.kernels.attention_mass.kernel import _lse_kernel, _lse_merge, _mass_kernel, lse_launch
    from irforge.kernels._shared_memory import ladder
    from irforge.kernels.block_sparse_attention.kernel import _bsa_fwd, _merge, launch_config

    def kernels(cc, dt, D, wide, docs, grp, runs, step):
        # (kernel, pointer types, constexprs, launch options) as the wrappers launch them, at rung ``step`` of
        # the shared-memory ladder (0: the default configuration); the block-sparse kernel in its one-loop form
        # in half the configurations, runs of tiles in some of them, the rescale rule of each configuration
        block_d = padded_d(D)
        prec = "ieee" if dt == "fp32" else "tf32"  # float32 at torch's default precision
        rungs = ladder(launch_config(DTYPE_NAMES[dt], block_d, capability=(cc // 10, cc % 10), one_loop=docs))
        ptrs, consts, cfg = bsa_launch(cc, dt, D, grp, docs, wide=wide, runs=runs,
                                       cfg=rungs[min(step, len(rungs) - 1)])
        bm = consts["BLOCK_M"]
        merge_consts = dict(GROUP=grp, ROWS=bm // grp, D=D, BLOCK_D=block_d, BLOCK_M=bm, WIDE=wide)
        merge_ptrs = dict(PO="*fp32", PL="*fp32", O="*" + dt, LSE="*fp32", GROUPS="*i32")
        mass_rungs = ladder(dict(block_m=16 if prec == "ieee" else 64,  # the wrapper's defaults
                                 block_n=16 if prec == "ieee" and block_d >= 128 else 64,
                                 num_warps=8 if prec == "ieee" else 4))
        mass_cfg = dict(mass_rungs[min(step, len(mass_rungs) - 1)])
        mass_m, mass_n = mass_cfg.pop("block_m"), mass_cfg.pop("block_n")
        head_dot = prec != "ieee"  # the wrapper's default per-head sum, and its padded group (GP)
        mass_consts = dict(GROUP=grp, GP=max(16 if head_dot else 1, next_pow2(grp)), ROWS=max(1, mass_m // grp),
                           DOCS_ONLY=docs, D=D, BLOCK_D=block_d, BLOCK_M=mass_m, BLOCK_N=mass_n, WIDE=wide,
                           PREC=prec, HEAD_DOT=head_dot, WHOLE=False)
        doc = "*i1" if docs else "*fp32"  # (outside "documents" mode the wrapper passes the output there, unread)
        mass_ptrs = dict(Q="*" + dt, K="*" + dt, LSE="*fp32", W="*fp32", TABLES="*i64", DOC=doc, MASS="*fp32")
        lse_consts = dict(GROUP=grp, ROWS=max(1, mass_m // grp), DOCS_ONLY=docs, D=D, BLOCK_D=block_d,
                          BLOCK_M=mass_m, BLOCK_N=mass_n, WIDE=wide, PREC=prec, FINAL=not docs,  # both forms
                          FUSED=False)
        lse_ptrs = dict(Q="*" + dt, K="*" + dt, POS="*i64", P0="*i64", DOC=doc, OUT="*fp32", PM="*fp32",
                        PL="*fp32", COUNT="*i64")
        lse_merge = (_lse_merge, dict(PM="*fp32", PL="*fp32", OUT="*fp32"),
                     dict(GROUP=grp, ROWS=max(1, mass_m // grp), BLOCK_M=mass_m, WIDE=wide), dict(num_warps=1))
        # the log-sum-exp kernel's wider default tiles (rows that fill them), as the wrapper launches them
        wide_m, wide_warps = lse_launch(dict(block_m=mass_m, num_warps=mass_cfg["num_warps"]),
                                        max(1, 2 * mass_m // grp), grp, prec, False, block_d)
        lse_wide = (_lse_kernel, lse_ptrs, dict(lse_consts, ROWS=max(1, wide_m // grp), BLOCK_M=wide_m),
                    dict(mass_cfg, num_warps=wide_warps))
        return ((_bsa_fwd, ptrs, consts, cfg), (_merge, merge_ptrs, merge_consts, dict(num_warps=8)),
                (_mass_kernel, mass_ptrs, mass_consts, mass_cfg), lse_wide,
                (_lse_kernel, lse_ptrs, lse_consts, mass_cfg), lse_merge,
                (_mass_kernel, mass_ptrs, dict(mass_consts, WHOLE=True), mass_cfg))  # whole_blocks

    def build(cc, fn, p, c, opts):
        try:
            k = compile_for(fn, cc, p, c, opts)
        except FileNotFoundError:  # no ptxas
            sys.exit(77)
        regs, spills = ptxas_usage(k, cc)
        ptx = k.asm["ptx"]
        tensor_cores = "tcgen05.mma" if 100 <= cc < 120 else "wgmma" if cc == 90 else "mma.sync"
        return dict(cp_async="cp.async" in ptx, mma=tensor_cores in ptx,
                    copies=k.asm["ttgir"].count("async_copy_global_to_local"),
                    tma_copies=k.asm["ttgir"].count("async_tma_copy_global_to_local"),
                    size=len(k.asm["cubin"]), shared=k.metadata.shared, regs=regs, spills=spills,
                    atoms=sorted(set(re.findall(r"atom\.[\w.]+", ptx))), cg_loads=ptx.count("ld.global.cg"))

    done = []
    mode, configs = sys.argv[1], json.loads(sys.argv[2])
    if mode == "tma":  # the block-sparse kernel with tensor-memory loads, at given stages and register caps
        for cc, dt, D, docs, grp, runs, stages, regs, wide in configs:
            p, c, opts = bsa_launch(cc, dt, D, grp, docs, wide=wide, runs=runs, max_registers=regs, tma=True)
            opts.update({} if stages is None else dict(num_stages=stages))
            done.append(dict(cc=cc, dt=dt, D=D, one_loop=docs, runs=runs, stages=opts.get("num_stages"),
                             maxnreg=opts.get("maxnreg"), **build(cc, _bsa_fwd, p, c, opts)))
        configs = []
    if mode == "fused":  # the block-sparse kernel merging split tiles itself (fused_merge), default configuration,
        # and the normaliser's kernel merging its key splits itself, in its default (wider) tiles
        for cc, dt, D, docs, grp, tma in configs:
            p, c, opts = bsa_launch(cc, dt, D, grp, docs, tma=tma, fused=True)
            done.append(dict(kernel="_bsa_fwd", cc=cc, dt=dt, D=D, one_loop=docs, tma=tma,
                             maxnreg=opts.get("maxnreg"), **build(cc, _bsa_fwd, p, c, opts)))
            fn, p, c, opts = kernels(cc, dt, D, False, docs, grp, False, 0)[3]  # (the wider tiles' form)
            done.append(dict(kernel="_lse_kernel", cc=cc, dt=dt, D=D, **build(
                cc, fn, dict(p, COUNT="*i32"), dict(c, FINAL=False, FUSED=True), opts)))
        configs = []
    for cc, dt, D, wide, docs, grp, runs, *limit in configs:
        if mode == "default":  # every kernel in its default configuration
            for fn, p, c, opts in kernels(cc, dt, D, wide, docs, grp, runs, 0):
                done.append(dict(kernel=fn.__name__, whole=c.get("WHOLE", False), cc=cc, dt=dt, D=D, runs=runs,
                                 **build(cc, fn, p, c, opts)))
        else:  # "fit": per kernel, the ladder's first rung within ``limit`` bytes of shared memory
            for name in ("_bsa_fwd", "_mass_kernel", "_lse_kernel"):
                for step in range(5):
                    fn, p, c, opts = next(x for x in kernels(cc, dt, D, wide, docs, grp, runs, step)
                                          if x[0].__name__ == name)
                    got = build(cc, fn, p, c, opts)
                    if got["shared"] <= limit[0] or step == 4:
                        done.append(dict(kernel=name, cc=cc, dt=dt, D=D, step=step, limit=limit[0], **got))
                        break
    print(json.dumps(done))
""")

# (compute capability, dtype, head dim, 64-bit offsets, attention mass over documents only and the block-sparse
# kernel's one-loop form, query heads per key/value head, runs of tiles). The first is the Hopper default for
# 16-bit D 128 (one loop, 32-key blocks, 3 stages) with pointer loads (its tensor-memory loads, the wrapper's
# default, compile in test_tensor_memory_loads_compile_to_pipelined_bulk_copies), the second the same with runs of
# tiles, the third the same
# default at D 256 (Gemma's heads: 243 registers, 128 KB; the four-loop form spills 40 bytes there); sm_90 fp16
# D 80 is the Hopper four-loop form (64-key blocks, 2 stages). The last two: a B200 (sm_100) and an RTX 50x0
# (sm_120), which take the defaults of every GPU but Hopper (the four-loop form, pointer loads); compiled, not timed.
CONFIGS = [(90, "bf16", 128, False, True, 4, False), (90, "bf16", 128, False, True, 4, True),
           (90, "bf16", 256, False, True, 2, False),
           (90, "fp16", 80, True, False, 4, False), (90, "fp32", 64, False, False, 4, False),
           (80, "bf16", 128, False, False, 4, False), (90, "bf16", 64, False, False, 3, False),
           (90, "fp32", 128, False, True, 4, False), (80, "fp32", 128, False, False, 2, False),
           (80, "bf16", 128, False, True, 4, True), (100, "bf16", 128, False, False, 4, False),
           (120, "bf16", 128, False, True, 4, False)]


def compile_kernels(tmp_path, mode, configs):
    """The records of SCRIPT for ``configs``, in their order. The configurations go in consecutive parts to up to
    four compiler processes at once (one per CPU): ptxas and Triton's passes use one core each."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    n = max(1, min(len(configs), os.cpu_count() or 1, 4))
    bounds = [len(configs) * i // n for i in range(n + 1)]
    procs = []
    for i in range(n):
        part = json.dumps(configs[bounds[i]:bounds[i + 1]])
        cache = str(tmp_path / f"cache{i}")  # compiled here, never taken from an earlier cache
        procs.append(subprocess.Popen([sys.executable, "-c", SCRIPT, mode, part], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=dict(env, TRITON_CACHE_DIR=cache)))
    done = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            if proc.returncode == SKIP:
                pytest.skip("this triton build has no NVIDIA backend or ptxas")
            assert proc.returncode == 0, err[-3000:]
            done += json.loads(out.strip().splitlines()[-1])
    finally:  # a failed or skipped part stops the others
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return done


def test_triton_kernels_compile_for_nvidia_gpus(tmp_path):
    done = compile_kernels(tmp_path, "default", CONFIGS)
    assert len(done) == 7 * len(CONFIGS)
    assert all(d["size"] > 5_000 for d in done), done  # a real cubin for every kernel and configuration
    # no register spills to local memory in the configurations users launch; the mass kernel's opt-in
    # whole_blocks (three loops, each pipelined) none on sm_90 up to D 128, the Hopper case it is for (ptxas
    # spills 100 bytes on sm_80 at D 128 and 4 on sm_90 at D 256 with it: its docstring says so)
    assert all(d["spills"] == 0 for d in done if not d["whole"]), [d for d in done if d["spills"]]
    assert all(d["spills"] == 0 for d in done if d["whole"] and d["cc"] == 90 and d["D"] <= 128), done
    # the block-sparse key loop is software-pipelined (asynchronous copies of the next key/value blocks), and
    # 16-bit products run on tensor cores (tcgen05 on sm_100, wgmma on sm_90, mma.sync on sm_80 and sm_120)
    bsa = [d for d in done if d["kernel"] == "_bsa_fwd"]
    assert all(d["cp_async"] for d in bsa), bsa
    # a pipelined loop copies its key and value blocks both ahead of the loop and in it (4 copies at least; a
    # loop that Triton did not pipeline, as a branch yielding values causes, has 2)
    assert all(d["copies"] >= 4 for d in bsa), bsa
    assert all(d["mma"] for d in bsa if d["dt"] != "fp32"), bsa
    # the Hopper default at D 128 (one loop, one tile per program) holds three programs per SM: at most 168
    # registers per thread, whatever this Triton version's compiler would take unlimited, and a third of an
    # H100 SM's shared memory
    hopper = [d for d in bsa if d["cc"] == 90 and d["D"] == 128 and d["dt"] == "bf16" and not d["runs"]]
    assert len(hopper) == 1 and all(d["regs"] <= 168 and fits_h100_sm(d, 3) for d in hopper), hopper


def fits_h100_sm(kernel: dict, programs: int) -> bool:
    """Whether ``programs`` copies of a compiled kernel fit one H100 SM's 228 KB of shared memory (1 KB of it
    reserved per program)."""
    return programs * (kernel["shared"] + 1024) <= 228 * 1024


def test_tensor_memory_loads_compile_to_pipelined_bulk_copies(tmp_path):
    """``tma=True`` on sm_90: (compute capability, dtype, D, one loop, group, runs of tiles, stages, register
    cap, 64-bit offsets). The Hopper default at D 128 in both forms and with runs of tiles, the default at 2
    stages and 128 registers (four programs per SM: 48 KB of shared memory each), fp16 D 64, and the four-loop
    form with 64-bit offsets for the query rows and the output."""
    configs = [(90, "bf16", 128, True, 4, False, None, None, False),
               (90, "bf16", 128, False, 4, False, None, None, False),
               (90, "bf16", 128, True, 4, True, None, None, False), (90, "bf16", 128, True, 4, False, 2, 128, False),
               (90, "fp16", 64, True, 3, False, None, None, False), (90, "fp16", 128, False, 4, False, None, None, True)]
    done = compile_kernels(tmp_path, "tma", configs)
    assert len(done) == len(configs) and all(d["size"] > 5_000 and d["mma"] for d in done), done
    assert all(d["spills"] == 0 for d in done), [d for d in done if d["spills"]]
    # the key and value blocks come by bulk tensor copies, issued ahead of the loop and in it (pipelined), never
    # by per-thread asynchronous copies (which runs of tiles still use for their query rows)
    assert all(d["tma_copies"] >= 4 and (d["copies"] == 0 or d["runs"]) for d in done), done
    four = done[3]
    assert four["maxnreg"] == 128 and four["regs"] <= 128 and fits_h100_sm(four, 4), four
    # the one-loop default: three programs per SM, as without tensor-memory loads
    assert done[0]["regs"] <= 168 and fits_h100_sm(done[0], 3), done[0]


def test_merge_in_the_kernel_compiles_to_an_acquire_release_ticket(tmp_path):
    """``fused_merge`` on sm_90 and sm_80 (compute capability, dtype, D, one loop, group, tensor-memory loads),
    in the block-sparse kernel and the normaliser's: each split chunk takes its ticket by an atomic add with
    acquire-release semantics at GPU scope, and the merging chunk reads the others' partials from L2
    (ld.global.cg), never from its SM's own L1. No spills up to D 128; the block-sparse Hopper default stays
    within its 168 registers (three programs per SM). (At D 256 on sm_90 ptxas spills 228 bytes in the
    block-sparse kernel's merge: its docstring says so.)"""
    configs = [(90, "bf16", 128, True, 4, True), (90, "bf16", 128, True, 4, False), (80, "bf16", 128, False, 4, False),
               (90, "fp16", 64, False, 3, False), (80, "fp32", 64, False, 2, False)]
    done = compile_kernels(tmp_path, "fused", configs)
    assert len(done) == 2 * len(configs) and all(d["size"] > 5_000 for d in done), done
    assert all(len(d["atoms"]) == 1 and {"global", "gpu", "acq_rel", "add"} <= set(d["atoms"][0].split("."))
               and d["cg_loads"] > 0 for d in done), done
    assert all(d["spills"] == 0 for d in done), [d for d in done if d["spills"]]
    assert done[0]["maxnreg"] == 168 and done[0]["regs"] <= 168 and fits_h100_sm(done[0], 3), done[0]


# shared memory per block that a kernel may use: A100 (sm_80), RTX 30x0 / A10 / L4 / RTX 40x0 (sm_86, sm_89),
# RTX 50x0 (sm_120)
SHARED_LIMIT = {80: 166_912, 86: 101_376, 89: 101_376, 120: 101_376}


def test_shared_memory_ladder_reaches_a_launchable_configuration(tmp_path):
    """D 256 (Gemma's heads) in 16 bits needs more shared memory by default than an A100 (block-sparse kernel)
    or an sm_86/89/120 card (all three kernels) gives; the wrappers' ladder of smaller configurations must reach
    one that fits, without register spills. D 128 fits those cards as it is."""
    cases = [(80, "bf16", 256, False, False, 4, False), (86, "bf16", 256, False, True, 4, True),
             (89, "fp16", 256, False, False, 2, False), (86, "bf16", 128, False, False, 4, False),
             (120, "bf16", 256, False, False, 4, False)]
    done = compile_kernels(tmp_path, "fit", [c + (SHARED_LIMIT[c[0]],) for c in cases])
    assert len(done) == 3 * len(cases)
    fits = [d for d in done if d["shared"] <= d["limit"]]
    assert len(fits) == len(done), [d for d in done if d["shared"] > d["limit"]]
    assert all(d["spills"] == 0 for d in done), [d for d in done if d["spills"]]
    assert all(d["step"] == 0 for d in done if d["D"] == 128), done  # D 128: the default fits as it is
    assert any(d["step"] > 0 for d in done if d["D"] == 256), done  # D 256: the ladder is needed
