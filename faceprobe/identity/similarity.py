"""Cosine similarity between L2-normalised embeddings, in chunks of bounded memory.

Decisions:
- Inputs are renormalised here (``normalize``) even though the store holds normalised vectors: a
  float16 store, a mean template or another feature group is not exactly unit length, and a
  cosine that drifts above 1 would move thresholds. Zero vectors stay zero (cosine 0 to all).
- ``topk`` never materialises the full probes x gallery matrix: it walks probe blocks and gallery
  blocks, keeps the best ``k`` per probe with ``argpartition`` on each block and merges them, so
  the temporary memory is ``probe_chunk x (gallery_chunk + k)`` floats whatever the gallery size.
- Ties in ``topk`` go to the lower gallery index (a stable sort on ``(-score, index)``), so the
  result does not depend on the chunk sizes.
- Arithmetic is float32, like the store; cosine is exact enough at that precision for thresholds
  reported to 4 decimals. The products themselves are summed in float64 and rounded to float32
  (``_cosines``): a float32 BLAS sums in an order that depends on where a row falls in its tile
  (seen on an AVX2 OpenBLAS: two identical gallery rows scored 1 ulp apart), so exact ties would
  depend on the chunking; after the rounding identical rows score identically.
"""

from __future__ import annotations

import numpy as np

DEFAULT_CHUNK = 2048


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); all-zero rows are left zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0).astype(np.float32)


def pairwise_cosine(a: np.ndarray, b: np.ndarray, *, chunk: int = 65536) -> np.ndarray:
    """Cosine of ``a[i]`` with ``b[i]`` for every row ``i`` (two aligned (n, d) arrays)."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"pairwise_cosine needs aligned arrays, got {a.shape} and {b.shape}")
    out = np.empty(len(a), dtype=np.float32)
    for start in range(0, len(a), chunk):
        sl = slice(start, start + chunk)
        out[sl] = np.einsum("ij,ij->i", normalize(a[sl]), normalize(b[sl]))
    return out


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b.T`` of normalised rows, summed in float64, as float32."""
    return (a.astype(np.float64) @ b.astype(np.float64).T).astype(np.float32)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The full (len(a), len(b)) cosine matrix; for small inputs and tests only."""
    return _cosines(normalize(a), normalize(b))


def topk(probes: np.ndarray, gallery: np.ndarray, k: int, *, probe_chunk: int = DEFAULT_CHUNK,
         gallery_chunk: int = DEFAULT_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar gallery rows for every probe.

    Returns ``(indices, scores)``, both (n_probes, k'), with ``k' = min(k, len(gallery))``, best
    first; ties go to the lower gallery index.
    """
    probes = np.asarray(probes)
    gallery = np.asarray(gallery)
    n_p, n_g = len(probes), len(gallery)
    k = min(int(k), n_g)
    if k < 1:
        raise ValueError("topk needs k >= 1 and a non-empty gallery")
    out_idx = np.empty((n_p, k), dtype=np.int64)
    out_score = np.empty((n_p, k), dtype=np.float32)
    for p0 in range(0, n_p, probe_chunk):
        p = normalize(probes[p0:p0 + probe_chunk])
        best_idx = np.empty((len(p), 0), dtype=np.int64)
        best_score = np.empty((len(p), 0), dtype=np.float32)
        for g0 in range(0, n_g, gallery_chunk):
            # Carry the running best into this block so one partition keeps the overall top k.
            sims = np.concatenate([best_score, _cosines(p, normalize(gallery[g0:g0 + gallery_chunk]))],
                                  axis=1)
            carried = best_idx.shape[1]
            pos = np.argpartition(-sims, k - 1, axis=1)[:, :k] if sims.shape[1] > k else \
                np.broadcast_to(np.arange(sims.shape[1]), sims.shape)
            score = np.take_along_axis(sims, pos, axis=1)
            # argpartition breaks ties at the k-th score arbitrarily; when a row has more
            # candidates equal to its k-th score than places, redo that row exactly so the
            # lower gallery index wins whatever the chunking.
            kth = score.min(axis=1, keepdims=True)
            tied = (sims >= kth).sum(axis=1) > k
            idx = _positions_to_index(pos, best_idx, carried, g0)
            for r in np.flatnonzero(tied):
                all_idx = _positions_to_index(np.arange(sims.shape[1])[None], best_idx[r:r + 1],
                                              carried, g0)[0]
                order = np.lexsort((all_idx, -sims[r]))[:k]
                score[r], idx[r] = sims[r, order], all_idx[order]
            best_score, best_idx = score, idx
        order = np.lexsort((best_idx, -best_score), axis=1)
        out_idx[p0:p0 + len(p)] = np.take_along_axis(best_idx, order, axis=1)
        out_score[p0:p0 + len(p)] = np.take_along_axis(best_score, order, axis=1)
    return out_idx, out_score


def _positions_to_index(pos: np.ndarray, carried_idx: np.ndarray, carried: int, g0: int
                        ) -> np.ndarray:
    """Column positions in ``[carried best | block]`` -> gallery row indices."""
    pos = np.asarray(pos)
    from_block = g0 + pos - carried
    if carried == 0:
        return from_block.astype(np.int64)
    rows = np.broadcast_to(np.arange(len(carried_idx))[:, None], pos.shape)
    prev = carried_idx[rows, np.minimum(pos, carried - 1)]
    return np.where(pos < carried, prev, from_block).astype(np.int64)
