"""Triton kernels of the fused spatial correlation loss (DESIGN §3, "Fused kernel plan").

Only ``@triton.jit`` code lives here; the host side (descriptor packing, launches, autograd) is in
``triton_ops.py``. One launch of each kernel covers up to ``MAX_LAYERS`` layers and all their sampled
neighbourhoods; a program finds its layer by scanning the per-layer program offsets of the descriptor table.

Descriptor: an int64 table, one row of ``NF`` fields per layer (field indices below). Data pointers are passed as
kernel arguments (``x0..x7`` etc.), so the table depends only on shapes/strides and can be cached on the device.

Passes (``MODE`` 0: time-mean rows = B, the T frames are averaged while loading; ``MODE`` 1: flattened rows = B·T):

1. ``_stats_kernel``      per (layer, neighbourhood, unit block): gathers the sampled units straight from the
                          activations (any strides, time reduction on the fly), mean and 1/std over the rows
                          (two-pass, fp32; dead-unit rule ``std <= 1e-6·|mean|`` → std := 1), and writes the
                          standardised responses Z into a compact fp32 (K, rows, M) buffer (coalesced for the tiles).
                          Scale-safe as in ``reference.py``: pass one takes the sum, max and min; pass two squares
                          the centred responses divided by the spread (max - min), so activations of any finite fp32
                          magnitude (1e19, 1e-22) neither overflow nor underflow; a unit with spread 0 is dead and
                          its mean is its exact value (centred responses exactly 0).
2. ``_tile_fwd_kernel``   per (layer, neighbourhood, lower-triangular tile (bi >= bj)): R tile = ZᵢᵀZⱼ/(n-1) with
                          ``tl.dot`` over row chunks (R never stored), S from the positions, and the tile's count,
                          means and centred co-moments of (R, S) over its strict-lower-triangle pairs.
3. ``_merge_kernel``      per (layer, neighbourhood): Chan/pairwise merge of the tile statistics in a fixed order
                          (deterministic, no atomics); loss/K written to a (L, KMAX) buffer; the statistics the
                          backward needs are saved.
4. ``_bwd_dz_kernel``     per (layer, neighbourhood, unit block I): recomputes the R tiles (I, J) for every J from Z,
                          forms dL/dR, accumulates dZ_I = Σ_J Z_J·H_IJᵀ/(n-1) in a scratch owned by the program,
                          then back-propagates through the standardisation; dX of the sampled units stays in the
                          scratch.
5. ``_bwd_scatter_kernel`` per (layer, row chunk): adds the scratch dX into the fp32 feature gradient (÷T over the
                          frames for the time-mean), neighbourhood after neighbourhood in a fixed order (units shared by
                          neighbourhoods are accumulated deterministically; no atomics).
"""
# No ``from __future__ import annotations``: the triton 3.0 interpreter recognises a constexpr parameter only by
# its evaluated annotation (the string "tl.constexpr" is taken for a runtime argument).
import triton
import triton.language as tl

MAX_LAYERS = 8

# descriptor fields (int64 each); tl.constexpr so that the kernels may read them as globals
F_SB, F_SC, F_ST, F_SH, F_SW = (tl.constexpr(i) for i in range(5))  # input strides (elements) of (B, C, T, H, W)
F_B, F_T, F_HW, F_W, F_M, F_K = (tl.constexpr(i) for i in range(5, 11))
F_NB = tl.constexpr(11)  # number of unit blocks of BLOCK_M
F_STATS_START = tl.constexpr(12)  # first program of the layer in the stats / bwd-dz grids (K·NB programs per layer)
F_TILE_START = tl.constexpr(13)  # first program of the layer in the tile grid (K·NB(NB+1)/2 programs)
F_UNIT_OFF = tl.constexpr(14)  # offset of the layer's (K, M) per-unit statistics
F_LK_OFF = tl.constexpr(15)  # offset of the layer's K per-neighbourhood statistics
F_DX_OFF = tl.constexpr(16)  # offset of the layer's (K, rows, M) dX scratch
F_N = tl.constexpr(17)  # units C·H·W
F_SCAT_START = tl.constexpr(18)  # first program of the layer in the scatter grid (cdiv(rows, BLOCK_R) programs)
F_ROWS = tl.constexpr(19)  # rows: B (MODE 0) or B·T (MODE 1)
NF = tl.constexpr(20)

N_PART = tl.constexpr(8)  # tile partial statistics: count, mean R, mean S, M2 R, M2 S, C RS, Σ|R-S|, (pad)
N_LKSTAT = tl.constexpr(8)  # per-neighbourhood statistics for the backward: mean R, mean S, a, b, pairs, r, loss, (pad)


@triton.jit
def _find_layer(desc_ptr, pid, L, FIELD: tl.constexpr):
    """Index of the layer whose program range (field FIELD = first program) holds ``pid``."""
    layer = pid * 0
    for l in range(1, L):
        start = tl.load(desc_ptr + l * NF + FIELD)
        layer = tl.where(pid >= start, l, layer)
    return layer


@triton.jit
def _pick(layer, p0, p1, p2, p3, p4, p5, p6, p7):
    """The pointer argument of ``layer`` (runtime select among the MAX_LAYERS pointer slots)."""
    p = p0
    if layer == 1:
        p = p1
    elif layer == 2:
        p = p2
    elif layer == 3:
        p = p3
    elif layer == 4:
        p = p4
    elif layer == 5:
        p = p5
    elif layer == 6:
        p = p6
    elif layer == 7:
        p = p7
    return p


@triton.jit
def _unit_offsets(idx_ptr, k, M, HW, W, SC, SH, SW, cols, cmask):
    """Unit indices of columns ``cols`` of neighbourhood ``k`` and their element offsets in the input."""
    n = tl.load(idx_ptr + k * M + cols, mask=cmask, other=0)
    c = n // HW
    hw = n % HW
    h = hw // W
    w = hw % W
    return n, c * SC + h * SH + w * SW


@triton.jit
def _load_rows(x_ptr, rows, rmask, coff, cmask, SB, ST, T, MODE: tl.constexpr, BLOCK_R: tl.constexpr,
               BLOCK_M: tl.constexpr):
    """(BLOCK_R, BLOCK_M) fp32 responses of the columns at element offsets ``coff`` for the given rows.

    MODE 0: time-mean over the T frames; MODE 1: row = b·T + t.
    """
    m2 = rmask[:, None] & cmask[None, :]
    if MODE == 0:
        base = x_ptr + rows.to(tl.int64)[:, None] * SB + coff[None, :]
        acc = tl.zeros((BLOCK_R, BLOCK_M), dtype=tl.float32)
        for t in range(T):
            acc += tl.load(base + t * ST, mask=m2, other=0.0).to(tl.float32)
        x = acc / T.to(tl.float32)
    else:
        r64 = rows.to(tl.int64)
        b = r64 // T
        t = r64 % T
        x = tl.load(x_ptr + (b * SB + t * ST)[:, None] + coff[None, :], mask=m2, other=0.0).to(tl.float32)
    return x


@triton.jit
def _load_z(x_ptr, rows, rmask, coff, cmask, mean, rstd, SB, ST, T, MODE: tl.constexpr, BLOCK_R: tl.constexpr,
            BLOCK_M: tl.constexpr):
    """Standardised responses Z = (x - mean)·rstd, zero outside the valid rows/columns."""
    x = _load_rows(x_ptr, rows, rmask, coff, cmask, SB, ST, T, MODE, BLOCK_R, BLOCK_M)
    z = (x - mean[None, :]) * rstd[None, :]
    return tl.where(rmask[:, None] & cmask[None, :], z, 0.0)


@triton.jit
def _similarity(pos_ptr, ni, nj, mi, mj):
    """S_ij = 1 / (d_ij + 1) from the (N, 2) float32 positions of units ni (rows) and nj (columns)."""
    xi = tl.load(pos_ptr + ni * 2, mask=mi, other=0.0)
    yi = tl.load(pos_ptr + ni * 2 + 1, mask=mi, other=0.0)
    xj = tl.load(pos_ptr + nj * 2, mask=mj, other=0.0)
    yj = tl.load(pos_ptr + nj * 2 + 1, mask=mj, other=0.0)
    dx = xi[:, None] - xj[None, :]
    dy = yi[:, None] - yj[None, :]
    return 1.0 / (tl.sqrt(dx * dx + dy * dy) + 1.0)


@triton.jit
def _stats_kernel(desc_ptr, stat_ptr, z_ptr, U, L,
                  x0, x1, x2, x3, x4, x5, x6, x7,
                  i0, i1, i2, i3, i4, i5, i6, i7,
                  MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr):
    """Per sampled unit: mean, 1/std (dead units: 1) and live flag over the rows → stat_ptr[0:U], [U:2U], [2U:3U];
    and the standardised responses Z → the compact fp32 buffer z_ptr (layer offset F_DX_OFF, layout (K, rows, M)),
    which the tile kernels then read coalesced."""
    pid = tl.program_id(0)
    layer = _find_layer(desc_ptr, pid, L, F_STATS_START)
    d = desc_ptr + layer * NF
    SB = tl.load(d + F_SB)
    SC = tl.load(d + F_SC)
    ST = tl.load(d + F_ST)
    SH = tl.load(d + F_SH)
    SW = tl.load(d + F_SW)
    T = tl.load(d + F_T)
    HW = tl.load(d + F_HW)
    W = tl.load(d + F_W)
    M = tl.load(d + F_M)
    NB = tl.load(d + F_NB)
    ROWS = tl.load(d + F_ROWS)
    local = pid - tl.load(d + F_STATS_START)
    k = local // NB
    bi = local % NB
    x_ptr = _pick(layer, x0, x1, x2, x3, x4, x5, x6, x7)
    idx_ptr = _pick(layer, i0, i1, i2, i3, i4, i5, i6, i7)

    cols = bi * BLOCK_M + tl.arange(0, BLOCK_M)
    cmask = cols < M
    n, coff = _unit_offsets(idx_ptr, k, M, HW, W, SC, SH, SW, cols, cmask)
    r_ar = tl.arange(0, BLOCK_R)
    s = tl.zeros((BLOCK_M,), dtype=tl.float32)
    hi = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    lo = tl.full((BLOCK_M,), float("inf"), dtype=tl.float32)
    for r0 in range(0, ROWS, BLOCK_R):
        rows = r0 + r_ar
        rmask = rows < ROWS
        x = _load_rows(x_ptr, rows, rmask, coff, cmask, SB, ST, T, MODE, BLOCK_R, BLOCK_M)
        s += tl.sum(x, axis=0)
        hi = tl.maximum(hi, tl.max(tl.where(rmask[:, None], x, float("-inf")), axis=0))
        lo = tl.minimum(lo, tl.min(tl.where(rmask[:, None], x, float("inf")), axis=0))
    nrows = ROWS.to(tl.float32)
    spread = hi - lo
    constant = spread == 0.0
    mean = tl.where(constant, hi, s / nrows)  # exact for a constant unit (its centred responses are exactly 0)
    spread = tl.where(constant, 1.0, spread)
    ss = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for r0 in range(0, ROWS, BLOCK_R):
        rows = r0 + r_ar
        rmask = rows < ROWS
        x = _load_rows(x_ptr, rows, rmask, coff, cmask, SB, ST, T, MODE, BLOCK_R, BLOCK_M)
        u = tl.where(rmask[:, None] & cmask[None, :], (x - mean[None, :]) / spread[None, :], 0.0)  # |u| <= 1
        ss += tl.sum(u * u, axis=0)
    rel_std = tl.sqrt(ss / (nrows - 1.0))  # std / spread
    live = rel_std > 1e-6 * (tl.abs(mean) / spread)
    rstd = tl.where(live, 1.0 / (spread * tl.where(live, rel_std, 1.0)), 1.0)
    out = tl.load(d + F_UNIT_OFF) + k * M + cols
    tl.store(stat_ptr + out, mean, mask=cmask)
    tl.store(stat_ptr + U + out, rstd, mask=cmask)
    tl.store(stat_ptr + 2 * U + out, live.to(tl.float32), mask=cmask)
    z_base = z_ptr + tl.load(d + F_DX_OFF) + k * ROWS * M
    for r0 in range(0, ROWS, BLOCK_R):
        rows = r0 + r_ar
        rmask = rows < ROWS
        z = _load_z(x_ptr, rows, rmask, coff, cmask, mean, rstd, SB, ST, T, MODE, BLOCK_R, BLOCK_M)
        tl.store(z_base + rows.to(tl.int64)[:, None] * M + cols[None, :], z, mask=rmask[:, None] & cmask[None, :])


@triton.jit
def _tile_index(t):
    """(bi, bj) with bi >= bj of the t-th lower-triangular tile (row-major: (0,0), (1,0), (1,1), (2,0), ...)."""
    bi = ((tl.sqrt(8.0 * t.to(tl.float32) + 1.0) - 1.0) * 0.5).to(tl.int64)
    bi = tl.where((bi + 1) * (bi + 2) // 2 <= t, bi + 1, bi)
    bi = tl.where(bi * (bi + 1) // 2 > t, bi - 1, bi)
    bj = t - bi * (bi + 1) // 2
    return bi, bj


@triton.jit
def _load_zc(z_base, rows, rmask, cols, cmask, M):
    """(BLOCK_R, BLOCK_M) block of the compact Z buffer of one neighbourhood (zero outside)."""
    return tl.load(z_base + rows.to(tl.int64)[:, None] * M + cols[None, :], mask=rmask[:, None] & cmask[None, :],
                   other=0.0)


@triton.jit
def _r_tile(z_base, ci, cj, mi, mj, same, M, ROWS, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr):
    """Unclamped R tile Z_Iᵀ Z_J / (rows - 1), accumulated in fp32 over row chunks."""
    acc = tl.zeros((BLOCK_M, BLOCK_M), dtype=tl.float32)
    r_ar = tl.arange(0, BLOCK_R)
    for r0 in range(0, ROWS, BLOCK_R):
        rows = r0 + r_ar
        rmask = rows < ROWS
        zi = _load_zc(z_base, rows, rmask, ci, mi, M)
        if same:
            zj = zi
        else:
            zj = _load_zc(z_base, rows, rmask, cj, mj, M)
        acc = tl.dot(tl.trans(zi), zj, acc, input_precision="ieee")
    return acc / (ROWS.to(tl.float32) - 1.0)


@triton.jit
def _tile_fwd_kernel(desc_ptr, z_ptr, part_ptr, L,
                     i0, i1, i2, i3, i4, i5, i6, i7,
                     p0, p1, p2, p3, p4, p5, p6, p7,
                     BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr):
    """Statistics of (R, S) over the strict-lower-triangle pairs of one tile → part_ptr[pid, 0:N_PART]."""
    pid = tl.program_id(0)
    layer = _find_layer(desc_ptr, pid, L, F_TILE_START)
    d = desc_ptr + layer * NF
    M = tl.load(d + F_M)
    NB = tl.load(d + F_NB)
    ROWS = tl.load(d + F_ROWS)
    ntile = NB * (NB + 1) // 2
    local = pid - tl.load(d + F_TILE_START)
    k = local // ntile
    bi, bj = _tile_index(local % ntile)
    idx_ptr = _pick(layer, i0, i1, i2, i3, i4, i5, i6, i7)
    pos_ptr = _pick(layer, p0, p1, p2, p3, p4, p5, p6, p7)

    ci = bi * BLOCK_M + tl.arange(0, BLOCK_M)
    cj = bj * BLOCK_M + tl.arange(0, BLOCK_M)
    mi = ci < M
    mj = cj < M
    ni = tl.load(idx_ptr + k * M + ci, mask=mi, other=0)
    nj = tl.load(idx_ptr + k * M + cj, mask=mj, other=0)
    z_base = z_ptr + tl.load(d + F_DX_OFF) + k * ROWS * M
    R = _r_tile(z_base, ci, cj, mi, mj, bi == bj, M, ROWS, BLOCK_M, BLOCK_R)
    R = tl.minimum(tl.maximum(R, -1.0), 1.0)
    S = _similarity(pos_ptr, ni, nj, mi, mj)
    pair = (ci[:, None] > cj[None, :]) & mi[:, None] & mj[None, :]
    cnt = tl.sum(tl.sum(pair.to(tl.float32), axis=1), axis=0)
    safe = tl.maximum(cnt, 1.0)
    mR = tl.sum(tl.sum(tl.where(pair, R, 0.0), axis=1), axis=0) / safe
    mS = tl.sum(tl.sum(tl.where(pair, S, 0.0), axis=1), axis=0) / safe
    dR = tl.where(pair, R - mR, 0.0)
    dS = tl.where(pair, S - mS, 0.0)
    m2r = tl.sum(tl.sum(dR * dR, axis=1), axis=0)
    m2s = tl.sum(tl.sum(dS * dS, axis=1), axis=0)
    crs = tl.sum(tl.sum(dR * dS, axis=1), axis=0)
    sabs = tl.sum(tl.sum(tl.where(pair, tl.abs(R - S), 0.0), axis=1), axis=0)
    o = part_ptr + pid * N_PART
    tl.store(o + 0, cnt)
    tl.store(o + 1, mR)
    tl.store(o + 2, mS)
    tl.store(o + 3, m2r)
    tl.store(o + 4, m2s)
    tl.store(o + 5, crs)
    tl.store(o + 6, sabs)


@triton.jit
def _merge_kernel(desc_ptr, part_ptr, lk_ptr, loss_ptr, L, KMAX,
                  VARIANT: tl.constexpr, BLOCK_T: tl.constexpr):
    """Merge the tile statistics of one neighbourhood (fixed order) → SL; loss/K into loss_ptr[layer, k]."""
    g = tl.program_id(0)
    layer = _find_layer(desc_ptr, g, L, F_LK_OFF)
    d = desc_ptr + layer * NF
    NB = tl.load(d + F_NB)
    K = tl.load(d + F_K)
    k = g - tl.load(d + F_LK_OFF)
    ntile = NB * (NB + 1) // 2
    first = tl.load(d + F_TILE_START) + k * ntile
    t = tl.arange(0, BLOCK_T)
    tm = t < ntile
    base = part_ptr + (first + t) * N_PART
    cnt = tl.load(base + 0, mask=tm, other=0.0)
    mr_t = tl.load(base + 1, mask=tm, other=0.0)
    ms_t = tl.load(base + 2, mask=tm, other=0.0)
    n = tl.sum(cnt, axis=0)
    mR = tl.sum(cnt * mr_t, axis=0) / n
    mS = tl.sum(cnt * ms_t, axis=0) / n
    er = mr_t - mR
    es = ms_t - mS
    sxx = tl.sum(tl.load(base + 3, mask=tm, other=0.0) + cnt * er * er, axis=0)
    syy = tl.sum(tl.load(base + 4, mask=tm, other=0.0) + cnt * es * es, axis=0)
    sxy = tl.sum(tl.load(base + 5, mask=tm, other=0.0) + cnt * er * es, axis=0)
    sabs = tl.sum(tl.load(base + 6, mask=tm, other=0.0), axis=0)
    prod = sxx * syy
    den2 = tl.maximum(prod, 1e-30)
    inv_den = 1.0 / tl.sqrt(den2)
    r = sxy * inv_den
    # dr/dR_ij = a·(S_ij - mean S) - b·(R_ij - mean R); b = 0 where the floor of the denominator is active
    a = inv_den
    b = tl.where(prod >= 1e-30, r * syy / den2, 0.0)
    if VARIANT == 0:
        loss = (1.0 - r) * 0.5
    else:
        loss = sabs / n
    o = lk_ptr + g * N_LKSTAT
    tl.store(o + 0, mR)
    tl.store(o + 1, mS)
    tl.store(o + 2, a)
    tl.store(o + 3, b)
    tl.store(o + 4, n)
    tl.store(o + 5, r)
    tl.store(o + 6, loss)
    tl.store(loss_ptr + layer * KMAX + k, loss / K.to(tl.float32))


@triton.jit
def _bwd_dz_kernel(desc_ptr, stat_ptr, z_ptr, lk_ptr, gout_ptr, dx_ptr, U, L,
                   i0, i1, i2, i3, i4, i5, i6, i7,
                   p0, p1, p2, p3, p4, p5, p6, p7,
                   VARIANT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr):
    """dL/dX of the units of block I of one neighbourhood, for all rows → dx scratch (K, rows, M) of the layer."""
    pid = tl.program_id(0)
    layer = _find_layer(desc_ptr, pid, L, F_STATS_START)
    d = desc_ptr + layer * NF
    M = tl.load(d + F_M)
    K = tl.load(d + F_K)
    NB = tl.load(d + F_NB)
    ROWS = tl.load(d + F_ROWS)
    UOFF = tl.load(d + F_UNIT_OFF)
    local = pid - tl.load(d + F_STATS_START)
    k = local // NB
    bi = local % NB
    idx_ptr = _pick(layer, i0, i1, i2, i3, i4, i5, i6, i7)
    pos_ptr = _pick(layer, p0, p1, p2, p3, p4, p5, p6, p7)

    g = tl.load(d + F_LK_OFF) + k
    st = lk_ptr + g * N_LKSTAT
    mR = tl.load(st + 0)
    mS = tl.load(st + 1)
    coef_a = tl.load(st + 2)
    coef_b = tl.load(st + 3)
    npairs = tl.load(st + 4)
    nrows = ROWS.to(tl.float32)
    scale = tl.load(gout_ptr + layer) / K.to(tl.float32) / (nrows - 1.0)

    ci = bi * BLOCK_M + tl.arange(0, BLOCK_M)
    mi = ci < M
    ni = tl.load(idx_ptr + k * M + ci, mask=mi, other=0)
    rstd_i = tl.load(stat_ptr + U + UOFF + k * M + ci, mask=mi, other=1.0)
    live_i = tl.load(stat_ptr + 2 * U + UOFF + k * M + ci, mask=mi, other=0.0)
    r_ar = tl.arange(0, BLOCK_R)
    off = tl.load(d + F_DX_OFF) + k * ROWS * M
    z_base = z_ptr + off
    dz_base = dx_ptr + off

    for bj in range(0, NB):
        cj = bj * BLOCK_M + tl.arange(0, BLOCK_M)
        mj = cj < M
        nj = tl.load(idx_ptr + k * M + cj, mask=mj, other=0)
        R = _r_tile(z_base, ci, cj, mi, mj, bi == bj, M, ROWS, BLOCK_M, BLOCK_R)
        inside = (R >= -1.0) & (R <= 1.0)  # clamp passes the gradient only inside [-1, 1]
        Rc = tl.minimum(tl.maximum(R, -1.0), 1.0)
        S = _similarity(pos_ptr, ni, nj, mi, mj)
        if VARIANT == 0:
            H = -0.5 * (coef_a * (S - mS) - coef_b * (Rc - mR))
        else:
            diff = Rc - S
            H = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0)) / npairs
        pair = (ci[:, None] != cj[None, :]) & mi[:, None] & mj[None, :] & inside
        H = tl.where(pair, H * scale, 0.0)  # (I, J): symmetric extension G + Gᵀ restricted to this tile
        for r0 in range(0, ROWS, BLOCK_R):
            rows = r0 + r_ar
            rmask = rows < ROWS
            zj = _load_zc(z_base, rows, rmask, cj, mj, M)
            contrib = tl.dot(zj, tl.trans(H), input_precision="ieee")  # (rows, I)
            ptrs = dz_base + rows.to(tl.int64)[:, None] * M + ci[None, :]
            m2 = rmask[:, None] & mi[None, :]
            if bj == 0:
                cur = contrib
            else:
                cur = tl.load(ptrs, mask=m2, other=0.0) + contrib
            tl.store(ptrs, cur, mask=m2)
        tl.debug_barrier()

    # through the standardisation: dx = rstd·(dz - mean(dz) - live·z·Σ(dz·z)/(n-1))
    sdz = tl.zeros((BLOCK_M,), dtype=tl.float32)
    sdzz = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for r0 in range(0, ROWS, BLOCK_R):
        rows = r0 + r_ar
        rmask = rows < ROWS
        dz = _load_zc(dz_base, rows, rmask, ci, mi, M)
        zi = _load_zc(z_base, rows, rmask, ci, mi, M)
        sdz += tl.sum(dz, axis=0)
        sdzz += tl.sum(dz * zi, axis=0)
    tl.debug_barrier()
    mdz = sdz / nrows
    czz = live_i * sdzz / (nrows - 1.0)
    for r0 in range(0, ROWS, BLOCK_R):
        rows = r0 + r_ar
        rmask = rows < ROWS
        dz = _load_zc(dz_base, rows, rmask, ci, mi, M)
        zi = _load_zc(z_base, rows, rmask, ci, mi, M)
        dx = (dz - mdz[None, :] - zi * czz[None, :]) * rstd_i[None, :]
        tl.store(dz_base + rows.to(tl.int64)[:, None] * M + ci[None, :], dx, mask=rmask[:, None] & mi[None, :])


@triton.jit
def _store_rounded(ptrs, val, mask):
    """Store fp32 ``val`` in the pointer's element type, rounding to nearest-even also for bfloat16 (done on the
    bits, so the Triton interpreter, whose fp32→bf16 cast truncates, matches the GPU)."""
    if ptrs.dtype.element_ty == tl.bfloat16:
        bits = val.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        tl.store(ptrs, bits.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
    else:
        tl.store(ptrs, val.to(ptrs.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_scatter_kernel(desc_ptr, dx_ptr, L,
                        i0, i1, i2, i3, i4, i5, i6, i7,
                        g0, g1, g2, g3, g4, g5, g6, g7,
                        MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr):
    """Feature gradient (contiguous (B, C, T, H·W) layout; fp32, or the activations' dtype when every unit gets one
    contribution) += dX of one row chunk, all neighbourhoods in order."""
    pid = tl.program_id(0)
    layer = _find_layer(desc_ptr, pid, L, F_SCAT_START)
    d = desc_ptr + layer * NF
    T = tl.load(d + F_T)
    HW = tl.load(d + F_HW)
    M = tl.load(d + F_M)
    K = tl.load(d + F_K)
    NB = tl.load(d + F_NB)
    N = tl.load(d + F_N)
    ROWS = tl.load(d + F_ROWS)
    idx_ptr = _pick(layer, i0, i1, i2, i3, i4, i5, i6, i7)
    g_ptr = _pick(layer, g0, g1, g2, g3, g4, g5, g6, g7)
    rows = (pid - tl.load(d + F_SCAT_START)) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < ROWS
    r64 = rows.to(tl.int64)
    if MODE == 0:
        row_off = r64 * N * T
    else:
        row_off = (r64 // T) * N * T + (r64 % T) * HW
    dx_base = dx_ptr + tl.load(d + F_DX_OFF)
    inv_t = 1.0 / T.to(tl.float32)
    for k in range(0, K):
        for bi in range(0, NB):
            cols = bi * BLOCK_M + tl.arange(0, BLOCK_M)
            cmask = cols < M
            n = tl.load(idx_ptr + k * M + cols, mask=cmask, other=0)
            unit_off = (n // HW) * T * HW + n % HW
            m2 = rmask[:, None] & cmask[None, :]
            dx = tl.load(dx_base + k * ROWS * M + r64[:, None] * M + cols[None, :], mask=m2, other=0.0)
            ptrs = g_ptr + row_off[:, None] + unit_off[None, :]
            if MODE == 0:
                for t in range(0, T):
                    cur = tl.load(ptrs + t * HW, mask=m2, other=0.0).to(tl.float32)
                    _store_rounded(ptrs + t * HW, cur + dx * inv_t, m2)
            else:
                cur = tl.load(ptrs, mask=m2, other=0.0).to(tl.float32)
                _store_rounded(ptrs, cur + dx, m2)
            tl.debug_barrier()
