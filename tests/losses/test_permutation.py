import doctest
import functools
import itertools

import pytest
import torch

import hubbub.losses.permutation
from hubbub.losses import (SI_SNR_FLOOR_DB, PITLoss, absent_source_loss, neg_si_snr, neg_snr, pairwise_loss_matrix,
                           pit, pit_from_matrix, reorder, si_snr)


def signals(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def noisy_estimates(ref, seed=1, level=0.1):
    """Estimates that match their references clearly better than any other (~20 dB)."""
    return ref + level * signals(*ref.shape, seed=seed)


def at_si_snr(ref, db, seed=2):
    """Estimates of exactly ``db`` dB SI-SNR: ref plus noise orthogonal to it, scaled."""
    ref = ref - ref.mean(-1, keepdim=True)
    noise = signals(*ref.shape, seed=seed)
    noise = noise - noise.mean(-1, keepdim=True)
    noise = noise - (noise * ref).sum(-1, keepdim=True) / ref.pow(2).sum(-1, keepdim=True) * ref
    gain = (ref.pow(2).sum(-1, keepdim=True) / noise.pow(2).sum(-1, keepdim=True) / 10 ** (db / 10)).sqrt()
    return ref + gain * noise


def brute_force(cost):
    """Every (value, assignment) of one (S_est, S_ref) numpy cost matrix, best first."""
    num_est, num_ref = cost.shape
    scored = [(cost[list(p), range(num_ref)].mean(), p) for p in itertools.permutations(range(num_est), num_ref)]
    return sorted(scored)


def test_docstring_examples():
    assert doctest.testmod(hubbub.losses.permutation).failed == 0


def test_pairwise_loss_matrix_scores_every_pair():
    est, ref = signals(2, 3, 500), signals(2, 4, 500, seed=1)
    cost = pairwise_loss_matrix(neg_si_snr, est, ref)
    assert cost.shape == (2, 3, 4)
    for b, i, j in itertools.product(range(2), range(3), range(4)):
        torch.testing.assert_close(cost[b, i, j], neg_si_snr(est[b, i], ref[b, j]))


@pytest.mark.parametrize("num_sources", [1, 2, 3, 5, 6, 7])
@pytest.mark.parametrize("method", ["auto", "exhaustive", "hungarian"])
def test_permuted_estimates_give_the_same_loss_and_are_reordered_back(num_sources, method):
    ref = signals(3, num_sources, 400)
    est = noisy_estimates(ref)
    loss, perm = pit(neg_si_snr, est, ref, method=method)
    torch.testing.assert_close(perm, torch.arange(num_sources).expand(3, -1))
    for b in range(3):
        torch.testing.assert_close(loss[b], neg_si_snr(est[b], ref[b]).mean())

    shuffles = torch.stack([torch.randperm(num_sources, generator=torch.Generator().manual_seed(b)) for b in range(3)])
    shuffled = reorder(est, shuffles)  # shuffled[b, i] = est[b, shuffles[b, i]]
    shuffled_loss, shuffled_perm = pit(neg_si_snr, shuffled, ref, method=method)
    torch.testing.assert_close(shuffled_loss, loss)
    assert torch.equal(reorder(shuffled, shuffled_perm), est)
    assert torch.equal(shuffles[torch.arange(3)[:, None], shuffled_perm], perm)


@pytest.mark.parametrize("num_est, num_ref", [(1, 1), (2, 2), (3, 2), (4, 4), (5, 3), (6, 6), (7, 7), (7, 4)])
def test_both_searches_agree_with_brute_force(num_est, num_ref):
    cost = signals(4, num_est, num_ref, seed=num_est * 10 + num_ref).double()
    for method in ("exhaustive", "hungarian"):
        loss, perm = pit_from_matrix(cost, method=method)
        for b in range(4):
            ranked = brute_force(cost[b].numpy())
            assert loss[b].item() == pytest.approx(ranked[0][0], abs=1e-12)
            if len(ranked) == 1 or ranked[1][0] - ranked[0][0] > 1e-9:  # assignment unique
                assert tuple(perm[b].tolist()) == ranked[0][1]


def test_surplus_estimates_pick_the_best_subset():
    ref = signals(2, 2, 400)
    matched = noisy_estimates(ref)
    decoys = signals(2, 2, 400, seed=5)
    est = torch.stack([decoys[:, 0], matched[:, 1], decoys[:, 1], matched[:, 0]], dim=1)  # (2, 4, T)
    for method in ("exhaustive", "hungarian"):
        loss, perm = pit(neg_si_snr, est, ref, method=method)
        assert perm.tolist() == [[3, 1], [3, 1]]
        assert torch.equal(reorder(est, perm), matched)
        torch.testing.assert_close(loss, neg_si_snr(matched, ref).mean(-1))
    with pytest.raises(ValueError, match="S_est >= S_ref"):
        pit(neg_si_snr, est[:, :1], ref)


def test_batch_elements_are_independent():
    ref = signals(4, 3, 400)
    est = signals(4, 3, 400, seed=1).requires_grad_()
    loss, perm = pit(neg_si_snr, est, ref)
    for b in range(4):
        alone_loss, alone_perm = pit(neg_si_snr, est[b:b + 1], ref[b:b + 1])
        torch.testing.assert_close(alone_loss[0], loss[b])
        assert torch.equal(alone_perm[0], perm[b])
    loss[1].backward()
    assert est.grad[1].abs().sum() > 0
    assert est.grad[[0, 2, 3]].abs().sum() == 0


@pytest.mark.parametrize("kind", ["si_snr", "snr"])
@pytest.mark.parametrize("zero_ref", ["energy", "ignore"])
def test_pit_loss_gradients_are_finite_with_absent_and_silent_signals(kind, zero_ref):
    ref = signals(3, 3, 400)
    mask = torch.tensor([[True, True, False], [True, False, False], [True, True, True]])
    ref = ref * mask[..., None]
    ref[2, 1] = 0  # present by the mask, silent in the crop
    est = signals(3, 3, 400, seed=1)
    est[0] = 0  # a silent output set
    est = est.bfloat16().requires_grad_()
    loss, perm = PITLoss(kind=kind, zero_ref=zero_ref)(est, ref.bfloat16(), source_mask=mask)
    loss.backward()
    assert loss.dtype == torch.float32 and loss.isfinite()
    assert est.grad.isfinite().all() and est.grad.abs().sum() > 0
    assert perm.shape == (3, 3)


def test_absent_references_train_their_estimates_to_silence():
    ref = signals(2, 3, 400)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    ref = ref * mask[..., None]
    mix = ref.sum(1)
    good = noisy_estimates(ref, level=0.01)  # 40 dB on present sources, silent where absent
    loud = good.clone()
    loud[0, 2] = 0.3 * mix[0]  # a surplus output that leaks the mixture
    criterion = PITLoss(kind="snr", tau=1e-3)
    good_loss, good_perm = criterion(good, ref, source_mask=mask, mix=mix)
    loud_loss, loud_perm = criterion(loud, ref, source_mask=mask, mix=mix.unsqueeze(1))
    assert good_loss < loud_loss
    assert good_perm.tolist() == loud_perm.tolist() == [[0, 1, 2], [0, 1, 2]]
    # A silent output on an absent reference costs the same as a present source at the 30 dB cap
    # (each is 10 log10(tau)), so absent slots neither dominate nor pay off more than separation.
    expected = torch.tensor([-30.0, -30.0, -30.0, -30.0, -30.0, -30.0]).mean()
    torch.testing.assert_close(good_loss, expected, atol=0.5, rtol=0)

    # With the mixture left out, the present references stand in for it.
    torch.testing.assert_close(criterion(loud, ref, source_mask=mask)[0], loud_loss)


def test_absent_source_costs_match_the_energy_convention():
    ref = signals(1, 2, 400)
    ref[0, 1] = 0
    mix = ref[0, 0] + 0.1 * signals(400, seed=3)
    est = signals(1, 2, 400, seed=1)
    criterion = PITLoss(kind="si_snr", tau=1e-3)
    loss, perm = criterion(est, ref, source_mask=torch.tensor([[True, False]]), mix=mix[None])
    cost = torch.stack([neg_si_snr(est[0], ref[0, 0]), absent_source_loss(est[0], mix, tau=1e-3)], dim=1)  # (2, 2)
    expected, _ = pit_from_matrix(cost[None])
    torch.testing.assert_close(loss, expected[0])


@pytest.mark.parametrize("method", ["exhaustive", "hungarian"])
def test_ignore_leaves_absent_references_out(method):
    ref = signals(2, 3, 400)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    ref = ref * mask[..., None]
    est = noisy_estimates(ref) + 5 * (~mask[..., None])  # garbage where absent
    loss, perm = PITLoss(kind="si_snr", zero_ref="ignore", method=method)(est, ref, source_mask=mask)
    present = pit(neg_si_snr, est[:1], ref[:1, [0, 2]])[0]
    full = pit(neg_si_snr, est[1:], ref[1:])[0]
    torch.testing.assert_close(loss, torch.cat([present, full]).mean())
    assert perm[0, [0, 2]].tolist() == [0, 2]


def test_pit_loss_of_the_references_is_minimal():
    ref = signals(2, 3, 400)
    criterion = PITLoss(kind="snr", tau=None)
    best, _ = criterion(ref, ref)
    for level in (1e-3, 1e-1):
        assert criterion(noisy_estimates(ref, level=level), ref)[0] > best


def test_pit_loss_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        PITLoss(kind="sdr")
    with pytest.raises(ValueError, match="zero_ref"):
        PITLoss(zero_ref="zero")
    with pytest.raises(ValueError, match="method"):
        PITLoss(method="greedy")
    with pytest.raises(ValueError, match="mix"):
        PITLoss()(signals(2, 2, 100), signals(2, 2, 100), mix=signals(2, 2, 100))


def test_the_mixit_recipe_in_the_docstring_scores_each_split():
    num_est = 3
    est, mixtures = signals(2, num_est, 300), signals(2, 2, 300, seed=1)
    loss_fn = functools.partial(neg_snr, tau=1e-3)
    subsets = torch.tensor(list(itertools.product([0.0, 1.0], repeat=num_est)))
    remixes = torch.einsum("km,bmt->bkt", subsets, est)
    cost = pairwise_loss_matrix(loss_fn, remixes, mixtures)
    total = cost[:, :, 0] + cost.flip(1)[:, :, 1]
    for k, subset in enumerate(subsets.bool()):
        direct = loss_fn(est[:, subset].sum(1), mixtures[:, 0]) + loss_fn(est[:, ~subset].sum(1), mixtures[:, 1])
        torch.testing.assert_close(total[:, k], direct)


@pytest.mark.parametrize("method", ["exhaustive", "hungarian"])
def test_a_silent_output_never_wins_over_a_real_estimate(method):
    ref = signals(2, 2, 400)
    good, poor = noisy_estimates(ref[:, 0]), at_si_snr(ref[:, 1], -5.0)   # ~20 dB, and -5 dB
    silent = torch.zeros_like(good)
    # 3 outputs for 2 references; the silent output sits where the identity would take it.
    est = torch.stack([torch.stack([good[0], silent[0], poor[0]]), torch.stack([silent[1], poor[1], good[1]])])
    torch.testing.assert_close(si_snr(poor, ref[:, 1]), torch.full((2,), -5.0), atol=1e-3, rtol=0)
    expected = torch.stack([neg_si_snr(good, ref[:, 0]), torch.full((2,), 5.0)], -1).mean(-1)
    loss, perm = pit(neg_si_snr, est, ref, method=method)
    assert perm.tolist() == [[0, 2], [2, 1]]
    torch.testing.assert_close(loss, expected, atol=1e-3, rtol=0)

    criterion = PITLoss(kind="si_snr", method=method)
    loss, perm = criterion(est, ref)
    assert perm.tolist() == [[0, 2], [2, 1]]
    torch.testing.assert_close(loss, expected.mean(), atol=1e-3, rtol=0)

    # Only when every real estimate is taken does silence get a present reference, at the floor.
    loss, perm = pit(neg_si_snr, est[:, :2], ref, method=method)
    assert perm.tolist() == [[0, 1], [0, 1]]
    torch.testing.assert_close(loss, torch.stack([neg_si_snr(good[0], ref[0, 0]), torch.tensor(5.0)])
                               / 2 - SI_SNR_FLOOR_DB / 2, atol=1e-3, rtol=0)


def test_a_silent_output_still_goes_to_an_absent_reference():
    ref = signals(1, 2, 400)
    ref[0, 1] = 0
    mix = ref[0, 0] + 0.3 * signals(400, seed=3)
    poor = at_si_snr(ref[:, 0], -5.0)
    est = torch.stack([torch.zeros_like(poor), poor, torch.zeros_like(poor)], 1).requires_grad_()
    loss, perm = PITLoss(kind="si_snr", tau=1e-3)(est, ref, source_mask=torch.tensor([[True, False]]), mix=mix[None])
    assert perm[0, 0] == 1 and perm[0, 1] in (0, 2)
    torch.testing.assert_close(loss, torch.tensor((5.0 - 30.0) / 2), atol=1e-3, rtol=0)
    loss.backward()
    assert est.grad.isfinite().all() and est.grad[0, 1].abs().sum() > 0


@pytest.mark.parametrize("kind", ["si_snr", "snr"])
def test_a_silent_output_assigned_to_a_present_reference_has_finite_gradients(kind):
    ref = signals(2, 2, 400)
    est = noisy_estimates(ref)
    est[1, 1] = 0
    est.requires_grad_()
    loss, perm = PITLoss(kind=kind)(est, ref)
    loss.backward()
    assert perm.tolist() == [[0, 1], [0, 1]]
    assert loss.isfinite() and est.grad.isfinite().all()
    assert est.grad[[0, 0, 1], [0, 1, 0]].abs().sum(-1).min() > 0
    if kind == "si_snr":  # silence costs the most SI-SNR can: -SI_SNR_FLOOR_DB
        costs = torch.cat([neg_si_snr(est[0], ref[0]), neg_si_snr(est[1, :1], ref[1, :1]),
                           torch.tensor([-SI_SNR_FLOOR_DB])])
        torch.testing.assert_close(loss, costs.mean())
