import numpy as np
import torch

from hf_isi.metrics.similarity import SimilarityAccumulator, centered_similarity


def reference_similarity(tokens: np.ndarray) -> float:
    """Direct O(N^2) mean pairwise cosine of centred tokens, averaged over images."""
    out = []
    for img in tokens:
        u = img - img.mean(0)
        v = u / np.linalg.norm(u, axis=1, keepdims=True)
        cos = v @ v.T
        n = len(v)
        out.append((cos.sum() - np.trace(cos)) / (n * (n - 1)))
    return float(np.mean(out))


def test_matches_pairwise_cosines(make_states):
    states = make_states(batch_size=5, grid=(3, 4), dim=7)
    acc = SimilarityAccumulator()
    acc.setup(states)
    acc.update(states)
    got = acc.compute()["centered_similarity"]
    want = [reference_similarity(states.patch_tokens(layer).numpy().astype(np.float64)) for layer in states.layers]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


def test_floor_for_equal_norm_cancelling_tokens():
    # N unit vectors summing to zero: regular simplex directions -> S = -1/(N-1)
    n = 5
    eye = torch.eye(n, dtype=torch.float64)
    simplex = eye - eye.mean(0)
    s = centered_similarity(simplex[None])
    np.testing.assert_allclose(s.numpy(), [-1 / (n - 1)], rtol=1e-12)


def test_streaming_equals_batch_and_merge(make_states):
    a, b = make_states(batch_size=4, seed=1), make_states(batch_size=3, seed=2)
    whole = SimilarityAccumulator()
    whole.setup(a)
    for s in (a, b):
        whole.update(s)
    left, right = SimilarityAccumulator(), SimilarityAccumulator()
    left.setup(a), right.setup(a)
    left.update(a), right.update(b)
    merged = left.merge(right).compute()["centered_similarity"]
    np.testing.assert_allclose(merged, whole.compute()["centered_similarity"], rtol=1e-12)
    both = torch.cat([a.patch_tokens(2), b.patch_tokens(2)]).numpy().astype(np.float64)
    np.testing.assert_allclose(merged[3], reference_similarity(both), rtol=1e-6)
