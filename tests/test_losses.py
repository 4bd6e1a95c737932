"""The paper's losses: zero at the truth, invariances that eq. 8-9 promise, robustness."""

import torch

from mfnet_core.fit.losses import landmark_loss, offset_loss, regularisation
from mfnet_core.fit.solver import outlier_weights
from mfnet_core.inputs.landmarks import EYELID_PAIRS, LIP_PAIRS


def _lmk(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 68, 2, generator=g) * 400 + 300


def test_landmark_loss_zero_at_truth_and_scale_invariant():
    det = _lmk()
    w = torch.ones(2, 68)
    s = torch.tensor([200.0, 200.0])
    assert landmark_loss(det, det, w, s) < 1e-6
    pred = det + 2.0
    l1 = landmark_loss(pred, det, w, s)
    l2 = landmark_loss(pred * 2, det * 2, w, s * 2)  # same photo at twice the resolution
    assert l1 > 0
    torch.testing.assert_close(l1, l2)


def test_offset_losses_ignore_shared_shift_but_see_opening():
    det = _lmk()
    w = torch.ones(2, 68)
    s = torch.tensor([200.0, 200.0])
    shifted = det + torch.tensor([5.0, -3.0])
    assert offset_loss(shifted, det, EYELID_PAIRS, w, s) < 1e-6
    assert offset_loss(shifted, det, LIP_PAIRS, w, s) < 1e-6
    opened = det.clone()
    opened[:, 66, 1] += 10  # lower inner lip moves down: the mouth opens
    assert offset_loss(opened, det, LIP_PAIRS, w, s) > 0.01
    assert offset_loss(opened, det, EYELID_PAIRS, w, s) < 1e-6


def test_outlier_weights_downweight_only_the_outlier():
    res = torch.full((1, 68), 1.0)
    res[0, 10] = 40.0
    w = outlier_weights(res, torch.tensor([200.0]))
    assert w[0, 10] < 0.1
    assert torch.all(w[0, :10] == 1) and torch.all(w[0, 11:] == 1)


def test_regularisation_is_squared_norm():
    assert regularisation(torch.ones(1, 4), torch.ones(1, 2) * 2) == 4 + 8
