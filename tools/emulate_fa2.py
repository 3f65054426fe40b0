#!/usr/bin/env python3
"""Warp-level emulation of the tensor-core attention kernels of kernels-cu/attention.cu (numpy
only): attention_fa2<MT, NW, V2, DROP> (entry points attention_fwd_bf16_d64_fa2, MT = 1, NW = 4;
attention_fwd_bf16_d64_fa2_v2, the same computation; attention_fwd_bf16_d64_fa2_q128, MT = 2;
attention_fwd_bf16_d64_fa2_w8, NW = 8 warps with the Q tile over the K buffers),
attention_fa2p<NW> (attention_fwd_bf16_d64_fa2_v3, NW = 4, and _w8v3 / _w8v4, NW = 8 with the Q
tile over the second K/V buffer; the mask row preloaded, key tile 0 always processed; _w8v5 with
one barrier per key tile; copies and barriers in any order the hardware allows, run_intervals),
attention_fa2wg<PV> (attention_fwd_bf16_d64_fa2_wg and _wg2: wgmma.mma_async.m64n64k16 reading
shared memory through no-swizzle matrix descriptors, K-major Q and K, N-major V) and
attention_fwd_f32_d64_tf32x3, and the _dropout variants (Philox dropout on the probabilities,
each lane's draws against the mask defined element by element).

Runs the kernel's index arithmetic lane by lane against the PTX ISA's definitions of
`ldmatrix.m8n8.x4[.trans].b16`, `mma.m16n8k16.row.col` (bf16), `mma.m16n8k8.row.col` (tf32)
and `cvt.rna.tf32.f32` (fragment layouts and rounding as the PTX manual gives them), on one (batch, head) with padded keys, and compares with a plain softmax attention
in float64. It checks the fragment bookkeeping (which lane holds which element), the key-tile
skipping and the double-buffer order, not the GPU: the GPU check is `mslt-cli kernels check`.

    python3 tools/emulate_fa2.py          # prints the max error per case; exit 1 on a mismatch
"""
import sys

import numpy as np

D, DP = 64, 72
LOG2E = 1.4426950408889634
PAD_MASK = -1.0e8
FLT_MAX = np.float32(3.402823466e38)
LANES = np.arange(32)
G, Q4 = LANES >> 2, LANES & 3  # accumulator row g (and g + 8), columns 2 q4 + {0, 1}
LM, LR = LANES >> 3, LANES & 7  # ldmatrix: lane addresses row LR of matrix LM


def bf16(x):
    """Round to bf16 (nearest even), returned as float32."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


def ldsm_x4(smem, rows, cols, trans=False):
    """ldmatrix.x4: lane l addresses row (l % 8) of matrix (l / 8) at smem[rows[l], cols[l]:+8].
    Returns r[lane, m, 2]: the two b16 elements (low, high half) of register m of each lane."""
    r = np.zeros((32, 4, 2), np.float32)
    for m in range(4):
        mat = np.stack([smem[rows[m * 8 + i], cols[m * 8 + i]:cols[m * 8 + i] + 8] for i in range(8)])
        if trans:  # lane t: (2 (t%4) + {0,1}, t/4)
            r[:, m, 0], r[:, m, 1] = mat[2 * Q4, G], mat[2 * Q4 + 1, G]
        else:  # lane t: (t/4, 2 (t%4) + {0,1})
            r[:, m, 0], r[:, m, 1] = mat[G, 2 * Q4], mat[G, 2 * Q4 + 1]
    return r


def mma_acc(A, B, c):
    """D = A B + C for the m16n8 f32 accumulator fragment c (32, 4): c0, c1 at (g, 2 q4 + {0,1}),
    c2, c3 at (g + 8, 2 q4 + {0,1})."""
    C = np.zeros((16, 8))
    for e in range(2):
        C[G, 2 * Q4 + e] = c[:, e]
        C[G + 8, 2 * Q4 + e] = c[:, 2 + e]
    Dm = (A @ B + C).astype(np.float32)
    out = np.zeros_like(c)
    for e in range(2):
        out[:, e] = Dm[G, 2 * Q4 + e]
        out[:, 2 + e] = Dm[G + 8, 2 * Q4 + e]
    return out


def mma(c, a, b0, b1):
    """mma.m16n8k16.row.col f32 += bf16 x bf16. c (32, 4); a (32, 4, 2); b0, b1 (32, 2)."""
    A = np.zeros((16, 16))
    B = np.zeros((16, 8))
    for e in range(2):
        A[G, 2 * Q4 + e] = a[:, 0, e]
        A[G + 8, 2 * Q4 + e] = a[:, 1, e]
        A[G, 2 * Q4 + 8 + e] = a[:, 2, e]
        A[G + 8, 2 * Q4 + 8 + e] = a[:, 3, e]
        B[2 * Q4 + e, G] = b0[:, e]
        B[2 * Q4 + 8 + e, G] = b1[:, e]
    return mma_acc(A, B, c)


def quad(v, op):
    """__shfl_xor_sync over offsets 1 and 2 (the four lanes of a row)."""
    for o in (1, 2):
        v = op(v, v[LANES ^ o])
    return v



def philox4x32_10(c, k0, k1):
    """Philox4x32-10 on arrays: c = 4 uint32 arrays (counter words), key (k0, k1) -> 4 arrays."""
    M = np.uint64(0xFFFFFFFF)
    c = [np.asarray(x, np.uint64) & M for x in c]
    k0, k1 = np.uint64(k0), np.uint64(k1)
    for _ in range(10):
        p0, p1 = np.uint64(0xD2511F53) * c[0], np.uint64(0xCD9E8D57) * c[2]
        hi0, lo0, hi1, lo1 = p0 >> np.uint64(32), p0 & M, p1 >> np.uint64(32), p1 & M
        c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0]
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & M, (k1 + np.uint64(0xBB67AE85)) & M
    return c


def threshold(p):
    return min(round(p * 2 ** 32), 2 ** 32 - 1)


def drop4(s_nt, drop, row0, key0, h, b):
    """The kernels' drop4 on one n-tile's accumulator s_nt (32 lanes, 4): lane's rows row0,
    row0 + 8 and keys key0, key0 + 1 share one Philox call; element e takes word e."""
    p, seed = drop
    w = philox4x32_10([key0 >> 1, row0, np.full(32, h), np.full(32, b)], seed & 0xFFFFFFFF, seed >> 32)
    scale = np.float32(1.0 / (1.0 - p))
    for e in range(4):
        s_nt[:, e] = np.where(w[e] >= threshold(p), s_nt[:, e] * scale, np.float32(0))


def keep_matrix(drop, b, h, T):
    """The dropout definition element by element (mslt_kernels::philox::keep): (T, T) of 0 or
    1 / (1 - p), for the reference."""
    p, seed = drop
    i, j = np.meshgrid(np.arange(T), np.arange(T), indexing="ij")
    w = philox4x32_10([j >> 1, i & ~8, np.full_like(i, h), np.full_like(i, b)], seed & 0xFFFFFFFF, seed >> 32)
    word = np.choose(((i >> 3) & 1) * 2 + (j & 1), w)
    return np.where(word >= threshold(p), 1.0 / (1.0 - p), 0.0)

class KV:
    """The kernels' key side: which tiles are live (bit j: tile j < 32 has a key that is not
    padding), the next processed tile, and the double-buffered K/V/mask tiles in shared memory."""

    def __init__(self, base, mrow, T, C, BK, DPK, dtype):
        self.base, self.mrow, self.T, self.C, self.BK = base, mrow, T, C, BK
        self.ntiles = (T + BK - 1) // BK
        self.live = 0
        for j in range(min(self.ntiles, 32)):
            if np.any(mrow[j * BK:min((j + 1) * BK, T)] > PAD_MASK):
                self.live |= 1 << j
        self.K = np.zeros((2, BK, DPK), dtype)
        self.V = np.zeros((2, BK, DPK), dtype)
        self.M = np.zeros((2, BK), np.float32)

    def next_live(self, j):
        if self.live == 0:  # only padding keys: nothing is skipped
            return j
        while j < self.ntiles and j < 32 and not (self.live >> j) & 1:
            j += 1
        return j

    def load(self, jt, bf):
        C, T = self.C, self.T
        for r in range(self.BK):
            k = jt * self.BK + r
            self.K[bf, r, :D] = self.base[k, C:C + D] if k < T else 0
            self.V[bf, r, :D] = self.base[k, 2 * C:2 * C + D] if k < T else 0
            # mask * log2(e), clamped to -FLT_MAX, as the kernels' LOAD_KV_TILE
            self.M[bf, r] = max(np.float32(self.mrow[k]) * np.float32(LOG2E), -FLT_MAX) if k < T else -np.inf

    def tiles(self):
        """Yields (tile, buffer) in the kernels' order, loading the next live tile first."""
        j, buf = self.next_live(0), 0
        if j < self.ntiles:
            self.load(j, 0)
        while j < self.ntiles:
            jn = self.next_live(j + 1)
            if jn < self.ntiles:
                self.load(jn, buf ^ 1)  # the kernel's cp.async into the other buffer
            yield j, buf
            buf ^= 1
            j = jn


def new_state(row0):
    return dict(row0=row0, o=np.zeros((8, 32, 4), np.float32), m0=np.full(32, -np.inf, np.float32),
                m1=np.full(32, -np.inf, np.float32), l0=np.zeros(32, np.float32), l1=np.zeros(32, np.float32))


def online_softmax(st, s, ms, sl2):
    """Scores s (n-tiles, 32, 4) of one key tile -> probabilities in place; updates the running
    max, the per-lane sums and rescales the output (the kernels' base-2 online softmax)."""
    mx0 = np.full(32, -np.inf, np.float32)
    mx1 = np.full(32, -np.inf, np.float32)
    for nt in range(s.shape[0]):
        for e in range(2):
            mk = ms[nt * 8 + Q4 * 2 + e]
            # fmaf: one rounding (exact product and sum in float64, then rounded to f32)
            s[nt][:, e] = (s[nt][:, e].astype(np.float64) * sl2 + mk).astype(np.float32)
            s[nt][:, 2 + e] = (s[nt][:, 2 + e].astype(np.float64) * sl2 + mk).astype(np.float32)
            mx0 = np.maximum(mx0, s[nt][:, e])
            mx1 = np.maximum(mx1, s[nt][:, 2 + e])
    mx0, mx1 = quad(mx0, np.maximum), quad(mx1, np.maximum)
    mn0, mn1 = np.maximum(st["m0"], mx0), np.maximum(st["m1"], mx1)
    mu0 = np.where(mn0 == -np.inf, 0, mn0).astype(np.float32)
    mu1 = np.where(mn1 == -np.inf, 0, mn1).astype(np.float32)
    c0, c1 = np.exp2(st["m0"] - mu0), np.exp2(st["m1"] - mu1)
    s[:, :, 0:2] = np.exp2(s[:, :, 0:2] - mu0[None, :, None])
    s[:, :, 2:4] = np.exp2(s[:, :, 2:4] - mu1[None, :, None])
    st["l0"] = st["l0"] * c0 + s[:, :, 0:2].sum((0, 2))
    st["l1"] = st["l1"] * c1 + s[:, :, 2:4].sum((0, 2))
    st["m0"], st["m1"] = mn0, mn1
    st["o"][:, :, 0:2] *= c0[None, :, None]
    st["o"][:, :, 2:4] *= c1[None, :, None]


def finish(states, BQ, q0, T, rnd):
    """o / l per row, rounded by `rnd`, into (BQ, D) (NaN beyond T)."""
    out = np.full((BQ, D), np.nan, np.float32)
    for st in states:
        l0, l1 = quad(st["l0"], np.add), quad(st["l1"], np.add)
        r0 = st["row0"] + G
        ok0, ok1 = q0 + r0 < T, q0 + r0 + 8 < T
        for nt in range(8):
            for e in range(2):
                col = nt * 8 + Q4 * 2 + e
                out[r0[ok0], col[ok0]] = rnd(st["o"][nt][:, e] / l0)[ok0]
                out[r0[ok1] + 8, col[ok1]] = rnd(st["o"][nt][:, 2 + e] / l1)[ok1]
    return out


def block(qkv, mask, b, h, q0, H, scale, MT, NW=4, drop=None):
    """attention_fa2<MT, NW>, one thread block: rows q0 .. q0 + BQ of (b, h). Returns out rows
    (BQ, D) (NaN beyond T) and the key tiles processed. With NW = 8 the Q tile lies over the two
    K buffers (ALIAS_Q): it is read into the fragments before the first K/V tile overwrites it."""
    BQ, BK = 16 * NW * MT, 64 // MT
    T = qkv.shape[1]
    C = H * D
    base = qkv[b][:, h * D:]  # row k: q at [0:D], k at [C:C+D], v at [2C:2C+D]
    sl2 = np.float32(scale * LOG2E)
    kv = KV(base, mask[b], T, C, BK, DP, np.float32)
    if NW == 8:
        assert BQ == 2 * BK
        Qs = kv.K.reshape(2 * BK, DP)  # a view: the same memory as Ks[0], Ks[1]
        Qs[:] = 0
    else:
        Qs = np.zeros((BQ, DP), np.float32)
    for r in range(BQ):
        if q0 + r < T:
            Qs[r, :D] = base[q0 + r, 0:D]
    warps = []  # one state per (warp, m-tile): rows (w MT + mt) 16 + {g, g + 8}
    for w in range(NW):
        for mt in range(MT):
            st = new_state((w * MT + mt) * 16)
            st["qa"] = [ldsm_x4(Qs, st["row0"] + (LM & 1) * 8 + LR, ks * 16 + (LM >> 1) * 8) for ks in range(4)]
            warps.append(st)
    processed = []
    for j, buf in kv.tiles():
        processed.append(j)
        fa2_tile(warps, kv.K[buf], kv.V[buf], kv.M[buf], BK, sl2, q0, j, h, b, drop)
    return finish(warps, BQ, q0, T, bf16), processed


def fa2_tile(warps, Kt, Vt, ms, BK, sl2, q0, j, h, b, drop):
    """The kernels' fa2_tile for every (warp, m-tile) state: S = Q K^T on key tile j (Kt, Vt,
    mask * log2(e) ms), then fa2_softmax_pv."""
    NKT = BK // 8
    for st in warps:
        s = np.zeros((NKT, 32, 4), np.float32)
        for nt in range(NKT):
            for p in range(2):
                kb = ldsm_x4(Kt, nt * 8 + LR, p * 32 + LM * 8)
                s[nt] = mma(s[nt], st["qa"][2 * p], kb[:, 0], kb[:, 1])
                s[nt] = mma(s[nt], st["qa"][2 * p + 1], kb[:, 2], kb[:, 3])
        softmax_pv(st, s, Vt, ms, BK, sl2, q0, j, h, b, drop)


def softmax_pv(st, s, Vt, ms, BK, sl2, q0, j, h, b, drop):
    """The kernels' fa2_softmax_pv for one warp's state: the online softmax of the scores s,
    dropout, O += P V."""
    pas = softmax_pack(st, s, ms, BK, sl2, q0, j, h, b, drop)
    for kk, pa in enumerate(pas):
        for np_ in range(4):
            vb = ldsm_x4(Vt, kk * 16 + (LM & 1) * 8 + LR, (2 * np_ + (LM >> 1)) * 8, trans=True)
            st["o"][2 * np_] = mma(st["o"][2 * np_], pa, vb[:, 0], vb[:, 1])
            st["o"][2 * np_ + 1] = mma(st["o"][2 * np_ + 1], pa, vb[:, 2], vb[:, 3])


def softmax_pack(st, s, ms, BK, sl2, q0, j, h, b, drop):
    """The online softmax of the scores s, dropout, and P packed to bf16 as the mma A fragments
    of each k-step of 16 keys: a list of (32 lanes, 4 registers, 2) arrays."""
    online_softmax(st, s, ms, sl2)
    pas = []
    for kk in range(BK // 16):
        if drop is not None:  # the V2 kernels' dropout: per k-step, before packing
            for half in range(2):
                drop4(s[2 * kk + half], drop, q0 + st["row0"] + G, j * BK + kk * 16 + half * 8 + 2 * Q4, h, b)
        pa = np.zeros((32, 4, 2), np.float32)
        pa[:, 0] = bf16(s[2 * kk][:, 0:2])
        pa[:, 1] = bf16(s[2 * kk][:, 2:4])
        pa[:, 2] = bf16(s[2 * kk + 1][:, 0:2])
        pa[:, 3] = bf16(s[2 * kk + 1][:, 2:4])
        pas.append(pa)
    return pas


MAXT = 512  # FA2P_MAXT


def pre_setup(qkv, mask, b, h, H, scale, BK):
    """What attention_fa2p and attention_fa2wg set up for (batch b, head h), T <= MAXT: T, C,
    the head's columns of qkv, the mask row, scale * log2(e) and the number of key tiles."""
    T = qkv.shape[1]
    assert T <= MAXT
    return T, H * D, qkv[b][:, h * D:], mask[b], np.float32(scale * LOG2E), (T + BK - 1) // BK


def mask_row_live(mrow, T, NW, NTH, BK):
    """mask_row_live<NTH, BK, PW>: each thread's keys tid + i NTH of the mask row scaled into Mrow
    (mask * log2(e), clamped to -FLT_MAX; -inf beyond T), the live-tile bits (a key that is not
    padding) and the not-plain bits (a key at or beyond T, or a mask value other than 0),
    OR-reduced per warp (__reduce_or_sync, lane 0 -> Lw[w] / Pw[w]) and then over warps."""
    Mrow = np.full(MAXT, np.nan, np.float32)
    live = notplain = 0
    for w in range(NW):
        lw = pw = 0
        for lane in range(32):
            for i in range(MAXT // NTH):
                k = w * 32 + lane + i * NTH
                v = np.float32(mrow[k]) if k < T else np.float32(0)
                if k < T and v > PAD_MASK:
                    lw |= 1 << (k // BK)
                if not (k < T and v == 0):
                    pw |= 1 << (k // BK)
                Mrow[k] = max(v * np.float32(LOG2E), -FLT_MAX) if k < T else -np.inf
        live, notplain = live | lw, notplain | pw
    assert not np.isnan(Mrow).any()
    return Mrow, live, notplain


def run_intervals(ops, poison, land):
    """Runs a block's schedule of shared-memory events as the hardware may order them. ops, in
    program order (the same for every thread): ("issue", target) a cp.async into target,
    ("commit",), ("wait", n) cp.async.wait_group n, ("bar",) __syncthreads, ("do", fn) reads of
    shared memory (fn()). Between two barriers the threads' events interleave in any order, and a
    cp.async lands at any time from its issue until the wait for its group, visibly to every
    thread after the barrier that follows that wait. So every target of a copy in flight during an
    interval (issued in it or before, not yet landed) is poisoned (NaN) when the interval starts,
    and a group waited for is written (land) at the next barrier. A read of a buffer a copy may
    still write, or of one not yet visible, then reads NaN: the output is NaN and the case fails."""
    groups, cur, done, inflight = [], [], [], []
    intervals, iv = [], []
    for op in ops:
        iv.append(op)
        if op[0] == "bar":
            intervals.append(iv)
            iv = []
    intervals.append(iv)
    for iv in intervals:
        inflight += [op[1] for op in iv if op[0] == "issue"]
        for t in inflight:
            poison(t)
        for op in iv:
            if op[0] == "issue":
                cur.append(op[1])
            elif op[0] == "commit":
                groups.append(cur)
                cur = []
            elif op[0] == "wait":
                while len(groups) > op[1]:
                    done.extend(groups.pop(0))
            elif op[0] == "do":
                op[1]()
            elif op[0] == "bar":
                for t in done:
                    land(t)
                    inflight.remove(t)
                done = []


def block_pre(qkv, mask, b, h, q0, H, scale, NW, drop=None, neg=None, b1=False):
    """attention_fa2p<NW> (attention_fwd_bf16_d64_fa2_v3, NW = 4; _w8v3 and _w8v4, NW = 8; with
    b1, _w8v5: one barrier per key tile), one block, its copies and barriers run by run_intervals:
    the Q tile and key tile 0 (buffer 0) requested together, with NW = 8 the Q tile over buffer 1
    (its K and V rows, one view of the same memory); the mask row scaled into Mrow by each
    thread's MPT keys, the live bits OR-reduced per warp then over warps; key tile 0 always
    processed, then the live tiles, the next one loaded into the other buffer (before the wait
    and barrier, with a second barrier after the tile; with b1 after them). neg: a negative
    control, "tile0_buf1" (tile 0 loaded into buffer 1), "tile1_before_q" (tile 1 loaded into
    buffer 1 before the Q fragments are read: over the Q tile with NW = 8) or, with b1,
    "b1_early" (the next tile requested before the wait and barrier, as without b1, but with no
    second barrier) or "b1_wait1" (waiting for all but the newest group, which is the tile)."""
    BQ, BK, NTH = 16 * NW, 64, 32 * NW
    T, C, base, mrow, sl2, ntiles = pre_setup(qkv, mask, b, h, H, scale, BK)
    KV = np.full((2, 2, BK, DP), np.nan, np.float32)  # [buffer][K, V]; NaN: never written
    Qs = KV[1].reshape(2 * BK, DP) if NW == 8 else np.full((BQ, DP), np.nan, np.float32)
    assert NW != 8 or np.shares_memory(Qs, KV[1])

    def land(t):  # what the copy into target t writes: ("q",) or (key tile jt, buffer bf)
        if t[0] == "q":
            for r in range(BQ):
                Qs[r, :D] = base[q0 + r, 0:D] if q0 + r < T else 0
            return
        jt, bf = t
        for r in range(BK):  # LOAD_KV_TILE_P
            k = jt * BK + r
            KV[bf, 0, r, :D] = base[k, C:C + D] if k < T else 0
            KV[bf, 1, r, :D] = base[k, 2 * C:2 * C + D] if k < T else 0

    def poison(t):
        if t[0] == "q":
            Qs[:, :D] = np.nan
        else:
            KV[t[1], :, :, :D] = np.nan

    Mrow, live, _ = mask_row_live(mrow, T, NW, NTH, BK)
    warps = [new_state(w * 16) for w in range(NW)]

    def read_q():
        for st in warps:
            st["qa"] = [ldsm_x4(Qs, st["row0"] + (LM & 1) * 8 + LR, ks * 16 + (LM >> 1) * 8) for ks in range(4)]

    def tile(j, buf):
        return lambda: fa2_tile(warps, KV[buf, 0], KV[buf, 1], Mrow[j * BK:(j + 1) * BK], BK, sl2, q0, j, h, b, drop)

    # the prologue: Q (group 1) and key tile 0 (group 2) requested together, then Q waited for
    ops = [("issue", ("q",)), ("commit",), ("issue", (0, 1 if neg == "tile0_buf1" else 0)), ("commit",)]
    if neg == "tile1_before_q" and ntiles > 1:
        ops += [("issue", (1, 1)), ("commit",)]
    ops += [("wait", 1), ("bar",), ("do", read_q)]
    if NW == 8 and not b1:
        ops.append(("bar",))  # every warp has its Q fragments before tile 1 lands in buffer 1
    kv = KV_live(live, ntiles)
    processed, j, buf = [], 0, 0
    while j < ntiles:
        jn = kv.next_live(j + 1)
        load = ([("issue", (jn, buf ^ 1))] if jn < ntiles else []) + [("commit",)]
        if b1 and neg != "b1_early":
            ops += [("wait", 1 if neg == "b1_wait1" else 0), ("bar",)] + load
        elif b1:
            ops += load + [("wait", 1), ("bar",)]
        else:
            ops += load + [("wait", 1), ("bar",)]
        ops.append(("do", tile(j, buf)))
        if not b1:
            ops.append(("bar",))  # tile j consumed before its buffer is refilled
        processed.append(j)
        buf ^= 1
        j = jn
    run_intervals(ops, poison, land)
    return finish(warps, BQ, q0, T, bf16), processed


class KV_live(KV):
    """next_live on given live bits."""

    def __init__(self, live, ntiles):
        self.live, self.ntiles = live, ntiles


def wg_core(r, c8):
    """WG_CORE: element offset of row r, head dims 8 c8 .. 8 c8 + 7 in a 64 x 64 core-matrix tile."""
    return ((r >> 3) * 8 + c8) * 64 + (r & 7) * 8


def wg_desc(addr):
    """wg_desc: no-swizzle matrix descriptor for the shared-memory byte address addr."""
    return ((addr & 0x3FFFF) >> 4) | ((128 >> 4) << 16) | ((1024 >> 4) << 32)


def acc_rc(w, nt, e):
    """(rows, columns) of accumulator register 4 nt + e of warp w's 32 lanes in a 64 x N wgmma
    result: mma.sync's m16n8 layout, warp w on rows 16 w .. 16 w + 15 (CUTLASS's CLayout_64xN)."""
    return 16 * w + G + 8 * (e // 2), 8 * nt + 2 * Q4 + (e % 2)


def wgmma_ss(smem, da, db, s, scale_d):
    """wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 with A (64 x 16) and B (64 x 16, the
    N x K form of K-major B) read from smem (2-byte elements) through no-swizzle K-major
    descriptors, as the PTX ISA defines them (checked on hardware by the MMA-Sim tests): element
    (row r, k) at start + (r / 8) SBO + (k / 8) LBO + (r % 8) 16 + (k % 8) 2 bytes. s: the
    accumulators of the 4 warps, (4, 8 n-tiles, 32 lanes, 4), mma.sync's layout per warp."""
    def operand(desc):
        assert desc >> 62 == 0, "no swizzle"
        start, lbo, sbo = (desc & 0x3FFF) << 4, ((desc >> 16) & 0x3FFF) << 4, ((desc >> 32) & 0x3FFF) << 4
        r, k = np.meshgrid(np.arange(64), np.arange(16), indexing="ij")
        byte = start + (r // 8) * sbo + (k // 8) * lbo + (r % 8) * 16 + (k % 8) * 2
        return smem[byte // 2].astype(np.float64)
    A, B = operand(da), operand(db)
    D = A @ B.T
    for w in range(4):
        for nt in range(8):
            for e in range(4):
                acc = s[w, nt, :, e].astype(np.float64) if scale_d else 0.0
                s[w, nt, :, e] = (D[acc_rc(w, nt, e)] + acc).astype(np.float32)


def wg_desc_v(addr):
    """wg_desc_v: no-swizzle descriptor of a V tile as the N-major B operand (LBO 1024, SBO 128)."""
    return ((addr & 0x3FFFF) >> 4) | ((1024 >> 4) << 16) | ((128 >> 4) << 32)


def wgmma_rs(smem, pas, dv, states):
    """wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 with A (64 x 16) from registers (warp
    w: rows 16 w .. 16 w + 15 in the mma.sync A fragment layout, pas[w]) and B (16 x 64, N-major,
    imm-trans-b 1) from smem through a no-swizzle descriptor: the PTX ISA's canonical MN-major
    layout ((T,1,m),(8,k)):((1,T,SBO),(1T,LBO)), T = 8 bf16: element (k, n) at start +
    (n / 8) SBO + (k / 8) LBO + (k % 8) 16 + (n % 8) 2 bytes. Adds A B to each warp's o."""
    wgmma_rs_n(smem, pas, dv, [st["o"] for st in states], True, 64, 1)


def block_wg(qkv, mask, b, h, q0, H, scale, drop=None, neg=None, pv=False):
    """attention_fa2wg<PV> (attention_fwd_bf16_d64_fa2_wg, _wg2 with pv), one block: as block_pre
    with NW = 4, but the Q tile and the K tiles stored in the core-matrix layout (WG_CORE) of one
    shared-memory array, and S = Q K^T by four wgmma k-steps through descriptors; with pv the V
    tiles too, and O += P V by four wgmma k-steps with P from registers. neg: a negative control,
    "desc_lbo_sbo" (Q/K descriptors with LBO and SBO swapped) or "desc_v" (V read through K's
    K-major descriptor and k-step)."""
    BQ, BK, NTH, NW = 64, 64, 128, 4
    T, C, base, mrow, sl2, ntiles = pre_setup(qkv, mask, b, h, H, scale, BK)
    # Qc at byte 0, Kc at 8192 / 16384, Vc (pv) at 24576 / 32768; NaN past them (a wrong descriptor reads it)
    smem = np.full(32768, np.nan, np.float32)
    QC, KC, VC = 0, (8192, 16384), (24576, 32768)
    Vs = np.full((2, BK, DP), np.nan, np.float32)

    def load(jt, bf):  # load_kv
        for r in range(BK):
            k = jt * BK + r
            for c8 in range(8):
                smem[KC[bf] // 2 + wg_core(r, c8):][:8] = base[k, C + 8 * c8:C + 8 * c8 + 8] if k < T else 0
                if pv:
                    smem[VC[bf] // 2 + wg_core(r, c8):][:8] = base[k, 2 * C + 8 * c8:2 * C + 8 * c8 + 8] if k < T else 0
            if not pv:
                Vs[bf, r, :D] = base[k, 2 * C:2 * C + D] if k < T else 0

    for r in range(BQ):
        for c8 in range(8):
            smem[QC // 2 + wg_core(r, c8):][:8] = base[q0 + r, 8 * c8:8 * c8 + 8] if q0 + r < T else 0
    load(0, 0)
    Mrow = np.full(MAXT, np.nan, np.float32)
    live = 0
    for k in range(MAXT):
        v = np.float32(mrow[k]) if k < T else np.float32(0)
        if k < T and v > PAD_MASK:
            live |= 1 << (k // BK)
        Mrow[k] = max(v * np.float32(LOG2E), -FLT_MAX) if k < T else -np.inf
    warps = [new_state(w * 16) for w in range(NW)]
    desc = wg_desc
    if neg == "desc_lbo_sbo":
        desc = lambda a: ((a & 0x3FFFF) >> 4) | ((1024 >> 4) << 16) | ((128 >> 4) << 32)
    kv = KV_live(live, ntiles)
    processed, j, buf = [], 0, 0
    while j < ntiles:
        jn = kv.next_live(j + 1)
        if jn < ntiles:
            load(jn, buf ^ 1)
        processed.append(j)
        s = np.zeros((NW, 8, 32, 4), np.float32)
        for ks in range(4):
            wgmma_ss(smem, desc(QC) + 16 * ks, desc(KC[buf]) + 16 * ks, s, ks > 0)
        if pv:
            pas = [softmax_pack(st, s[w], Mrow[j * BK:(j + 1) * BK], BK, sl2, q0, j, h, b, drop)
                   for w, st in enumerate(warps)]
            # the negative control reads V as if it were K-major (K's descriptor and k-step)
            dv, step = (wg_desc_v(VC[buf]), 128) if neg != "desc_v" else (wg_desc(VC[buf]), 16)
            for kk in range(4):
                wgmma_rs(smem, [p[kk] for p in pas], dv + step * kk, warps)
        else:
            for w, st in enumerate(warps):
                softmax_pv(st, s[w], Vs[buf], Mrow[j * BK:(j + 1) * BK], BK, sl2, q0, j, h, b, drop)
        buf ^= 1
        j = jn
    return finish(warps, BQ, q0, T, bf16), processed


def wg_core_v(r, c8):
    """WG_CORE_V: element offset of key r, columns 8 c8 .. 8 c8 + 7 in a 64 x 72 V tile (8-key groups
    adjacent, then the 9 column groups)."""
    return (c8 * 8 + (r >> 3)) * 64 + (r & 7) * 8


def wg_desc_vt(addr):
    """wg_desc_vt: no-swizzle descriptor of a WG_CORE_V tile as the N-major B operand (LBO 128, SBO 1024)."""
    return ((addr & 0x3FFFF) >> 4) | ((128 >> 4) << 16) | ((1024 >> 4) << 32)


def a_matrix(qas):
    """The 64 x 16 A operand a warpgroup holds in registers: warp w's mma.sync A fragment qas[w]
    (32 lanes, 4 registers, 2) on rows 16 w .. 16 w + 15."""
    A = np.zeros((64, 16))
    for w, pa in enumerate(qas):
        for e in range(2):
            A[16 * w + G, 2 * Q4 + e] = pa[:, 0, e]
            A[16 * w + G + 8, 2 * Q4 + e] = pa[:, 1, e]
            A[16 * w + G, 2 * Q4 + 8 + e] = pa[:, 2, e]
            A[16 * w + G + 8, 2 * Q4 + 8 + e] = pa[:, 3, e]
    return A


def wgmma_rs_n(smem, qas, desc, acc, scale_d, n, trans_b):
    """wgmma.mma_async.sync.aligned.m64n{n}k16.f32.bf16.bf16 with A from registers (a_matrix) and B
    from smem through a no-swizzle descriptor: K-major (trans_b 0: element (n, k) at start +
    (n / 8) SBO + (k / 8) LBO + (n % 8) 16 + (k % 8) 2 bytes) or N-major (trans_b 1: element (k, n)
    at start + (n / 8) SBO + (k / 8) LBO + (k % 8) 16 + (n % 8) 2). acc: the 4 warps'
    accumulators (4, n / 8, 32, 4); scale_d 0 overwrites them."""
    assert desc >> 62 == 0, "no swizzle"
    start, lbo, sbo = (desc & 0x3FFF) << 4, ((desc >> 16) & 0x3FFF) << 4, ((desc >> 32) & 0x3FFF) << 4
    k, nn = np.meshgrid(np.arange(16), np.arange(n), indexing="ij")
    if trans_b:
        byte = start + (nn // 8) * sbo + (k // 8) * lbo + (k % 8) * 16 + (nn % 8) * 2
    else:
        byte = start + (nn // 8) * sbo + (k // 8) * lbo + (nn % 8) * 16 + (k % 8) * 2
    B = smem[byte // 2].astype(np.float64)  # (16, n)
    D = a_matrix(qas) @ B
    for w in range(4):
        for nt in range(n // 8):
            for e in range(4):
                prev = acc[w][nt][:, e].astype(np.float64) if scale_d else 0.0
                acc[w][nt][:, e] = (D[acc_rc(w, nt, e)] + prev).astype(np.float32)


def softmax_wgp(st, s, ms, sl2, plain, sums):
    """softmax_wgp: the scores s (8 n-tiles, 32, 4) -> probabilities relative to the rows'
    reference maxima, which move only when a tile's maximum exceeds them by more than 8; plain:
    no mask, the maximum of the raw scores scaled after; sums: the lanes' row sums here. Returns
    the factors (c0, c1) of o (1 where the reference stayed)."""
    f32 = np.float32
    if not plain:
        for nt in range(8):
            for e in range(2):
                mk = ms[nt * 8 + Q4 * 2 + e]
                s[nt][:, e] = (s[nt][:, e].astype(np.float64) * sl2 + mk).astype(f32)
                s[nt][:, 2 + e] = (s[nt][:, 2 + e].astype(np.float64) * sl2 + mk).astype(f32)
    mx0, mx1 = quad(s[:, :, 0:2].max((0, 2)), np.maximum), quad(s[:, :, 2:4].max((0, 2)), np.maximum)
    if plain:
        mx0, mx1 = (mx0 * sl2).astype(f32), (mx1 * sl2).astype(f32)
    out = []
    for half, mx, key in ((slice(0, 2), mx0, "0"), (slice(2, 4), mx1, "1")):
        m = st["m" + key]
        mn = np.where(mx > (m + f32(8)).astype(f32), mx, m).astype(f32)
        mu = np.where(mn == -np.inf, 0, mn).astype(f32)
        c = np.where(mn == m, f32(1), np.exp2(m - mu)).astype(f32)
        if plain:  # ex2(fma(s, sl2, -mu))
            s[:, :, half] = np.exp2((s[:, :, half].astype(np.float64) * sl2 - mu[None, :, None]).astype(f32))
        else:
            s[:, :, half] = np.exp2(s[:, :, half] - mu[None, :, None])
        if sums:
            st["l" + key] = (st["l" + key] * c + s[:, :, half].sum((0, 2))).astype(f32)
        st["m" + key] = mn
        out.append(c)
    return out


def block_wgp(qkv, mask, b, h, q0, H, scale, NWG, drop=None, neg=None, stats=None, early=False):
    """attention_fa2wgp<NWG> (attention_fwd_bf16_d64_fa2_wg3, NWG = 2; _wg4, NWG = 1), one block,
    its copies and barriers run by run_intervals: K ([K0][V0][K1][V1], WG_CORE) and V (WG_CORE_V,
    9 column groups, the ninth all zeros but column 64, all ones) in one shared array; the Q tile
    over K1 and V1's first 64 columns, requested with K and V of tile 0; K of the next live tile
    requested after the barrier that starts an iteration, and V of this tile (from the third on;
    the second tile's V in the first iteration, into V1); S_j = Q K_j^T (Q from registers) and O += P_{j-1} V_{j-1}
    (m64n72k16 with the ones column: the row sums; m64n64k16 and f32 sums with dropout) read
    shared memory in the same interval as those copies; the reference maxima that move by more
    than 8 only, the plain-tile softmax. neg: a negative control, "v_same_buf" (V of the third and
    later tiles into the buffer P V reads), "no_ones" (the ones column never written) or "v1_early"
    (V of the second tile requested with the Q tile, over it), or with early "early_k1_buf0" (K of
    tile 1 requested into the buffer tile 0 is read from). stats: a dict counting the plain tiles
    and the warps' rescalings. early (attention_fwd_bf16_d64_fa2_wg3e, NWG = 2; _wg4e, NWG = 1): the
    Q tile in a buffer of its own (the launch's dynamic shared memory), K and V of tile 1 requested in the prologue as a second group, the block's
    first waits for the first group only; tile 1 processed whatever its mask."""
    BQ, BK, NTH, NW = 64 * NWG, 64, 128 * NWG, 4 * NWG
    TK, TV = BK * D, BK * 72
    TB = TK + TV
    T, C, base, mrow, sl2, ntiles = pre_setup(qkv, mask, b, h, H, scale, BK)
    ones = drop is None
    # + 64: a descriptor one past the end reads NaN; early: the Q tile's own buffer after that
    smem = np.full(2 * TB + 64 + (BQ * D if early else 0), np.nan, np.float32)
    kofs = lambda bf: bf * TB
    vofs = lambda bf: bf * TB + TK
    QOFS = 2 * TB + 64 if early else TB  # the Q tile over K1 and V1's columns 0-63 (or its own)

    def tile_rows(t):
        """(element of smem, row of qkv, its first column) of each chunk a copy target writes, by
        the kernel's load_tile_wg: thread tid's chunk it is row r0 + it NTH / 8, columns 8 c8 ..,
        at d0 + it (NTH / 64) (8 or 1) 64 elements."""
        kind, jt, bf = t
        n, dst, row0, col, vl = {"q": (BQ, QOFS, q0, 0, False), "k": (BK, kofs(bf), jt * BK, C, False),
                                 "v": (BK, vofs(bf), jt * BK, 2 * C, True)}[kind]
        out = []
        for tid in range(NTH):
            r0, c8 = (tid & 7) | ((tid >> 6) << 3), (tid >> 3) & 7
            d0 = dst + (wg_core_v(r0, c8) if vl else wg_core(r0, c8))
            for it in range(n * 8 // NTH):
                out.append((d0 + it * (NTH // 64) * (1 if vl else 8) * 64, row0 + r0 + it * (NTH // 8), col + 8 * c8))
        assert len({e for e, _, _ in out}) == n * 8, "every chunk of the tile once"
        return out

    def land(t):
        for e, row, col in tile_rows(t):
            smem[e:e + 8] = base[row, col:col + 8] if row < T else 0

    def poison(t):
        for e, _, _ in tile_rows(t):
            smem[e:e + 8] = np.nan

    def write_ones():  # threads tid < 128: st.shared.v4.b32 {0x3F80, 0, 0, 0} (bf16 1.0 in the low half)
        for tid in range(128):
            bfo, k = tid >> 6, tid & 63
            e = bfo * TB + TK + wg_core_v(k, 8)
            words = np.array([0x3F80, 0, 0, 0], np.uint32)
            smem[e:e + 8] = (words.view(np.uint16).astype(np.uint32) << 16).view(np.float32)

    Mrow, live, notplain = mask_row_live(mrow, T, NW, NTH, BK)  # mask_row_live<NTH, BK, true>
    if not sl2 > 0:
        notplain = ~0
    wgs = [[dict(m0=np.full(32, -np.inf, np.float32), m1=np.full(32, -np.inf, np.float32),
                 l0=np.zeros(32, np.float32), l1=np.zeros(32, np.float32), o=np.zeros((9, 32, 4), np.float32),
                 row0=16 * (4 * wg + w)) for w in range(4)] for wg in range(NWG)]
    warps = [st for g in wgs for st in g]
    state = dict(pending=False, s=None)

    def read_q():
        for st in warps:
            st["qa"] = [ldsm_x4_core(smem, QOFS, st["row0"], ks) for ks in range(4)]

    def top():  # the wait for P V, the rescaling, P packed
        for st in warps:
            if np.any(st["c0"] != 1) or np.any(st["c1"] != 1):  # __any_sync over the warp
                if stats is not None:
                    stats["rescales"] = stats.get("rescales", 0) + 1
                st["o"][:9 if ones else 8, :, 0:2] *= st["c0"][None, :, None]
                st["o"][:9 if ones else 8, :, 2:4] *= st["c1"][None, :, None]
            s = st["s"]
            pa = []
            for kk in range(4):
                x = np.zeros((32, 4, 2), np.float32)
                x[:, 0], x[:, 1] = bf16(s[2 * kk][:, 0:2]), bf16(s[2 * kk][:, 2:4])
                x[:, 2], x[:, 3] = bf16(s[2 * kk + 1][:, 0:2]), bf16(s[2 * kk + 1][:, 2:4])
                pa.append(x)
            st["pa"] = pa

    # the descriptors as the kernel forms them: buffer 0's, plus DBUF (TB * 2 / 16) per buffer
    dk0, dv0, DBUF = wg_desc(0), wg_desc_vt(2 * TK), TB // 8
    assert dk0 + DBUF == wg_desc(2 * kofs(1)) and dv0 + DBUF == wg_desc_vt(2 * vofs(1))

    def compute(j, bf, pending):
        for g in wgs:
            s = [np.zeros((8, 32, 4), np.float32) for _ in range(4)]
            for ks in range(4):  # S_j = Q K_j^T: A = Q's fragments, B = K[bf] (K-major, LBO 128, SBO 1024)
                wgmma_rs_n(smem, [st["qa"][ks] for st in g], dk0 + bf * DBUF + 16 * ks, s, ks > 0, 64, 0)
            if pending:  # O += P_{j-1} V_{j-1}: V[bf ^ 1]
                o = [st["o"] for st in g]
                for kk in range(4):
                    wgmma_rs_n(smem, [st["pa"][kk] for st in g], dv0 + (bf ^ 1) * DBUF + 16 * kk, o, True,
                               72 if ones else 64, 1)
            plain = not (notplain >> j) & 1
            if stats is not None and plain:
                stats["plain"] = stats.get("plain", 0) + 1
            for w, st in enumerate(g):
                st["c0"], st["c1"] = softmax_wgp(st, s[w], Mrow[j * BK:(j + 1) * BK], sl2, plain, not ones)
                if drop is not None:
                    for nt in range(8):
                        drop4(s[w][nt], drop, q0 + st["row0"] + G, j * BK + nt * 8 + 2 * Q4, h, b)
                st["s"] = s[w]

    def last_pv(bf):
        for g in wgs:
            o = [st["o"] for st in g]
            for kk in range(4):
                wgmma_rs_n(smem, [st["pa"][kk] for st in g], dv0 + bf * DBUF + 16 * kk, o, True,
                           72 if ones else 64, 1)

    kv = KV_live(live, ntiles)
    # the Q tile, K and V of key tile 0 (always processed) in the prologue
    ops = [("issue", ("q", 0, 0)), ("issue", ("k", 0, 0)), ("issue", ("v", 0, 0))]
    if neg == "v1_early" and kv.next_live(1) < ntiles:
        ops.append(("issue", ("v", kv.next_live(1), 1)))  # over the Q tile, before it is read
    ops.append(("commit",))
    if early:  # K and V of tile 1 into K1, V1: a second group
        if ntiles > 1:
            ops += [("issue", ("k", 1, 0 if neg == "early_k1_buf0" else 1)), ("issue", ("v", 1, 1))]
        ops.append(("commit",))
    if neg != "no_ones":
        ops.append(("do", write_ones))
    ops += [("wait", 1 if early else 0), ("bar",), ("do", read_q)]
    processed, j, bf, pending, pos = [], 0, 0, False, 0
    while True:
        if pending:
            ops.append(("do", top))
        first = early and pos == 0
        ops += [("wait", 1 if first else 0), ("bar",)]
        if j >= ntiles:
            break
        jn = (1 if ntiles > 1 else ntiles) if first else kv.next_live(j + 1)
        if jn < ntiles and not first:
            ops.append(("issue", ("k", jn, bf ^ 1)))
        # V of this tile into V[bf] from the third tile on; the second tile's into V[1] now
        if pos >= 2:
            ops.append(("issue", ("v", j, bf ^ 1 if neg == "v_same_buf" else bf)))
        elif pos == 0 and jn < ntiles and neg != "v1_early" and not early:
            ops.append(("issue", ("v", jn, 1)))
        ops.append(("commit",))
        ops.append(("do", lambda j=j, bf=bf, p=pending: compute(j, bf, p)))
        processed.append(j)
        pending, bf, j, pos = True, bf ^ 1, jn, pos + 1
    ops.append(("do", lambda bf=bf: last_pv(bf ^ 1)))
    run_intervals(ops, poison, land)
    if ones:  # the row sums: column 64 (lane q4 = 0's o[8][0], o[8][2]; summed over the quad)
        for st in warps:
            st["l0"] = np.where(Q4 == 0, st["o"][8][:, 0], 0).astype(np.float32)
            st["l1"] = np.where(Q4 == 0, st["o"][8][:, 2], 0).astype(np.float32)
    for st in warps:
        st["o"] = st["o"][:8]
    return finish(warps, BQ, q0, T, bf16), processed


def ldsm_x4_core(smem, ofs, row0, ks):
    """ldmatrix.x4 of the A fragment (rows row0 .. row0 + 15, head dims 16 ks ..) from a WG_CORE tile
    at element ofs: lane l addresses row row0 + (l / 8 % 2) 8 + l % 8, dims 8 (2 ks + l / 16)."""
    tile = np.full((128, D), np.nan, np.float32)
    for r in range(128):
        for c8 in range(8):
            e = ofs + wg_core(r, c8)
            if e + 8 <= len(smem):
                tile[r, 8 * c8:8 * c8 + 8] = smem[e:e + 8]
    return ldsm_x4(tile, row0 + (LM & 1) * 8 + LR, ks * 16 + (LM >> 1) * 8)


def tf32(x):
    """cvt.rna.tf32.f32: 10 mantissa bits, nearest, ties away from zero (as float32)."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x1000) & 0xFFFFE000
    return u.astype(np.uint32).view(np.float32)


def split(x):
    hi = tf32(x)
    return hi, tf32(np.asarray(x, np.float32) - hi)


def mma_tf32(c, a, b0, b1):
    """mma.m16n8k8.row.col f32 += tf32 x tf32. c (32, 4); a (32, 4); b0, b1 (32,)."""
    A = np.zeros((16, 8))
    B = np.zeros((8, 8))
    A[G, Q4], A[G + 8, Q4], A[G, Q4 + 4], A[G + 8, Q4 + 4] = a[:, 0], a[:, 1], a[:, 2], a[:, 3]
    B[Q4, G], B[Q4 + 4, G] = b0, b1
    return mma_acc(A, B, c)


def mma_3x(c, ah, al, bh0, bh1, bl0, bl1):
    c = mma_tf32(c, al, bh0, bh1)
    c = mma_tf32(c, ah, bl0, bl1)
    return mma_tf32(c, ah, bh0, bh1)


def block_tf32x3(qkv, mask, b, h, q0, H, scale, drop=None):
    """attention_fwd_f32_d64_tf32x3, one block: rows q0 .. q0 + 63 of (b, h)."""
    BQ, BK = 64, 32
    T = qkv.shape[1]
    C = H * D
    base = qkv[b][:, h * D:]
    sl2 = np.float32(scale * LOG2E)
    kv = KV(base, mask[b], T, C, BK, 68, np.float32)

    def qval(r, c):
        return np.array([base[ri, ci] if ri < T else 0.0 for ri, ci in zip(r, c)], np.float32)

    warps = []
    for w in range(4):
        st = new_state(w * 16)
        r0, r1 = q0 + w * 16 + G, q0 + w * 16 + G + 8
        st["qh"], st["ql"] = [], []
        for ks in range(8):
            c = ks * 8 + Q4
            hi, lo = split(np.stack([qval(r0, c), qval(r1, c), qval(r0, c + 4), qval(r1, c + 4)], 1))
            st["qh"].append(hi)
            st["ql"].append(lo)
        warps.append(st)
    processed = []
    for j, buf in kv.tiles():
        processed.append(j)
        for st in warps:
            s = np.zeros((4, 32, 4), np.float32)
            for nt in range(4):
                for ks in range(8):
                    bh0, bl0 = split(kv.K[buf][nt * 8 + G, ks * 8 + Q4])
                    bh1, bl1 = split(kv.K[buf][nt * 8 + G, ks * 8 + Q4 + 4])
                    s[nt] = mma_3x(s[nt], st["qh"][ks], st["ql"][ks], bh0, bh1, bl0, bl1)
            online_softmax(st, s, kv.M[buf], sl2)
            if drop is not None:
                for nt in range(4):
                    drop4(s[nt], drop, q0 + st["row0"] + G, j * BK + nt * 8 + 2 * Q4, h, b)
            for kk in range(4):
                ph, pl = split(np.stack([s[kk][:, 0], s[kk][:, 2], s[kk][:, 1], s[kk][:, 3]], 1))
                for nt in range(8):
                    bh0, bl0 = split(kv.V[buf][kk * 8 + 2 * Q4, nt * 8 + G])
                    bh1, bl1 = split(kv.V[buf][kk * 8 + 2 * Q4 + 1, nt * 8 + G])
                    st["o"][nt] = mma_3x(st["o"][nt], ph, pl, bh0, bh1, bl0, bl1)
    return finish(warps, BQ, q0, T, lambda x: x), processed


def reference(qkv, mask, b, h, H, scale, drop=None):
    C = H * D
    x = qkv[b].astype(np.float64)
    q, k, v = x[:, h * D:h * D + D], x[:, C + h * D:C + h * D + D], x[:, 2 * C + h * D:2 * C + h * D + D]
    s = q @ k.T * scale + mask[b][None, :]
    p = np.exp(s - s.max(1, keepdims=True))
    p = p / p.sum(1, keepdims=True)
    if drop is not None:
        p = p * keep_matrix(drop, b, h, x.shape[0])
    return p @ v


def key_mask(T, keys):
    """Additive mask row: keys = n (the first n keys valid) or (a, b) (keys a .. b - 1 valid:
    padding before, after, or with a = b around a gap given as (a, b, c, d): [a, b) and [c, d))."""
    if isinstance(keys, int):
        keys = (0, keys)
    valid = np.zeros(T, bool)
    for a, b in zip(keys[0::2], keys[1::2]):
        valid[a:b] = True
    return np.where(valid, 0.0, -1e9).astype(np.float32)


def run(name, kernel, T, rows, tol, bq, rng, H, scale, as_bf16, drop=None):
    """Every row of a batch with `rows` key patterns through `kernel`: each query block for
    T <= 256, else the first, a middle one and the last (partial) one."""
    x = rng.standard_normal((len(rows), T, 3 * H * D)).astype(np.float32) * 1.5
    qkv = bf16(x) if as_bf16 else x
    mask = np.stack([key_mask(T, r) for r in rows])
    bad = 0
    for b, keys in enumerate(rows):
        h = b % H
        nb = (T + bq - 1) // bq
        blocks = range(nb) if T <= 256 else sorted({0, nb // 2, nb - 1})
        want = reference(qkv, mask, b, h, H, scale, drop)
        errs, tiles = [], None
        for qb in blocks:
            got, tiles = kernel(qkv, mask, b, h, qb * bq)
            n = min(bq, T - qb * bq)
            errs.append(np.abs(got[:n] - want[qb * bq:qb * bq + n]).max() / np.abs(want).max())
        err = max(errs)
        ok = err < tol and np.isfinite(err)
        bad += not ok
        more = "..." if len(tiles) > 8 else ""
        print(f"{name:<8} T {T:4} keys {str(keys):<20} tiles processed {str(tiles[:8]) + more:<28} "
              f"max rel error {err:.2e} {'ok' if ok else 'MISMATCH'}")
    return bad


def main():
    rng = np.random.default_rng(0)
    H, scale = 2, 1 / 8
    bad = 0
    # key patterns: full, length 1, padding in whole tiles (skipped) and in part of a tile,
    # leading padding, a gap in the middle; T not a multiple of the tile; more than 32 key tiles
    # (the later ones are always processed) with a partial last query block
    cases = [(150, [150, 1, 70]), (128, [128, 64, 65]), (40, [40, 7]), (200, [129, (70, 200), (0, 10, 140, 200)])]
    for MT in (1, 2):
        kern = lambda q, m, b, h, q0, MT=MT: block(q, m, b, h, q0, H, scale, MT)
        for T, rows in cases + [(2200 // MT, [2200 // MT, 90, (0, 5, 1050 // MT, 1100 // MT)])]:
            bad += run(f"fa2 MT{MT}", kern, T, rows, 1e-2, 64 * MT, rng, H, scale, True)
    # attention_fwd_bf16_d64_fa2_w8: 8 warps, 128 query rows per block, key tiles of 64
    kern = lambda q, m, b, h, q0: block(q, m, b, h, q0, H, scale, 1, NW=8)
    for T, rows in cases + [(2200, [2200, 90, (0, 5, 1050, 1100)])]:
        bad += run("fa2 w8", kern, T, rows, 1e-2, 128, rng, H, scale, True)
    # attention_fwd_bf16_d64_fa2_v3 / _w8v3 (T <= 512): key tile 0 always processed, also when
    # all its keys are padding ((70, 200), (100, 512)); T = 512 with a partial last query block
    pcases = cases + [(512, [512, 1, (100, 512), (0, 5, 300, 330)]), (300, [300, (64, 300), 2])]
    for NW in (4, 8):
        kern = lambda q, m, b, h, q0, NW=NW: block_pre(q, m, b, h, q0, H, scale, NW)
        for T, rows in pcases:
            bad += run(f"fa2p NW{NW}", kern, T, rows, 1e-2, 16 * NW, rng, H, scale, True)
    # attention_fwd_bf16_d64_fa2_w8v5: one barrier per key tile, the next tile requested after it
    kern = lambda q, m, b, h, q0: block_pre(q, m, b, h, q0, H, scale, 8, b1=True)
    for T, rows in pcases:
        bad += run("fa2p NW8 b1", kern, T, rows, 1e-2, 128, rng, H, scale, True)
    # negative controls, each of whose cases must mismatch: key tile 0 into buffer 1, (8 warps)
    # tile 1 into buffer 1 before the Q fragments are read from it, and one barrier per tile with
    # the next tile requested before it (over the buffer other warps may still read) or with the
    # tile not waited for
    for neg, b1 in (("tile0_buf1", False), ("tile1_before_q", False), ("b1_early", True), ("b1_wait1", True)):
        kern = lambda q, m, b, h, q0, neg=neg, b1=b1: block_pre(q, m, b, h, q0, H, scale, 8, neg=neg, b1=b1)
        if run(f"negative control {neg}", kern, 150, [150, 70], 1e-2, 128, rng, H, scale, True) != 2:
            print(f"negative control {neg}: the emulation did not notice it")
            bad += 1
    # attention_fwd_f32_d64_tf32x3: f32 inputs, tolerance 1e-5 (the f32 kernels' check)
    kern = lambda q, m, b, h, q0: block_tf32x3(q, m, b, h, q0, H, scale)
    for T, rows in cases[:3] + [(96, [96, 33, (40, 96)]), (1100, [90, (0, 5, 1050, 1100)])]:
        bad += run("tf32x3", kern, T, rows, 1e-5, 64, rng, H, scale, False)
    # Random123's known answer for Philox4x32-10 (counter 0, key 0)
    assert [int(x) for x in philox4x32_10([0, 0, 0, 0], 0, 0)] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    # dropout inside the kernels (the _dropout entry points of fa2v2 = MT 1 NW 4, fa2w8 = NW 8
    # and tf32x3), p = 0.1, against the reference with the mask built element by element
    drop = (0.1, 0x1234567890ABCDEF)
    dcases = [(150, [150, 70]), (200, [(0, 10, 140, 200)]), (600, [600])]
    for NW in (4, 8):
        kern = lambda q, m, b, h, q0, NW=NW: block(q, m, b, h, q0, H, scale, 1, NW=NW, drop=drop)
        for T, rows in dcases:
            bad += run(f"fa2 NW{NW}+drop", kern, T, rows, 1e-2, 16 * NW, rng, H, scale, True, drop)
    for NW, b1 in ((4, False), (8, False), (8, True)):
        kern = lambda q, m, b, h, q0, NW=NW, b1=b1: block_pre(q, m, b, h, q0, H, scale, NW, drop=drop, b1=b1)
        for T, rows in dcases[:2] + [(512, [(70, 512)])]:
            bad += run(f"fa2p NW{NW}{' b1' if b1 else ''}+drop", kern, T, rows, 1e-2, 16 * NW, rng, H, scale, True, drop)
    kern = lambda q, m, b, h, q0: block_tf32x3(q, m, b, h, q0, H, scale, drop=drop)
    for T, rows in dcases:
        bad += run("tf32x3+drop", kern, T, rows, 1e-5, 64, rng, H, scale, False, drop)
    # attention_fwd_bf16_d64_fa2_wg: S = Q K^T by wgmma through descriptors (and with dropout)
    kern = lambda q, m, b, h, q0: block_wg(q, m, b, h, q0, H, scale)
    for T, rows in pcases:
        bad += run("fa2wg", kern, T, rows, 1e-2, 64, rng, H, scale, True)
    kern = lambda q, m, b, h, q0: block_wg(q, m, b, h, q0, H, scale, drop=drop)
    for T, rows in dcases[:2] + [(512, [(70, 512)])]:
        bad += run("fa2wg+drop", kern, T, rows, 1e-2, 64, rng, H, scale, True, drop)
    # attention_fwd_bf16_d64_fa2_wg2: O += P V by wgmma too (P from registers, V N-major)
    kern = lambda q, m, b, h, q0: block_wg(q, m, b, h, q0, H, scale, pv=True)
    for T, rows in pcases:
        bad += run("fa2wg2", kern, T, rows, 1e-2, 64, rng, H, scale, True)
    kern = lambda q, m, b, h, q0: block_wg(q, m, b, h, q0, H, scale, drop=drop, pv=True)
    for T, rows in dcases[:2] + [(512, [(70, 512)])]:
        bad += run("fa2wg2+drop", kern, T, rows, 1e-2, 64, rng, H, scale, True, drop)
    kern = lambda q, m, b, h, q0: block_wg(q, m, b, h, q0, H, scale, neg="desc_v", pv=True)
    if run("negative control desc_v", kern, 150, [150, 70], 1e-2, 64, rng, H, scale, True) != 2:
        print("negative control desc_v: the emulation did not notice it")
        bad += 1
    kern = lambda q, m, b, h, q0: block_wg(q, m, b, h, q0, H, scale, neg="desc_lbo_sbo")
    if run("negative control desc_lbo_sbo", kern, 150, [150, 70], 1e-2, 64, rng, H, scale, True) != 2:
        print("negative control desc_lbo_sbo: the emulation did not notice it")
        bad += 1
    # attention_fwd_bf16_d64_fa2_wg3 (NWG = 2) / _wg4 (NWG = 1): wgmma with Q in registers, the
    # softmax of tile j beside O += P_{j-1} V_{j-1}, row sums by the ones column, rescaling only
    # when a row's maximum grows by more than 8, the plain-tile softmax; and with dropout
    stats = {}
    for NWG in (2, 1):
        kern = lambda q, m, b, h, q0, NWG=NWG: block_wgp(q, m, b, h, q0, H, scale, NWG, stats=stats)
        for T, rows in pcases + [(512, [512, 448, (0, 256)])]:
            bad += run(f"fa2wgp NWG{NWG}", kern, T, rows, 1e-2, 64 * NWG, rng, H, scale, True)
        kern = lambda q, m, b, h, q0, NWG=NWG: block_wgp(q, m, b, h, q0, H, scale, NWG, drop=drop)
        for T, rows in dcases[:2] + [(512, [(70, 512), 512])]:
            bad += run(f"fa2wgp NWG{NWG}+drop", kern, T, rows, 1e-2, 64 * NWG, rng, H, scale, True, drop)
    # the fast paths were taken: plain tiles (unpadded rows) and warps that skipped the rescaling
    if not stats.get("plain") or not stats.get("rescales"):
        print(f"fa2wgp: plain tiles {stats.get('plain')}, rescalings {stats.get('rescales')}: a path never ran")
        bad += 1
    # scores growing along the keys (each tile's maximum 12 above the last): the reference maxima move
    # every tile; and a growth under 8 per tile, where they stay (probabilities up to 2^8)
    for step in (12.0, 5.0):
        T = 512
        x = bf16(rng.standard_normal((1, T, 3 * H * D)).astype(np.float32) * 0.3)
        x[0, :, :D] = bf16(np.float32(1.0))  # q = 1: s_k = sum of k's dims
        ramp = (np.arange(T) // 64 * step / (D * scale * LOG2E)).astype(np.float32)
        x[0, :, H * D:H * D + D] = bf16(ramp[:, None] + x[0, :, H * D:H * D + D] * 0.01)
        mask = np.zeros((1, T), np.float32)
        want = reference(x, mask, 0, 0, H, scale)
        got, _ = block_wgp(x, mask, 0, 0, 0, H, scale, 2)
        err = np.abs(got[:128] - want[:128]).max() / np.abs(want).max()
        ok = err < 1e-2
        bad += not ok
        print(f"fa2wgp ramp of {step} per tile: max rel error {err:.2e} {'ok' if ok else 'MISMATCH'}")
    for neg in ("v_same_buf", "no_ones", "v1_early"):
        kern = lambda q, m, b, h, q0, neg=neg: block_wgp(q, m, b, h, q0, H, scale, 2, neg=neg)
        if run(f"negative control {neg}", kern, 200, [200, 150], 1e-2, 128, rng, H, scale, True) != 2:
            print(f"negative control {neg}: the emulation did not notice it")
            bad += 1
    # attention_fwd_bf16_d64_fa2_wg3e / _wg4e: fa2wg3 / fa2wg4 with K and V of tile 1 requested in
    # the prologue (tile 1 processed also when all padding: keys 1, 7, 2); and with dropout
    for NWG in (2, 1):
        kern = lambda q, m, b, h, q0, NWG=NWG: block_wgp(q, m, b, h, q0, H, scale, NWG, early=True, stats=stats)
        # (tiles 0 and 1 both all padding, live tiles after them: (130, 200), (200, 512), (0, 64, 448, 512))
        ecases = [(512, [512, 448, (0, 256)]), (128, [128, 1, 64, 65]), (200, [(130, 200)]),
                  (512, [(200, 512), (0, 64, 448, 512)]), (129, [1, 64, 129]), (65, [65, 64])]
        for T, rows in pcases + ecases:
            bad += run(f"fa2wgp NWG{NWG} early", kern, T, rows, 1e-2, 64 * NWG, rng, H, scale, True)
        kern = lambda q, m, b, h, q0, NWG=NWG: block_wgp(q, m, b, h, q0, H, scale, NWG, drop=drop, early=True)
        for T, rows in dcases[:2] + [(512, [(70, 512), 512]), (128, [128, 1])]:
            bad += run(f"fa2wgp NWG{NWG} early+drop", kern, T, rows, 1e-2, 64 * NWG, rng, H, scale, True, drop)
    kern = lambda q, m, b, h, q0: block_wgp(q, m, b, h, q0, H, scale, 1, neg="early_k1_buf0", early=True)
    if run("negative control early_k1_buf0", kern, 200, [200, 150], 1e-2, 64, rng, H, scale, True) != 2:
        print("negative control early_k1_buf0: the emulation did not notice it")
        bad += 1
    print("all cases match" if bad == 0 else f"{bad} cases mismatch")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
