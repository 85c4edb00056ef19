import math

import pytest
import torch

from unipts.objectives import BaseDecayedKL, PlainKD

Z_S = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
Z_T = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])


def _softmax(row, t=1.0):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def _by_hand_dkl(zs, zt, T, tau):
    total = 0.0
    for s_row, t_row in zip(zs.tolist(), zt.tolist()):
        p, q = _softmax(t_row, T), _softmax(s_row)
        total += sum(pi * (math.log(pi) - math.log(qi) / tau) for pi, qi in zip(p, q))
    return T * T * total / len(zs)


@pytest.mark.parametrize("epoch", [0, 10, 99])
def test_dkl_value_matches_hand_computation(epoch):
    loss = BaseDecayedKL(teacher_temperature=4.0, tau0=8.0, gamma=0.99)
    tau = 8.0 * 0.99**epoch
    assert loss(Z_S, Z_T, epoch).item() == pytest.approx(_by_hand_dkl(Z_S, Z_T, 4.0, tau), rel=1e-5)


def test_dkl_gradient_is_scaled_q_minus_p():
    zs = Z_S.clone().requires_grad_(True)
    loss = BaseDecayedKL(teacher_temperature=4.0, tau0=8.0, gamma=0.99)
    loss(zs, Z_T, 5).backward()
    tau = 8.0 * 0.99**5
    p = torch.tensor([_softmax(r, 4.0) for r in Z_T.tolist()])
    q = torch.tensor([_softmax(r) for r in Z_S.tolist()])
    assert torch.allclose(zs.grad, 16.0 / (2 * tau) * (q - p), atol=1e-6)


def test_student_term_weight_grows_from_2_to_about_5_4():
    loss = BaseDecayedKL()
    assert 16 / loss.tau(0) == pytest.approx(2.0)
    assert 16 / loss.tau(99) == pytest.approx(5.4, abs=0.05)


def test_plain_kd_value_and_gradient():
    T = 4.0
    zs = Z_S.clone().requires_grad_(True)
    value = PlainKD(T)(zs, Z_T)
    expected = 0.0
    for s_row, t_row in zip(Z_S.tolist(), Z_T.tolist()):
        p, q = _softmax(t_row, T), _softmax(s_row, T)
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert value.item() == pytest.approx(T * T * expected / 2, rel=1e-5)
    value.backward()
    p = torch.tensor([_softmax(r, T) for r in Z_T.tolist()])
    q = torch.tensor([_softmax(r, T) for r in Z_S.tolist()])
    assert torch.allclose(zs.grad, T / 2 * (q - p), atol=1e-6)


def test_teacher_receives_no_gradient_and_bad_settings_fail():
    zt = Z_T.clone().requires_grad_(True)
    BaseDecayedKL()(Z_S.clone().requires_grad_(True), zt).backward()
    assert zt.grad is None
    with pytest.raises(ValueError, match="gamma"):
        BaseDecayedKL(gamma=1.5)
