"""CPU path for block-sparse in-context attention in PyTorch, without the [T, T] mask.

Every segment's rows attend two parts: an unmasked prefix (documents: the instruction; query rows: everything
before the query segment; instruction rows: nothing) and a causal square over the segment's own tokens. Three ways
to compute that, all through PyTorch's CPU flash attention, which returns the log-sum-exp:

- Segments of at most CHUNKED_MAX_LEN tokens whose prefix is at most 2 x length + 128 tokens (documents, in
  practice) go in chunks of CHUNK rows (CHUNK_BF16 in bfloat16 calls). Chunk c of every segment of one prefix
  is one call over the keys [prefix | the segment's tokens up to the chunk's end], with an additive mask that
  cuts the chunk's upper triangle, shared by the call's segments. Segments shorter than the longest are padded,
  and a valid row never sees a padded key (its own keys end at the row itself). The calls visit the causal
  square's lower half and the chunks' diagonal triangles, nothing is merged, and segments of any lengths share
  a call. (The flash op's causal mode costs the whole square up to 512 keys.)
- Documents of at most CHUNKED_MAX_LEN tokens after a longer instruction (over 2 x length + 128 tokens) take
  their own squares in chunks as above, without the instruction, over copies of their rows laid back to back;
  then the instruction part of all of them in one call, whose long query gets the flash op's large query blocks;
  and the two parts are merged in float32: lse = logaddexp(lse_a, lse_b), out = out_a * exp(lse_a - lse) + out_b
  * exp(lse_b - lse).
- Other segments (long ones, query segments with a long prefix, instructions) take one call per part, merged
  the same way. Segments of equal length and prefix go through in one batch.

Equal-length segments that lie back to back are read and written as views; others are gathered, and padding
rows are written to a scratch row past the output's end. The forms and their thresholds were chosen by timing
them on 2 CPU cores (bench/RESULTS.md, kernel notes). Memory follows the allowed pairs of a batch, not T^2. If
the flash op is unavailable, or gradients are wanted (the flash op has none for its log-sum-exp), an explicit
float32 softmax does the same.

The calls take float32 copies of the inputs, except bfloat16 inputs on a CPU that multiplies bfloat16 natively
(AVX512-BF16 or AMX): those go to the flash op as they are, which multiplies them with float32 sums and rounds
the probabilities to bfloat16 before their product with the values, as the Triton kernel does on a GPU.

Same signature as naive.block_sparse_attention: q [T, Hq, D], k and v [T, Hkv, D]; returns out [T, Hq, D]
(q's dtype) and lse [T, Hq] (float32, natural log).
"""
from __future__ import annotations

import itertools
import math
from typing import Optional

import torch

from .._checks import wants_grad
from ..layout import DOCUMENT, SegmentLayout

BATCH_ELEMENTS = 1 << 24  # score elements per batched call, and gathered key elements per batch of chunks
CHUNKED_MAX_LEN = 512  # segments up to this length (and a prefix up to 2 x length + 128) go in chunks
CHUNK = 32  # rows per chunk: the CPU flash op's query block below 192 rows
CHUNK_BF16 = 64  # rows per chunk of bfloat16 calls: 8-23% faster than 32 with AMX (bench/RESULTS.md, kernel notes)


def _repeat_heads(q, k, v):
    """k, v with each key/value head repeated for the query heads of its group."""
    group = q.shape[1] // k.shape[1]
    return (k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)) if group > 1 else (k, v)


def _explicit(q, k, v, causal, scale, mask=None):
    """The flash op's result by an explicit float32 softmax (bfloat16 calls whose op raised come here too)."""
    q, k, v = q.float(), k.float(), v.float()
    k, v = _repeat_heads(q, k, v)
    s = torch.einsum("bhld,bhmd->bhlm", q, k) * scale
    if causal:
        L = q.shape[2]
        s = s.masked_fill(~torch.ones(L, L, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    if mask is not None:
        s = s + mask
    lse = torch.logsumexp(s, dim=-1)
    return torch.einsum("bhlm,bhmd->bhld", torch.exp(s - lse[..., None]), v), lse


def _flash_op():
    """PyTorch's CPU flash attention op (returns the log-sum-exp too), or None."""
    return getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _flash(q, k, v, causal, scale, mask=None):
    """Attention of q [B, Hq, L, D] over k, v [B, Hkv, M, D] (causal: a square, row i sees keys <= i; mask: an
    additive float32 mask broadcast to [B, Hq, L, M]; Hq a multiple of Hkv). Returns out [B, Hq, L, D] and lse
    [B, Hq, L], float32. PyTorch's CPU flash op takes the grouped key/value heads as they are; where it does not
    (older builds), they are repeated for it. When a gradient is wanted the explicit softmax runs instead: the
    flash op passes no gradient through its log-sum-exp, and the merge of a document's two parts needs one
    (without it the gradients of q and k are wrong, e.g. when fine-tuning with BlockRank's loss). So do tensors
    on another device (a GPU without Triton, or backend="torch" there): the op is the CPU's, and calling it
    there raised and caught two errors per call."""
    op = None if wants_grad(q, k, v) or q.device.type != "cpu" else _flash_op()
    for attempt in (lambda: (k, v), lambda: _repeat_heads(q, k, v)) if op is not None else ():
        try:
            return op(q, *attempt(), 0.0, causal, attn_mask=mask, scale=scale)[:2]
        except (RuntimeError, NotImplementedError):
            continue
    return _explicit(q, k, v, causal, scale, mask)


def _merge(o, m, oa, ma):
    """Merge two parts' outputs and log-sum-exps in float32, whatever dtype the parts' calls took (in place into
    o when it is float32 and no gradient is wanted)."""
    o, oa = o.float(), oa.float()
    mm = torch.logaddexp(ma, m)
    wa, wb = torch.exp(ma - mm)[..., None], torch.exp(m - mm)[..., None]
    if wants_grad(o, oa):
        return oa * wa + o * wb, mm
    return o.mul_(wb).addcmul_(oa, wa), mm


class _Rows:
    """The rows of a batch of segments (starts, lengths), each padded to `width` rows, read and written as
    [segments, columns, ...] for the first `live` segments and a range of columns. When the segments are of one
    length and lie back to back, reads and writes are views of their slice `at`. Otherwise `index` [n, width]
    gathers them (a padding row repeats its segment's last row), and writes go through `to`, which sends
    padding rows to the scratch row `dump`."""

    def __init__(self, starts, lengths, width, dump, device):
        self.n, self.width, self.lengths = len(starts), width, lengths
        s = torch.as_tensor(starts, device=device)[:, None]
        n = torch.as_tensor(lengths, device=device)[:, None]
        j = torch.arange(width, device=device)[None, :]
        self.index = s + torch.minimum(j, n - 1)
        self.at = self.to = None
        if all(x == width for x in lengths) and all(b - a == width for a, b in zip(starts, starts[1:])):
            self.at = slice(starts[0], starts[0] + self.n * width)
        else:
            self.to = torch.where(j < n, s + j, dump)

    def read(self, x, live=None, cols=slice(None)):
        """Rows of x [T, ...] as [live, columns, ...]."""
        if self.at is not None:
            return x[self.at].unflatten(0, (self.n, self.width))[:live, cols]
        index = self.index[:live, cols]
        return x.index_select(0, index.flatten()).unflatten(0, index.shape)

    def write(self, dst, x, live=None, cols=slice(None)):
        """Store x [live, columns, ...] into the rows of dst (padding rows into its scratch row)."""
        if self.at is not None:
            dst[self.at].unflatten(0, (self.n, self.width))[:live, cols] = x
        else:
            dst.index_copy_(0, self.to[:live, cols].flatten(), x.flatten(0, 1).to(dst.dtype))


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX tiles), so that PyTorch's flash op runs
    bfloat16 inputs faster than their float32 copies (1.9-2.6x per pair on one core of an AMX-capable Xeon,
    bench/RESULTS.md); elsewhere it would convert them itself."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check is not None and check() for check in checks)


def _work_dtype(q, k, v) -> torch.dtype:
    """What the flash op's calls take: bfloat16 inputs as they are where the CPU multiplies them natively and no
    gradient is wanted (the op then multiplies in bfloat16 with float32 sums, as the Triton kernel does); float32
    otherwise: float16 (as slow as float32 in the op on a CPU without AMX-FP16, where it was measured), and the
    explicit softmax, which gradients take."""
    if (q.dtype == k.dtype == v.dtype == torch.bfloat16 and q.device.type == "cpu" and not wants_grad(q, k, v)
            and _flash_op() is not None and native_bf16()):
        return torch.bfloat16
    return torch.float32


def _heads(x, dtype):
    """[n, length, heads, D] -> [n, heads, length, D] in dtype (a view where x is of it)."""
    return x.to(dtype).transpose(1, 2)


def _two_parts(q, k, v, rows, prefix, scale, out, lse, dtype):
    """Segments of one length and prefix: one batched call per part (the causal square, the prefix), merged (in
    float32, whatever dtype the calls take)."""
    qs = _heads(rows.read(q), dtype)
    o, m = _flash(qs, _heads(rows.read(k), dtype), _heads(rows.read(v), dtype), True, scale)
    p0, p1 = prefix
    if p1 > p0:
        n = rows.n
        kp = _heads(k[p0:p1][None], dtype).expand(n, -1, -1, -1)
        vp = _heads(v[p0:p1][None], dtype).expand(n, -1, -1, -1)
        o, m = _merge(o, m, *_flash(qs, kp, vp, False, scale))
    rows.write(out, o.transpose(1, 2))
    rows.write(lse, m.transpose(1, 2))


def _chunks(q, k, v, rows, prefix, scale, out, lse, dtype, chunk):
    """Segments of one prefix, longest first, in chunks of `chunk` rows: chunk c of every segment that reaches it
    in one call over the keys [prefix | the segment's tokens up to the chunk's end], with the chunk's upper
    triangle masked. The keys are gathered once, as [prefix | own tokens], and each chunk's are a leading slice
    of them. A valid row never sees a padded key: its own keys end at the row itself."""
    p0, p1 = prefix
    n, width, P, dev = rows.n, rows.width, p1 - p0, q.device
    at = torch.cat([torch.arange(p0, p1, device=dev).expand(n, -1), rows.index], 1).flatten()
    keys, values = (_heads(x.index_select(0, at).unflatten(0, (n, P + width)), dtype) for x in (k, v))
    for c in range(0, width, chunk):
        live = sum(1 for x in rows.lengths if x > c)  # the segments that reach this chunk: the first `live`
        w = min(chunk, width - c)
        mask = torch.zeros(w, P + c + w, dtype=torch.float32, device=dev)
        mask[:, P + c:].masked_fill_(torch.ones(w, w, dtype=torch.bool, device=dev).triu(1), float("-inf"))
        cols = slice(c, c + w)
        o, m = _flash(_heads(rows.read(q, live, cols), dtype), keys[:live, :, :P + c + w],
                      values[:live, :, :P + c + w], False, scale, mask[None, None])
        rows.write(out, o.transpose(1, 2), live, cols)
        rows.write(lse, m.transpose(1, 2), live, cols)


def _chunked(q, k, v, segs, prefix, scale, out, lse, dtype, chunk):
    """Segments [(start, length)] of one prefix through _chunks, longest first, in batches whose gathered keys and
    scores stay within BATCH_ELEMENTS."""
    p0, p1 = prefix
    T, Hq, D = q.shape
    segs = sorted(segs, key=lambda x: -x[1])  # longest first (stable: equal lengths keep their order)
    step = max(1, BATCH_ELEMENTS // (max(Hq * min(chunk, segs[0][1]), k.shape[1] * D) * (p1 - p0 + segs[0][1])))
    for c in range(0, len(segs), step):
        batch = segs[c:c + step]
        rows = _Rows([s for s, _ in batch], [n for _, n in batch], batch[0][1], T, q.device)
        _chunks(q, k, v, rows, prefix, scale, out, lse, dtype, chunk)


def _stacked(q, k, v, segs, prefix, scale, out, lse, dtype, chunk):
    """Documents [(start, length)] whose instruction (prefix) is longer than 2 x their length + 128: their own
    causal squares in chunks over copies of their rows laid back to back (no prefix), then the instruction part
    of all their rows in one call per BATCH_ELEMENTS scores, merged with the first in float32. The rows of
    documents of any lengths make one long query there, for which the flash op takes its large query blocks; the
    chunks would read the long instruction again in every call."""
    _, Hq, D = q.shape
    segs = sorted(segs, key=lambda x: -x[1])
    lengths = [n for _, n in segs]
    idx = torch.cat([torch.arange(a, a + n, device=q.device) for a, n in segs])
    N = len(idx)
    qg, kg, vg = (x.index_select(0, idx) for x in (q, k, v))
    og = torch.empty(N + 1, Hq, D, dtype=torch.float32, device=q.device)  # row N: padding rows' scratch
    lg = torch.empty(N + 1, Hq, dtype=torch.float32, device=q.device)
    starts = [0, *itertools.accumulate(lengths[:-1])]
    _chunked(qg, kg, vg, list(zip(starts, lengths)), (0, 0), scale, og, lg, dtype, chunk)
    p0, p1 = prefix
    kp, vp = (_heads(x[p0:p1][None], dtype) for x in (k, v))
    step = max(1, BATCH_ELEMENTS // (Hq * (p1 - p0)))
    for r in range(0, N, step):
        rs = slice(r, min(N, r + step))
        oa, ma = _flash(_heads(qg[rs][None], dtype), kp, vp, False, scale)
        o, m = _merge(og[rs].transpose(0, 1)[None], lg[rs].transpose(0, 1)[None], oa, ma)
        out.index_copy_(0, idx[rs], o[0].transpose(0, 1).to(out.dtype))
        lse.index_copy_(0, idx[rs], m[0].transpose(0, 1))


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SegmentLayout,
                           scale: Optional[float] = None) -> tuple[torch.Tensor, torch.Tensor]:
    T, Hq, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    # PyTorch's CPU flash op, called directly, reads each row of D values as contiguous: SDPA's own checks, which
    # copy other strides, are bypassed. (A view with another stride there, such as a transpose, gave garbage.)
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    dtype = _work_dtype(q, k, v)
    chunk = CHUNK_BF16 if dtype == torch.bfloat16 else CHUNK
    out = torch.empty(T + 1, Hq, D, dtype=q.dtype, device=q.device)  # row T: padding rows' scratch
    lse = torch.empty(T + 1, Hq, dtype=torch.float32, device=q.device)
    chunked: dict[tuple, list] = {}  # (prefix start, prefix end) -> [(segment start, length)]
    stacked: dict[tuple, list] = {}  # the same, for documents whose instruction is long beside them
    split: dict[tuple, list[int]] = {}  # (prefix start, prefix end, length) -> segment starts
    for a, b, kind, p0, i1 in layout.segments():
        if b == a:
            continue
        prefix = (p0, i1) if kind == DOCUMENT else (p0, a)  # instruction rows: (p0, p0), empty
        P, L = prefix[1] - prefix[0], b - a
        if 0 < P <= 2 * L + 128 and L <= CHUNKED_MAX_LEN:
            chunked.setdefault(prefix, []).append((a, L))
        elif P > 0 and L <= CHUNKED_MAX_LEN and kind == DOCUMENT:
            stacked.setdefault(prefix, []).append((a, L))
        else:
            split.setdefault((*prefix, L), []).append(a)
    for prefix, segs in chunked.items():
        _chunked(q, k, v, segs, prefix, scale, out, lse, dtype, chunk)
    for prefix, segs in stacked.items():
        _stacked(q, k, v, segs, prefix, scale, out, lse, dtype, chunk)
    for (p0, p1, length), starts in split.items():
        step = max(1, BATCH_ELEMENTS // (Hq * length * (p1 - p0 + length)))
        for c in range(0, len(starts), step):
            batch = starts[c:c + step]
            rows = _Rows(batch, [length] * len(batch), length, T, q.device)
            _two_parts(q, k, v, rows, (p0, p1), scale, out, lse, dtype)
    return out[:T], lse[:T]
