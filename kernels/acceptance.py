"""Fused acceptance of every drafter at every position, from raw logits, in one launch.

γ[i, j] = Σ_v min(softmax(p_j/T), softmax(q_ij/T)) (``tv``), 1{argmax q_ij = argmax p_j} (``greedy``),
Σ_{v ∈ TopL(q_ij)} softmax(p_j/T)(v) (``topl``) or 1{argmax p_j ∈ TopL(q_ij)} (``topl_greedy``); see
``reference.acceptance_probs``, whose results this reproduces (TopL ties → lowest index, argmax ties → first index).

Design
------
Work unit: a *tile* = (position j, vocabulary chunk c of ``BLOCK_V`` tokens). A tile loads the target's chunk once and
then loops over the N drafters' chunks, so the target row is read once for all drafters; tv and greedy load ``ROWS``
drafters' chunks at a time as one 2D block (more bytes in flight per program: −11 to −30 % on an H100). Grid: one
program per tile (``m · ⌈V / BLOCK_V⌉`` programs, twice that for tv; ``BLOCK_V`` gives ~4 tiles per SM, 512..4096
tokens; ``ROWS · BLOCK_V`` ≤ 8192 elements).

* greedy / topl / topl_greedy need no global normaliser before their per-chunk work: a tile writes per-chunk partials
  (argmax value+index; softmax max+sum of p; the chunk's top-L candidates of each q_i) to a small workspace and bumps
  a per-position counter; the *last* tile of position j (atomic counter reaches ``n_chunks``) merges the partials
  and writes γ[:, j]. Bytes: every logit read once from HBM (the floor); one launch; no host sync.
* tv needs each row's max and Σexp before min(p, q) can be summed, and Σ_v min(p/S_p, q/S_q) cannot be split
  into per-chunk summaries without them. So each tile runs twice: a *stats* pass (max, Σexp of p and all q_i on
  the chunk) and a *min* pass (re-reads the chunk, sums min(p, q_i) with the global normalisers). Both passes run
  in one launch: programs take a ticket from an atomic counter (so a ticket's predecessors have all started and
  none waits on a later one: no deadlock, whatever the residency) and tickets are ordered S_0, S_1, M_0, S_2,
  M_1, …: the min tiles of position j spin (atomic acquire) until its A stats tiles have published, while the
  stats tiles of position j + 1 keep the memory busy. The chunk is re-read ~one position later, from L2
  (a position's rows are (N + 1)·V·2 B = 2.3 MB at N8·V128256; H100's L2 is 50 MB), with ``evict_last`` on the
  first read: HBM traffic ≈ the floor, L2 traffic 2×. The last min tile of j sums the per-chunk partials in a fixed
  order (deterministic) and writes γ[:, j]. ``schedule="two_launch"`` runs the passes as two launches of the same
  kernel instead (the fallback, and the comparison in ``bench/gpu_kernels.py``).
* Counters live in a per-(device, stream) int32 buffer that the kernel leaves zeroed (the last user of each counter
  resets it), so no memset launch is needed and the launch is CUDA-graph capturable (warm up once before capture).
* Drafters: ``[N, m, V]`` (any strides, last one 1), or a list of N ``[m, V]`` tensors read in place: evenly spaced
  in memory (views of one buffer) → base pointer + stride; otherwise a device table of N element offsets from
  drafter 0 (one small H2D copy, so not for graph capture; a host-checked 16-byte alignment hint keeps the loads
  vectorised); mixed dtypes or layouts → ``torch.stack`` (a copy).
* Temperature is applied in-kernel (base-2 exponentials with log2(e)/T folded into one scale). top-k / top-p are
  exact through the documented pre-pass ``reference.warp_logits`` (fp32 warped logits, T folded in), never ignored.
* ``acceptance_and_update``: the whole selection step in one launch. The last tile to finish a position bumps a
  second counter; the one that finishes the last position runs ``hedge._learner_step`` on the γ window.

Bytes per call (tv, bf16): (N + 1)·m·V·2 from HBM + the same again from L2 + a few KB of partials; launches per
selection step: 1 (``acceptance_and_update``) or 2 (``acceptance_probs`` + ``hedge.hedge_update_from_gamma``); no
host sync. Host side: launch constants are cached per shape and the workspace is one allocation (~16 µs of Python per
call on a slow 2-core VM, before Triton's own launch cost); capture the step in a CUDA graph to remove both.
"""
from __future__ import annotations

import contextlib
import functools
import math

import torch
import triton
import triton.language as tl

from . import reference
from .hedge import _learner_step, gamma_rounds, learner_arguments

MODE_IDS = {"tv": 0, "greedy": 1, "topl": 2, "topl_greedy": 3}
SCHEDULES = ("fused", "two_launch")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_BIG = tl.constexpr(2**31 - 1)  # "no index" sentinel, above every vocabulary index
_LOG2E = math.log2(math.e)
_SEMAPHORES: dict = {}


@triton.jit
def _chunk_stats(z):
    """max and Σ 2^(z − max) of a chunk already scaled to base 2; an all −inf chunk gives (−inf, 0)."""
    z_max = tl.max(z, axis=0)
    return z_max, tl.sum(tl.exp2(z - tl.where(z_max == float("-inf"), 0.0, z_max)), axis=0)


@triton.jit
def _merged_stats(ws_f_ptr, max_at, sum_at, cidx, n_chunks):
    """Row max and Σ 2^(z − max) from the per-chunk partials (.cg: written by other programs)."""
    maxes = tl.load(ws_f_ptr + max_at + cidx, mask=cidx < n_chunks, other=float("-inf"), cache_modifier=".cg")
    sums = tl.load(ws_f_ptr + sum_at + cidx, mask=cidx < n_chunks, other=0.0, cache_modifier=".cg")
    row_max = tl.max(maxes, axis=0)
    row_max = tl.where(row_max == float("-inf"), 0.0, row_max)
    return row_max, tl.sum(sums * tl.exp2(maxes - row_max), axis=0)


@triton.jit
def _merged_argmax(ws_f_ptr, ws_i_ptr, at, cidx, n_chunks):
    """First index of the row maximum from the per-chunk (max, first index) partials."""
    vals = tl.load(ws_f_ptr + at + cidx, mask=cidx < n_chunks, other=float("-inf"), cache_modifier=".cg")
    idxs = tl.load(ws_i_ptr + at + cidx, mask=cidx < n_chunks, other=_BIG, cache_modifier=".cg")
    return tl.min(tl.where((cidx < n_chunks) & (vals == tl.max(vals, axis=0)), idxs, _BIG), axis=0)


@triton.jit
def _drafter_row(drafter_ptr, offsets_ptr, n, pos, stride_dn, stride_dm, OFFSET_TABLE: tl.constexpr,
                 TABLE_ALIGN: tl.constexpr):
    if OFFSET_TABLE:  # drafter n starts offsets[n] elements from drafter 0 (any order, any gaps)
        start = tl.load(offsets_ptr + n)
        if TABLE_ALIGN > 1:  # every start is 16-byte aligned (checked on the host): keeps the loads vectorised
            start = tl.multiple_of(start, TABLE_ALIGN)
    else:
        start = tl.cast(n, tl.int64) * stride_dn
    return drafter_ptr + start + pos.to(tl.int64) * stride_dm


@triton.jit
def _drafter_rows(drafter_ptr, offsets_ptr, d, d_mask, pos, stride_dn, stride_dm, OFFSET_TABLE: tl.constexpr,
                  TABLE_ALIGN: tl.constexpr):
    """Row pointers [ROWS] of drafters ``d`` at position ``pos`` (a group of drafters loaded as one 2D block)."""
    if OFFSET_TABLE:
        start = tl.load(offsets_ptr + d, mask=d_mask, other=0)
        if TABLE_ALIGN > 1:
            start = tl.multiple_of(start, TABLE_ALIGN)
    else:
        start = d.to(tl.int64) * stride_dn
    return drafter_ptr + start + pos.to(tl.int64) * stride_dm


@triton.jit(do_not_specialize=["m", "n_chunks", "col0", "stride_hn", "n_rounds"])
def _acceptance_kernel(
    target_ptr, drafter_ptr, offsets_ptr, hist_ptr, ws_ptr, sem_ptr, m, n_drafters, vocab, n_chunks, col0,
    stride_tm, stride_dn, stride_dm, stride_hn, stride_hs, scale, n_rounds, draft_len,
    regret_ptr, abs_regret_ptr, cum_loss_ptr, weights_ptr, step_ptr, prior_ptr, u_ptr, choice_ptr,
    n, inv_n, eta, hedge_rate_num, log_bracket,
    MODE: tl.constexpr, TOP_L: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_CL: tl.constexpr,
    OFFSET_TABLE: tl.constexpr, TABLE_ALIGN: tl.constexpr, SCHEDULE: tl.constexpr, FUSED: tl.constexpr,
    LOSS: tl.constexpr, CHUNK: tl.constexpr, ALGO: tl.constexpr, HAS_ETA: tl.constexpr, HAS_PRIOR: tl.constexpr,
    SAMPLE: tl.constexpr, BLOCK_N: tl.constexpr, ROWS: tl.constexpr,
):
    # Workspace (one int32 buffer): fp32 stats slots (row r ∈ [0, N], 0 = target; position; chunk) for max | Σexp |
    # argmax value, then the min partials (drafter, position, chunk), then the top-L values (drafter, position, chunk,
    # l); after them the int32 argmax indices (stats slots) and top-L indices.
    slots = (n_drafters + 1) * m * n_chunks
    ws_f_ptr = ws_ptr.to(tl.pointer_type(tl.float32), bitcast=True)
    if MODE >= 2:
        ws_i_ptr = ws_ptr + 3 * slots + n_drafters * m * n_chunks * (1 + TOP_L)
    else:
        ws_i_ptr = ws_ptr + 3 * slots + n_drafters * m * n_chunks
    F_SUM = slots
    F_ARGV = 2 * slots
    F_MIN = 3 * slots
    F_TOPV = 3 * slots + n_drafters * m * n_chunks
    if SCHEDULE == 0:  # tv in one launch: tickets S_0, S_1, M_0, S_2, M_1, …, S_{m-1}, M_{m-2}, M_{m-1}
        ticket = tl.atomic_add(sem_ptr, 1)
        if ticket == 2 * m * n_chunks - 1:
            tl.atomic_xchg(sem_ptr, 0)  # every ticket is taken: ready for the next launch
        after = tl.maximum(ticket - n_chunks, 0)
        rnd = 1 + after // (2 * n_chunks)
        off = after % (2 * n_chunks)
        first = ticket < n_chunks
        is_stats = first | ((off < n_chunks) & (rnd < m))
        pos = tl.where(first, 0, tl.where(is_stats, rnd, rnd - 1))
        chunk = tl.where(first, ticket, tl.where(off < n_chunks, off, off - n_chunks))
    else:
        is_stats = SCHEDULE == 1
        pos = tl.program_id(0) // n_chunks
        chunk = tl.program_id(0) % n_chunks
    offs = chunk * BLOCK_V + tl.arange(0, BLOCK_V)
    in_vocab = offs < vocab
    target_row = target_ptr + pos.to(tl.int64) * stride_tm
    cidx = tl.arange(0, BLOCK_C)
    if is_stats:
        x = tl.load(target_row + offs, mask=in_vocab, other=float("-inf"), eviction_policy="evict_last").to(tl.float32)
        at = pos * n_chunks + chunk
        if MODE % 2 == 0:  # tv, topl: softmax statistics of p
            z_max, z_sum = _chunk_stats(x * scale)
            tl.store(ws_f_ptr + at, z_max)
            tl.store(ws_f_ptr + F_SUM + at, z_sum)
        else:  # greedy modes: argmax p (first index)
            x_max, x_arg = tl.max(x, axis=0, return_indices=True, return_indices_tie_break_left=True)
            tl.store(ws_f_ptr + F_ARGV + at, x_max)
            tl.store(ws_i_ptr + at, chunk * BLOCK_V + x_arg)
        if MODE <= 1:  # ROWS drafters' chunks per 2D load: more bytes in flight per program than one row at a time
            rr = tl.arange(0, ROWS)
            for g in range(0, n_drafters, ROWS):
                dd = g + rr
                d_mask = dd < n_drafters
                rows = _drafter_rows(drafter_ptr, offsets_ptr, dd, d_mask, pos, stride_dn, stride_dm, OFFSET_TABLE,
                                     TABLE_ALIGN)
                q_block = tl.load(rows[:, None] + offs[None, :], mask=d_mask[:, None] & in_vocab[None, :],
                            other=float("-inf"), eviction_policy="evict_last").to(tl.float32)
                q_at = ((dd + 1) * m + pos) * n_chunks + chunk
                if MODE == 0:
                    qz = q_block * scale
                    qs_max = tl.max(qz, axis=1)
                    qs_sum = tl.sum(tl.exp2(qz - tl.where(qs_max == float("-inf"), 0.0, qs_max)[:, None]), axis=1)
                    tl.store(ws_f_ptr + q_at, qs_max, mask=d_mask)
                    tl.store(ws_f_ptr + F_SUM + q_at, qs_sum, mask=d_mask)
                else:
                    qa_max, qa_arg = tl.max(q_block, axis=1, return_indices=True, return_indices_tie_break_left=True)
                    tl.store(ws_f_ptr + F_ARGV + q_at, qa_max, mask=d_mask)
                    tl.store(ws_i_ptr + q_at, chunk * BLOCK_V + qa_arg, mask=d_mask)
        else:  # topl modes: per drafter, this chunk's top-L of q by (value desc, index asc); sentinel _BIG when
            for d in range(n_drafters):  # the chunk runs out
                q_row = _drafter_row(drafter_ptr, offsets_ptr, d, pos, stride_dn, stride_dm, OFFSET_TABLE, TABLE_ALIGN)
                q = tl.load(q_row + offs, mask=in_vocab, other=float("-inf"), eviction_policy="evict_last")
                q = q.to(tl.float32)
                cand_at = ((d * m + pos) * n_chunks + chunk) * TOP_L
                avail = in_vocab
                for rank in tl.static_range(TOP_L):
                    best, best_at = tl.max(tl.where(avail, q, float("-inf")), axis=0, return_indices=True,
                                           return_indices_tie_break_left=True)
                    idx = chunk * BLOCK_V + best_at
                    if best == float("-inf"):  # only −inf left: the first still-available index (or none)
                        idx = tl.min(tl.where(avail, offs, _BIG), axis=0)
                    tl.store(ws_f_ptr + F_TOPV + cand_at + rank, best)
                    tl.store(ws_i_ptr + slots + cand_at + rank, idx)
                    avail = avail & (offs != idx)
        tl.debug_barrier()  # all threads' partials are issued before the release below
        arrived = tl.atomic_add(sem_ptr + 2 + 2 * pos, 1)  # acq_rel: publishes the partials
        finisher = arrived == n_chunks - 1
        if MODE == 0:
            finisher = arrived < 0  # tv finishes in the min pass
    else:  # tv min pass: wait for position pos's statistics, then Σ min(p, q_d) over this chunk
        while tl.atomic_add(sem_ptr + 2 + 2 * pos, 0, sem="acquire") < n_chunks:
            pass
        tl.debug_barrier()
        p_max, p_sum = _merged_stats(ws_f_ptr, pos * n_chunks, F_SUM + pos * n_chunks, cidx, n_chunks)
        p = tl.load(target_row + offs, mask=in_vocab, other=float("-inf"), eviction_policy="evict_first")
        p = tl.exp2(p.to(tl.float32) * scale - p_max) * (1.0 / p_sum)
        rr = tl.arange(0, ROWS)
        c_mask = cidx < n_chunks
        for g in range(0, n_drafters, ROWS):
            dd = g + rr
            d_mask = dd < n_drafters
            s_at = ((dd + 1) * m + pos) * n_chunks
            s_mask = d_mask[:, None] & c_mask[None, :]
            maxes = tl.load(ws_f_ptr + s_at[:, None] + cidx[None, :], mask=s_mask, other=float("-inf"),
                            cache_modifier=".cg")
            sums = tl.load(ws_f_ptr + F_SUM + s_at[:, None] + cidx[None, :], mask=s_mask, other=0.0,
                           cache_modifier=".cg")
            q_max = tl.max(maxes, axis=1)
            q_max = tl.where(q_max == float("-inf"), 0.0, q_max)
            q_sum = tl.sum(sums * tl.exp2(maxes - q_max[:, None]), axis=1)
            rows = _drafter_rows(drafter_ptr, offsets_ptr, dd, d_mask, pos, stride_dn, stride_dm, OFFSET_TABLE,
                                 TABLE_ALIGN)
            q = tl.load(rows[:, None] + offs[None, :], mask=d_mask[:, None] & in_vocab[None, :], other=float("-inf"),
                        eviction_policy="evict_first")
            q = tl.exp2(q.to(tl.float32) * scale - q_max[:, None]) * (1.0 / q_sum)[:, None]
            # A drafter row with a NaN has NaN q throughout (its Σexp is NaN): γ = 0, as the reference gives
            # (tl.minimum would return p there and γ = 1).
            part = tl.sum(tl.where(q == q, tl.minimum(p[None, :], q), 0.0), axis=1)
            tl.store(ws_f_ptr + F_MIN + (dd * m + pos) * n_chunks + chunk, part, mask=d_mask)
        tl.debug_barrier()
        arrived = tl.atomic_add(sem_ptr + 3 + 2 * pos, 1)
        finisher = arrived == n_chunks - 1
    if finisher:  # the last tile of position pos merges the partials into γ[:, pos]
        tl.debug_barrier()
        out_at = (col0 + pos).to(tl.int64) * stride_hs
        if MODE == 0:
            for d in range(n_drafters):
                parts = tl.load(ws_f_ptr + F_MIN + (d * m + pos) * n_chunks + cidx, mask=cidx < n_chunks, other=0.0,
                                cache_modifier=".cg")
                tl.store(hist_ptr + tl.cast(d, tl.int64) * stride_hn + out_at, tl.sum(parts, axis=0))
            tl.atomic_xchg(sem_ptr + 3 + 2 * pos, 0)
        elif MODE == 1:
            arg_p = _merged_argmax(ws_f_ptr + F_ARGV, ws_i_ptr, pos * n_chunks, cidx, n_chunks)
            for d in range(n_drafters):
                arg_q = _merged_argmax(ws_f_ptr + F_ARGV, ws_i_ptr, ((d + 1) * m + pos) * n_chunks, cidx, n_chunks)
                tl.store(hist_ptr + tl.cast(d, tl.int64) * stride_hn + out_at, (arg_q == arg_p).to(tl.float32))
        else:
            if MODE == 2:
                p_max, p_sum = _merged_stats(ws_f_ptr, pos * n_chunks, F_SUM + pos * n_chunks, cidx, n_chunks)
            else:
                arg_p = _merged_argmax(ws_f_ptr + F_ARGV, ws_i_ptr, pos * n_chunks, cidx, n_chunks)
            kidx = tl.arange(0, BLOCK_CL)
            for d in range(n_drafters):
                cand_at = (d * m + pos) * n_chunks * TOP_L
                kmask = kidx < n_chunks * TOP_L
                vals = tl.load(ws_f_ptr + F_TOPV + cand_at + kidx, mask=kmask, other=float("-inf"),
                               cache_modifier=".cg")
                idxs = tl.load(ws_i_ptr + slots + cand_at + kidx, mask=kmask, other=_BIG, cache_modifier=".cg")
                avail = kmask & (idxs < vocab)
                gamma = 0.0
                for _rank in tl.static_range(TOP_L):  # global top-L: (value desc, index asc) over the candidates
                    best = tl.max(tl.where(avail, vals, float("-inf")), axis=0)
                    idx = tl.min(tl.where(avail & (vals == best), idxs, _BIG), axis=0)
                    avail = avail & (idxs != idx)
                    hit = idx < vocab
                    if MODE == 2:
                        x_l = tl.load(target_row + idx, mask=hit, other=float("-inf")).to(tl.float32)
                        gamma += tl.exp2(x_l * scale - p_max) / p_sum
                    else:
                        gamma += (hit & (idx == arg_p)).to(tl.float32)
                tl.store(hist_ptr + tl.cast(d, tl.int64) * stride_hn + out_at, gamma)
        tl.atomic_xchg(sem_ptr + 2 + 2 * pos, 0)
        if FUSED:  # the finisher of the last position runs the learner on the γ window
            tl.debug_barrier()
            done = tl.atomic_add(sem_ptr + 1, 1)
            if done == m - 1:
                tl.atomic_xchg(sem_ptr + 1, 0)
                tl.debug_barrier()
                _learner_step(hist_ptr, 0, 0, hist_ptr, stride_hn, stride_hs, n_rounds, draft_len, regret_ptr,
                              abs_regret_ptr, cum_loss_ptr, weights_ptr, step_ptr, prior_ptr, u_ptr, choice_ptr,
                              n, inv_n, eta, hedge_rate_num, log_bracket, LOSS, CHUNK, ALGO, HAS_ETA, HAS_PRIOR,
                              SAMPLE, BLOCK_N)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _semaphores(device: torch.device, m: int) -> torch.Tensor:
    """Counters [ticket, positions done, (stats, min) per position]; kernels leave them zeroed."""
    key = (device, torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0)
    sem = _SEMAPHORES.get(key)
    if sem is None or sem.numel() < 2 + 2 * m:
        sem = _SEMAPHORES[key] = torch.zeros(2 + 2 * max(m, 64), dtype=torch.int32, device=device)
    elif device.type != "cuda":
        sem.zero_()  # the interpreter can stop mid-kernel on an exception; on CUDA the kernel resets them
    return sem


def _drafter_source(drafter_logits, m, vocab):
    """(drafter 0, stride_n, stride_m, offset table or None, table alignment) of the drafters, without a copy if
    possible: a stacked tensor or views of one buffer → base + stride; separate tensors → a table of element offsets
    from drafter 0 (one small H2D copy)."""
    if isinstance(drafter_logits, torch.Tensor):
        if drafter_logits.dim() != 3 or tuple(drafter_logits.shape[1:]) != (m, vocab):
            raise ValueError(f"drafter logits must be [N, {m}, {vocab}], got {tuple(drafter_logits.shape)}")
        d = drafter_logits if drafter_logits.stride(-1) == 1 else drafter_logits.contiguous()
        return d, d.stride(0), d.stride(1), None, 1
    rows = list(drafter_logits)
    first = rows[0]
    if any(r.dtype != first.dtype or tuple(r.shape) != (m, vocab) or r.stride() != first.stride() or r.stride(-1) != 1
           or r.device != first.device for r in rows):
        return _drafter_source(reference._stack_drafters(rows), m, vocab)  # mixed layouts: one copy
    size = first.element_size()
    starts = [r.data_ptr() - first.data_ptr() for r in rows]
    if any(s % size for s in starts):
        return _drafter_source(reference._stack_drafters(rows), m, vocab)
    starts = [s // size for s in starts]
    gap = starts[1] if len(rows) > 1 else 0
    if all(s == i * gap for i, s in enumerate(starts)):
        return first, gap, first.stride(0), None, 1  # views of one buffer, evenly spaced
    table = torch.tensor(starts, dtype=torch.int64)
    if first.device.type == "cuda":
        table = table.pin_memory().to(first.device, non_blocking=True)
    vec = 16 // size
    return first, 0, first.stride(0), table, vec if all(s % vec == 0 for s in starts) else 1


def _pow2(x: int) -> int:
    return 1 << max(x - 1, 0).bit_length()  # plain ints: triton.cdiv is a @jit function, slow to call from Python


@functools.lru_cache(maxsize=256)
def _plan(m, vocab, n_drafters, mode, top_l, block_v, sm_count, num_warps=None, rows=None):
    """Per-shape launch constants, cached (the decode loop repeats a handful of shapes): chunking, workspace
    layout and constexprs. ~4 tiles per SM, chunks of 512..4096 tokens (and no wider than the vocabulary)."""
    if block_v is None:
        per_tile = -(-m * vocab // (4 * sm_count))
        block_v = min(max(_pow2(per_tile), 512), 4096, max(_pow2(vocab), 16))
    n_chunks = -(-vocab // block_v)
    # tv / greedy load ROWS drafters' chunks at once (≤ 8192 elements a block: registers, not spills)
    rows = rows or min(_pow2(n_drafters), max(1, 8192 // block_v))
    top = top_l if mode in ("topl", "topl_greedy") else 0
    slots = (n_drafters + 1) * m * n_chunks
    ws_f = 3 * slots + n_drafters * m * n_chunks * (1 + top)  # fp32: stats | argmax values | min partials | top-L
    ws_i = slots + n_drafters * m * n_chunks * top  # int32: argmax indices | top-L indices
    const = dict(MODE=MODE_IDS[mode], TOP_L=max(top, 1), BLOCK_V=block_v, BLOCK_C=_pow2(n_chunks), ROWS=rows,
                 BLOCK_CL=_pow2(n_chunks * top) if top else 1,
                 num_warps=num_warps or (8 if block_v >= 4096 else 4 if block_v >= 1024 else 2))
    return n_chunks, ws_f, ws_i, const


_NO_LEARNER = dict(FUSED=False, LOSS=0, CHUNK=False, ALGO=0, HAS_ETA=False, HAS_PRIOR=False, SAMPLE=False, BLOCK_N=2)


def _launch(target_logits, drafter_logits, hist, col0, temperature, mode, top_k, top_p, top_l, block_v, schedule,
            learner=None, num_warps=None, rows=None):
    if mode not in MODE_IDS or schedule not in SCHEDULES:
        raise ValueError(f"mode must be one of {reference.MODES} and schedule one of {SCHEDULES}")
    if not 1 <= top_l <= reference.MAX_TOP_L:
        raise ValueError(f"top_l must be in [1, {reference.MAX_TOP_L}], got {top_l}")
    m, vocab = target_logits.shape
    n_drafters = hist.shape[0]
    if m == 0 or n_drafters == 0:
        return
    if mode in ("tv", "topl"):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling modes, got {temperature}")
        if 0 < top_k < vocab or top_p < 1.0:  # exact top-k / top-p: the documented warp pre-pass (fp32, T folded in)
            target_logits = reference.warp_logits(target_logits, temperature, top_k, top_p)
            if mode == "tv":
                drafter_logits = reference.warp_logits(reference._stack_drafters(drafter_logits), temperature, top_k,
                                                       top_p)
            temperature = 1.0
    if target_logits.stride(-1) != 1:
        target_logits = target_logits.contiguous()
    drafters, stride_dn, stride_dm, offsets, table_align = _drafter_source(drafter_logits, m, vocab)
    if target_logits.dtype not in _DTYPES or drafters.dtype not in _DTYPES:
        raise TypeError(f"logits must be fp32, fp16 or bf16, got {target_logits.dtype} / {drafters.dtype}")
    device = target_logits.device
    n_chunks, ws_f_size, ws_i_size, const = _plan(m, vocab, n_drafters, mode, top_l, block_v, _sm_count(device),
                                                  num_warps, rows)
    workspace = torch.empty(ws_f_size + ws_i_size, dtype=torch.int32, device=device)  # fp32 part, then int32 part
    sem = _semaphores(device, m)
    if learner is None:
        learner_args, learner_const, n_rounds, draft_len = (sem,) * 8 + (n_drafters, 0.0, 0.0, 0.0, 0.0), {}, 0, 1
    else:
        learner_args, learner_const, n_rounds, draft_len = learner
        learner_const = dict(learner_const, FUSED=True)
    args = (target_logits, drafters, sem if offsets is None else offsets, hist, workspace, sem, m, n_drafters,
            vocab, n_chunks, col0, target_logits.stride(0), stride_dn, stride_dm, hist.stride(0), hist.stride(1),
            _LOG2E / temperature if mode in ("tv", "topl") else 1.0, n_rounds, draft_len, *learner_args)
    const = {**const, **_NO_LEARNER, **learner_const, "OFFSET_TABLE": offsets is not None, "TABLE_ALIGN": table_align}
    tiles = m * n_chunks
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():  # launch where the data is
        if mode != "tv":
            _acceptance_kernel[(tiles,)](*args, SCHEDULE=1, **const)
        elif schedule == "fused":
            _acceptance_kernel[(2 * tiles,)](*args, SCHEDULE=0, **const)
        else:
            _acceptance_kernel[(tiles,)](*args, SCHEDULE=1, **{**const, "FUSED": False})
            _acceptance_kernel[(tiles,)](*args, SCHEDULE=2, **const)


def _gamma_out(out, n_drafters, m, device):
    if out is None:
        return torch.empty((n_drafters, m), dtype=torch.float32, device=device)
    if tuple(out.shape) != (n_drafters, m) or out.dtype != torch.float32 or out.device != device:
        raise ValueError(f"out must be an fp32 tensor [{n_drafters}, {m}] on {device}")
    return out


def acceptance_probs(target_logits, drafter_logits, temperature=1.0, mode="tv", top_k=0, top_p=1.0, top_l=1, *,
                     out=None, block_v=None, schedule="fused", num_warps=None, rows=None):
    """Triton twin of :func:`reference.acceptance_probs`: γ ``[N, m]`` fp32 in one launch (see the module doc).

    Extra keywords: ``out`` (``[N, m]`` fp32, any strides), ``block_v`` (vocabulary chunk, a power of two; None =
    heuristic), ``schedule`` (``"fused"`` one launch | ``"two_launch"``, tv only), ``num_warps`` and ``rows``
    (drafters per 2D load in tv / greedy, a power of two); None = heuristic. ``block_v``, ``num_warps``, ``rows`` and
    ``schedule`` are the knobs of ``bench/tune_acceptance.py``.
    """
    n_drafters = len(drafter_logits)
    out = _gamma_out(out, n_drafters, target_logits.shape[0], target_logits.device)
    _launch(target_logits, drafter_logits, out, 0, temperature, mode, top_k, top_p, top_l, block_v, schedule,
            num_warps=num_warps, rows=rows)
    return out


def acceptance_and_update(target_logits, drafter_logits, gamma_history, regret, abs_regret, cum_loss, weights, step, *,
                          temperature=1.0, mode="tv", top_k=0, top_p=1.0, top_l=1, draft_len=1,
                          loss="expected_length", level="token", algo="normalhedge", eta=None, prior=None, u=None,
                          out=None, block_v=None, schedule="fused"):
    """Triton twin of :func:`reference.acceptance_and_update`: γ into the last m columns of ``gamma_history``,
    then losses + learner rounds + choice, all in one launch. Returns the choice ``[1]`` int64."""
    m, width = target_logits.shape[0], gamma_history.shape[1]
    if width < m:
        raise ValueError(f"gamma_history has {width} columns, fewer than the {m} new positions")
    if weights.device != target_logits.device or gamma_history.device != target_logits.device:
        raise ValueError("gamma_history and the learner state must be on the logits' device")
    if gamma_history.shape[0] != len(drafter_logits):
        raise ValueError(f"gamma_history has {gamma_history.shape[0]} rows for {len(drafter_logits)} drafters")
    n_rounds, loss_kind, chunk = gamma_rounds(gamma_history, weights.numel(), draft_len, loss, level)
    args, const, choice = learner_arguments(regret, abs_regret, cum_loss, weights, step, algo, eta, prior, u, out)
    if m == 0:  # nothing to evaluate: the update alone
        from .hedge import hedge_update_from_gamma
        return hedge_update_from_gamma(gamma_history, regret, abs_regret, cum_loss, weights, step, draft_len=draft_len,
                                       loss=loss, level=level, algo=algo, eta=eta, prior=prior, u=u, out=choice)
    _launch(target_logits, drafter_logits, gamma_history, width - m, temperature, mode, top_k, top_p, top_l, block_v,
            schedule, learner=(args, dict(const, LOSS=loss_kind, CHUNK=chunk), n_rounds, draft_len))
    return choice
