"""The catalyzer's training losses (Sablayrolles et al., ICLR 2019, §3-4): the triplet rank loss
that keeps neighbourhoods, the KoLeo entropy regulariser that spreads the outputs, and the
straight-through quantizer through which end-to-end training and fine-tuning see the codes;
and the residual model's measure of how crowded a decoded vector's neighbourhood is."""
import numpy as np
import torch

from spreadcode.errors import SpreadcodeError


def koleo_loss(y):
    """KoLeo entropy regulariser: −mean_i log(min_{j≠i} ‖y_i − y_j‖).

    y: float tensor (n, d), n ≥ 2 -> scalar tensor. The nearest neighbour is found on Gram
    products without gradient, the distance itself is recomputed from the difference (exact for
    close pairs); 1e-8 inside the log keeps duplicates finite.
    """
    if y.shape[0] < 2:
        raise SpreadcodeError("KoLeo needs at least 2 vectors in a batch")
    with torch.no_grad():
        gram = y @ y.T
        sq_norms = gram.diagonal()
        sq_dist = sq_norms[:, None] + sq_norms[None, :] - 2 * gram
        sq_dist.fill_diagonal_(torch.inf)
        nearest = sq_dist.argmin(dim=1)
    distance = torch.linalg.vector_norm(y - y[nearest], dim=1)
    return -torch.log(distance + 1e-8).mean()


def crowding(unit_rows, bank, k):
    """How crowded each row's neighbourhood is: the mean cosine of each unit row of
    ``unit_rows`` float tensor (n, d) to its ``k`` nearest rows of ``bank`` (m, d; unit rows,
    m ≥ k) -> float tensor (n,)."""
    return (unit_rows @ bank.T).topk(k, dim=1).values.mean(1)


def triplet_rank_loss(anchor, positive, negative, reduction="mean"):
    """Triplet rank loss without margin: max(0, ‖a − p‖ − ‖a − n‖) per row.

    anchor, positive, negative: float tensors (n, d) -> scalar mean (``reduction="mean"``)
    or per-triplet values (n,) (``"none"``); a value > 0 marks an offending triplet.
    """
    per_triplet = (torch.linalg.vector_norm(anchor - positive, dim=1)
                   - torch.linalg.vector_norm(anchor - negative, dim=1)).clamp(min=0)
    return per_triplet.mean() if reduction == "mean" else per_triplet


def straight_through(y, quantizer):
    """Forward: the quantizer's reconstruction (nearest lattice point / r, or signs / √d);
    backward: identity (paper §4.2). y: float tensor (n, d_out) -> same shape."""
    snapped = quantizer.reconstruct(quantizer.quantize(y.detach().float().cpu().numpy()))
    return y + (torch.from_numpy(np.ascontiguousarray(snapped, dtype=np.float32)).to(y.device) - y).detach()
