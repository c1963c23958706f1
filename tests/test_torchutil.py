"""The shared pieces of spreadcode's training loops (spreadcode/torchutil.py): the optimizer
and the precision of a training step, the epoch count under a time budget."""
import pytest
import torch

from spreadcode.torchutil import adam, bfloat16_native, mixed_precision, plan_epochs

CPU = torch.device("cpu")


def test_adam_steps_like_plain_adam():
    """Fused or not, `adam` takes the steps of torch's reference Adam, param groups too."""
    torch.manual_seed(0)
    start = [torch.randn(7, 5), torch.randn(5)]
    ours = [p.clone().requires_grad_() for p in start]
    reference = [p.clone().requires_grad_() for p in start]
    optimizer = adam([{"params": ours[:1], "lr": 0.01}, {"params": ours[1:]}], 0.1)
    expected = torch.optim.Adam([{"params": reference[:1], "lr": 0.01},
                                 {"params": reference[1:]}], lr=0.1)
    take_steps(ours, optimizer)
    take_steps(reference, expected)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert [g["lr"] for g in optimizer.param_groups] == [0.01, 0.1]


def test_adam_with_weight_decay_decays_the_matrices_only():
    """`adam(..., weight_decay)` steps like torch's reference AdamW that decays the weight
    matrices and neither the biases nor other vectors."""
    torch.manual_seed(0)
    start = [torch.randn(7, 5), torch.randn(5)]
    ours = [p.clone().requires_grad_() for p in start]
    reference = [p.clone().requires_grad_() for p in start]
    optimizer = adam(ours, 0.1, weight_decay=0.5)
    expected = torch.optim.AdamW([{"params": reference[:1], "weight_decay": 0.5},
                                  {"params": reference[1:], "weight_decay": 0.0}], lr=0.1)
    take_steps(ours, optimizer)
    take_steps(reference, expected)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.5, 0.0]
    assert not torch.allclose(ours[0], adam_steps_without_decay(start[0], start[1]))


def adam_steps_without_decay(matrix, vector):
    """The matrix after the same steps of plain Adam (lr 0.1): what decay must change."""
    params = [matrix.clone().requires_grad_(), vector.clone().requires_grad_()]
    take_steps(params, torch.optim.Adam(params, lr=0.1))
    return params[0].detach()


def take_steps(params, optimizer):
    """Five steps of ``optimizer`` on a loss of ``params`` [matrix (7, 5), vector (5,)] whose
    gradient changes from step to step."""
    for step in range(5):
        optimizer.zero_grad()
        ((params[0] @ params[1]).square().sum() + step * params[1].sum()).backward()
        optimizer.step()


@pytest.mark.parametrize("enabled", [False, True])
def test_mixed_precision_multiplies_in_bfloat16_only_where_native(enabled):
    a, b = torch.randn(4, 3), torch.randn(3, 2)
    with mixed_precision(CPU, enabled):
        product = a @ b
    bfloat16 = enabled and bfloat16_native(CPU)
    assert product.dtype == (torch.bfloat16 if bfloat16 else torch.float32)
    assert not torch.is_autocast_enabled("cpu")
    torch.testing.assert_close(product.float(), a @ b, rtol=2e-2, atol=2e-2)


def test_bfloat16_native_is_a_bool_for_every_device_kind():
    assert isinstance(bfloat16_native(CPU), bool)
    assert bfloat16_native(torch.device("meta")) is False


def test_epoch_planning_under_a_time_budget():
    # After the first epoch: what fits in the rest of the budget, at most the cap.
    assert plan_epochs(840.0, 30, elapsed=40.0, epoch_seconds=[20.0]) == 30
    assert plan_epochs(840.0, 30, elapsed=100.0, epoch_seconds=[60.0]) == 13
    assert plan_epochs(840.0, 30, elapsed=900.0, epoch_seconds=[900.0]) == 1
    assert plan_epochs(840.0, None, elapsed=40.0, epoch_seconds=[20.0]) == 41
    # Later: at the mean of the last three epochs, never more than planned before (the
    # schedule only moves forward), never fewer than have run.
    assert plan_epochs(100.0, None, elapsed=70.0, epoch_seconds=[10.0, 30.0, 30.0], planned=5) == 4
    assert plan_epochs(100.0, None, elapsed=100.0, epoch_seconds=[5.0, 30.0, 30.0, 30.0], planned=4) == 4
    assert plan_epochs(840.0, 30, elapsed=20.0, epoch_seconds=[10.0, 10.0], planned=10) == 10
    assert plan_epochs(100.0, 30, elapsed=250.0, epoch_seconds=[50.0] * 5, planned=8) == 5
