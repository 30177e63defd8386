"""Chunked cosine similarity and top-k search equal the full matrix computation."""

import numpy as np
import pytest

from faceprobe.identity.similarity import cosine_matrix, normalize, pairwise_cosine, topk


def _reference_topk(full, k):
    idx = np.broadcast_to(np.arange(full.shape[1]), full.shape)
    order = np.lexsort((idx, -full), axis=1)[:, :k]
    return order, np.take_along_axis(full, order, axis=1)


def test_pairwise_equals_diagonal_of_full_matmul():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((37, 16)), rng.standard_normal((37, 16))
    full = normalize(a) @ normalize(b).T
    np.testing.assert_allclose(pairwise_cosine(a, b, chunk=5), np.diag(full), atol=1e-6)
    with pytest.raises(ValueError):
        pairwise_cosine(a, b[:3])


def test_normalize_leaves_zero_rows_zero():
    x = normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(x, [[0.6, 0.8], [0.0, 0.0]])


@pytest.mark.parametrize("probe_chunk,gallery_chunk", [(7, 5), (1, 1), (1000, 13), (64, 1000)])
@pytest.mark.parametrize("k", [1, 3, 5, 500])
def test_topk_equals_full_matmul_whatever_the_chunks(k, probe_chunk, gallery_chunk):
    rng = np.random.default_rng(1)
    probes, gallery = rng.standard_normal((40, 8)), rng.standard_normal((97, 8))
    gallery[[10, 40, 90]] = gallery[3]  # exact ties: the lower index must win in every chunking
    probes[0] = gallery[3]
    full = cosine_matrix(probes, gallery)
    ref_idx, ref_score = _reference_topk(full, min(k, 97))
    idx, score = topk(probes, gallery, k, probe_chunk=probe_chunk, gallery_chunk=gallery_chunk)
    assert idx.shape == (40, min(k, 97))
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(score, ref_score, atol=1e-6)
    assert idx[0, :4].tolist()[:min(k, 4)] == [3, 10, 40, 90][:min(k, 4)]
