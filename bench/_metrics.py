"""Measurements on the geometry of a space (recall itself is `spreadcode.search.recall_at`).

* ``neighbor_distances`` / ``prob_first_exceeds_kth``: Figure 3 and the §3.3 statistic: how
  often a point's nearest neighbour is farther than another point's 100th neighbour. A
  space where this is rare lets one global threshold separate neighbours from the rest.
* ``range_agreement``: Appendix C: how many results per query a range search with one
  global radius ε must return for the true nearest neighbour to be among them.
"""
import numpy as np

from spreadcode.knn import exact_knn

RANGE_TARGET_RECALLS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def neighbor_distances(base, query, k):
    """L2 distances from every query to its 1st and k-th nearest base vector.

    base: float32 (n, d); query: float32 (nq, d) -> (first, kth) float32 (nq,) each.
    """
    squared, _ = exact_knn(base, query, k)
    return np.sqrt(squared[:, 0]), np.sqrt(squared[:, k - 1])


def prob_first_exceeds_kth(first, kth):
    """P(d_1(x) > d_k(y)) over ordered pairs of distinct points x != y.

    first, kth: float (n,) per-point distances to the 1st and k-th neighbour. The pair
    x == y never counts (d_1(x) <= d_k(x)), so dividing by n (n - 1) is exact.
    """
    n = len(first)
    below = np.searchsorted(np.sort(kth), first, side="left")
    return float(below.sum() / (n * (n - 1)))


def range_agreement(base, query, true_nn, target_recalls=RANGE_TARGET_RECALLS, block=512):
    """Range search with one global radius per target recall of the true nearest neighbour.

    base: float32 (n, d), query: float32 (nq, d), both in the space under study;
    true_nn: int64 (nq,) ids of each query's nearest neighbour in the *input* space.
    For each target p, ε is the p-quantile of the distance from a query to its true
    neighbour, so that share p of the queries find it within ε. Returns a list of
    {target_recall, epsilon, recall, mean_results}: recall measured at ε and the mean
    number of base vectors within ε of a query. Distances are computed exactly in blocks
    of ``block`` queries (memory: block × n floats).
    """
    nn_distance = np.linalg.norm(query - base[true_nn], axis=1)
    epsilons = np.quantile(nn_distance, target_recalls)
    squared_eps = epsilons ** 2
    base_sq = np.einsum("ij,ij->i", base, base)
    counts = np.zeros(len(epsilons), dtype=np.int64)
    for start in range(0, query.shape[0], block):
        q = query[start:start + block]
        squared = base_sq[None, :] - 2.0 * (q @ base.T) + np.einsum("ij,ij->i", q, q)[:, None]
        for j, threshold in enumerate(squared_eps):
            counts[j] += np.count_nonzero(squared <= threshold)
    return [{"target_recall": float(p), "epsilon": float(eps),
             "recall": float(np.mean(nn_distance <= eps)),
             "mean_results": float(count / query.shape[0])}
            for p, eps, count in zip(target_recalls, epsilons, counts)]
