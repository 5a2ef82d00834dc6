import itertools
import math

import pytest
import torch

from hubbub.losses import MIXIT_TAU, MixITLoss, mixit, mixit_assignments, mixture_consistency, neg_snr

FLOOR = 10 * math.log10(MIXIT_TAU)   # -30 dB


def _two_mixtures(batch=3, per_mix=(2, 2), length=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    sources = torch.randn(batch, sum(per_mix), length, generator=g)
    a = sources[:, :per_mix[0]].sum(1)
    b = sources[:, per_mix[0]:].sum(1)
    return sources, torch.stack([a, b], 1)


def test_assignment_table_covers_every_split_once():
    table = mixit_assignments(4, 2)
    assert table.shape == (16, 2, 4)
    assert torch.all(table.sum(1) == 1)                     # every estimate goes to one mixture
    assert len({tuple(t.argmax(0).tolist()) for t in table}) == 16


@pytest.mark.parametrize("order", list(itertools.permutations(range(4)))[::5])
def test_true_sources_in_any_order_reach_the_floor(order):
    sources, mixtures = _two_mixtures()
    loss, assignment = mixit(sources[:, list(order)], mixtures)
    assert torch.allclose(loss, torch.full_like(loss, FLOOR), atol=1e-3)
    # each estimate is sent to the mixture its source came from
    origin = torch.tensor([0, 0, 1, 1])[list(order)]
    assert torch.equal(assignment, origin.expand_as(assignment))


def test_surplus_silent_outputs_and_one_speaker_mixtures_reach_the_floor():
    sources, mixtures = _two_mixtures(per_mix=(1, 2))
    est = torch.cat([torch.zeros_like(sources[:, :2]), sources.flip(1)], 1)     # 5 outputs, 2 silent
    loss, _ = mixit(est, mixtures)
    assert torch.allclose(loss, torch.full_like(loss, FLOOR), atol=1e-3)


def test_matches_brute_force_over_materialised_remixes():
    _, mixtures = _two_mixtures(batch=4, seed=1)
    est = torch.randn(4, 4, 4000, generator=torch.Generator().manual_seed(2))
    loss, assignment = mixit(est, mixtures)
    table = mixit_assignments(4, 2)
    remixes = torch.einsum("knm,bmt->bknt", table, est)                          # (B, K, 2, T)
    brute = neg_snr(remixes, mixtures[:, None], tau=MIXIT_TAU).mean(-1)          # (B, K)
    assert torch.allclose(loss, brute.min(-1).values, atol=1e-4)
    chosen = table[brute.argmin(-1)].argmax(1)
    assert torch.equal(assignment, chosen)


def test_gradients_reach_every_estimate_and_silent_mixture_is_finite():
    sources, mixtures = _two_mixtures(batch=2)
    mixtures[1, 1] = 0                                       # a silent segment
    est = torch.randn(2, 4, 4000, requires_grad=True)
    loss, _ = MixITLoss()(est, mixtures)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(est.grad).all()
    assert (est.grad.abs().sum(-1) > 0).all()


def test_too_many_outputs_is_a_clear_error():
    with pytest.raises(ValueError, match="assignments"):
        mixit_assignments(13, 2)


def test_mixture_consistency_adds_up_to_the_mixture():
    est = torch.randn(2, 4, 1000)
    mix = torch.randn(2, 1000)
    for weights in (None, torch.softmax(torch.randn(2, 4), -1), torch.softmax(torch.randn(2, 4, 1000), 1)):
        out = mixture_consistency(est, mix, weights)
        assert torch.allclose(out.sum(1), mix, atol=1e-5)
    # estimates that already add up are left unchanged
    assert torch.allclose(mixture_consistency(est, est.sum(1)), est, atol=1e-6)


def test_a_silent_remix_scores_its_true_snr_and_loses_to_a_closer_estimate():
    # Unlike SI-SNR (which needs a floor for silence), the SNR of silence is defined: the error is
    # the whole mixture, 0 dB, here less the threshold's 10 log10(1 + tau). No eps artefact.
    _, mixtures = _two_mixtures()
    silent = torch.zeros(3, 3, 4000, requires_grad=True)
    loss, _ = mixit(silent, mixtures)
    torch.testing.assert_close(loss, torch.full((3,), 10 * math.log10(1 + MIXIT_TAU)))
    loss.sum().backward()
    assert silent.grad.isfinite().all()

    # So an estimate closer to a mixture than silence is (0.5 x: +6 dB) is sent to it rather than
    # left out, wherever the silent output sits.
    x0, x1 = mixtures[:, 0], mixtures[:, 1]
    for order in ([0, 1, 2], [1, 2, 0]):
        est = torch.stack([torch.zeros_like(x0), 0.5 * x0, x1], 1)[:, order]
        loss, assignment = mixit(est, mixtures)
        real = [order.index(1), order.index(2)]
        assert assignment[:, real].tolist() == [[0, 1]] * 3
        expected = (neg_snr(0.5 * x0, x0, tau=MIXIT_TAU) + FLOOR) / 2
        torch.testing.assert_close(loss, expected, atol=1e-4, rtol=0)
        assert (loss < 10 * math.log10(1 + MIXIT_TAU)).all()


def test_all_silent_inputs_and_outputs_have_finite_gradients_and_silence_is_best():
    mixtures = torch.zeros(1, 2, 1000)                       # a silent crop: both mixtures silent
    silent = torch.zeros(1, 3, 1000, requires_grad=True)
    loss, _ = mixit(silent, mixtures)
    loss.backward()
    assert loss.isfinite().all() and silent.grad.isfinite().all()
    quiet = 1e-3 * torch.randn(1, 3, 1000, generator=torch.Generator().manual_seed(0))
    assert (mixit(quiet, mixtures)[0] > loss).all()
