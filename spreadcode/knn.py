"""Exact k-nearest-neighbour search by blocked brute force (torch matmul).

Training needs the k_pos input-space neighbours of every learn vector once, and the k_neg-th
output-space neighbour of every catalyzed vector at each epoch; validation needs exact ground
truth. All of them are ``exact_knn``: squared L2 distances computed one (query block × database
block) tile at a time, so memory stays bounded (``query_block × db_block`` scores) whatever the
sizes, 1M × 1M included. Ties are broken towards the lower database id, so results are
deterministic.
"""
import numpy as np
import torch

from spreadcode.errors import SpreadcodeError


def _as_tensor(array, name):
    """numpy array or tensor -> float tensor (n, d); float64 stays float64, the rest float32."""
    tensor = torch.from_numpy(np.ascontiguousarray(array)) if isinstance(array, np.ndarray) else array
    if tensor.ndim != 2:
        raise SpreadcodeError(f"{name} must be a 2-D array (n, d), got shape {tuple(tensor.shape)}")
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def _block_candidates(scores, k):
    """The k smallest scores of each row of one tile, ordered by (score, column).

    scores: float (nq, nb) -> (values (nq, k), columns int64 (nq, k)). ``topk`` picks arbitrarily
    among equal values, so rows where the (k+1)-th smallest equals the k-th (a tie straddling the
    cut) are redone with a stable full sort, which keeps the lower column first.
    """
    take = min(k + 1, scores.shape[1])
    values, columns = torch.topk(scores, take, dim=1, largest=False, sorted=True)
    if take > k:
        straddling = torch.nonzero(values[:, k - 1] == values[:, k]).flatten()
        values, columns = values[:, :k].clone(), columns[:, :k].clone()
        if straddling.numel():
            redo_values, redo_columns = torch.sort(scores[straddling], dim=1, stable=True)
            values[straddling] = redo_values[:, :k]
            columns[straddling] = redo_columns[:, :k]
    # Order equal values inside the selection by column: sort by column, then stably by value.
    columns, by_column = torch.sort(columns, dim=1)
    values = torch.gather(values, 1, by_column)
    values, by_value = torch.sort(values, dim=1, stable=True)
    return values, torch.gather(columns, 1, by_value)


def exact_knn(db, queries, k, exclude_self=False, query_block=1024, db_block=65536):
    """Exact k nearest neighbours of each query among ``db`` in squared L2 distance.

    db: float (n, d); queries: float (nq, d), numpy arrays or torch tensors (computed on the
    device of ``db`` when tensors; float64 inputs are computed in float64, others in float32).
    ``exclude_self``: queries are the database itself (nq == n) and row i never returns id i.
    Returns (distances (nq, k) ascending squared L2, ids int64 (nq, k)), numpy arrays when ``db``
    is a numpy array, tensors otherwise. Ties go to the lower id. Memory: one
    ``query_block × db_block`` score tile plus the (query_block, 2k) running best.
    """
    as_numpy = isinstance(db, np.ndarray)
    db = _as_tensor(db, "database")
    queries = _as_tensor(queries, "queries").to(device=db.device, dtype=db.dtype)
    n, nq = db.shape[0], queries.shape[0]
    if queries.shape[1] != db.shape[1]:
        raise SpreadcodeError(
            f"queries have dimension {queries.shape[1]} but the database has {db.shape[1]}")
    if exclude_self and nq != n:
        raise SpreadcodeError(f"exclude_self needs the queries to be the database ({nq} != {n} rows)")
    available = n - 1 if exclude_self else n
    if not 1 <= k <= available:
        raise SpreadcodeError(f"k={k} nearest neighbours requested but only {available} candidates exist")

    db_sq_norms = (db * db).sum(dim=1)
    all_values = torch.empty((nq, k), dtype=db.dtype, device=db.device)
    all_ids = torch.empty((nq, k), dtype=torch.int64, device=db.device)
    for q_start in range(0, nq, query_block):
        q = queries[q_start:q_start + query_block]
        best_values = best_ids = None
        for b_start in range(0, n, db_block):
            b_stop = min(b_start + db_block, n)
            # ||x||^2 - 2 <q, x>: the squared distance minus the per-query constant ||q||^2.
            scores = torch.addmm(db_sq_norms[b_start:b_stop][None, :], q, db[b_start:b_stop].T,
                                 beta=1.0, alpha=-2.0)
            if exclude_self:
                rows = torch.arange(q.shape[0], device=db.device)
                own = rows + q_start - b_start
                inside = (own >= 0) & (own < b_stop - b_start)
                scores[rows[inside], own[inside]] = torch.inf
            values, columns = _block_candidates(scores, min(k, b_stop - b_start))
            ids = columns + b_start
            if best_values is None:
                best_values, best_ids = values, ids
            else:
                # Earlier blocks hold lower ids and both parts are (value, id)-ordered, so a
                # stable sort on the value alone keeps ties ordered by id.
                merged_values = torch.cat([best_values, values], dim=1)
                merged_ids = torch.cat([best_ids, ids], dim=1)
                merged_values, order = torch.sort(merged_values, dim=1, stable=True)
                best_values = merged_values[:, :k]
                best_ids = torch.gather(merged_ids, 1, order[:, :k])
        q_sq_norms = (q * q).sum(dim=1, keepdim=True)
        all_values[q_start:q_start + query_block] = (best_values + q_sq_norms).clamp_(min=0)
        all_ids[q_start:q_start + query_block] = best_ids
    if as_numpy:
        return all_values.float().cpu().numpy(), all_ids.cpu().numpy()
    return all_values.float(), all_ids
