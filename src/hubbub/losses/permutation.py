"""Permutation-invariant training (PIT): score estimates under their best assignment to references.

The pipeline, for estimates ``est`` (B, S_est, T) and references ``ref`` (B, S_ref, T):

1. :func:`pairwise_loss_matrix` evaluates a loss for every (estimate, reference) pair in one
   broadcast call: ``cost`` (B, S_est, S_ref).
2. :func:`pit_from_matrix` finds, per batch element, the assignment of distinct estimates to the
   references with the lowest total cost, and gathers the loss from ``cost`` (so it stays
   differentiable). ``S_est > S_ref`` picks the best subset of estimates.
3. :func:`reorder` puts the estimates in reference order with the returned ``perm``.

:func:`pit` chains 1 and 2; :class:`PITLoss` adds the convention for absent references (variable
speaker counts, padded with zero sources) and is what a trainer uses.

Absent references (``zero_ref="energy"``, the default): a reference is absent when
``source_mask`` says so or when it is all zero. SI-SNR and SNR are meaningless against silence
(0/0, or eps-driven values near ±100 dB whose gradients swamp the batch), so the estimate assigned
to an absent reference is scored by :func:`~hubbub.losses.ratios.absent_source_loss`,
``10 log10(||est||² / ||mix||² + tau)``: its energy relative to the mixture, as Wisdom et al. 2020
(MixIT) do for zero references. This trains surplus outputs towards silence, so at inference the
number of speakers can be read off the output energies; the penalty bottoms out at the same
``10 log10(tau)`` (-30 dB) as the thresholded SNR, so a silent output never outweighs a present
source. ``zero_ref="ignore"`` instead leaves the estimates of absent references unconstrained:
absent columns neither steer the assignment nor enter the mean.

Silent estimates against present references: :func:`~hubbub.losses.ratios.si_snr` gives an
all-zero (or below-``eps``) estimate its floor, ``SI_SNR_FLOOR_DB`` = -100 dB (a cost of +100 dB),
so with surplus outputs a silent one is assigned to a present reference only when every real
estimate is taken, however poor they are (one at -5 dB SI-SNR beats silence). Under ``kind="snr"``
silence scores its true SNR, 0 dB, so an estimate farther from the reference than silence
(SNR below 0 dB) loses to it, as that metric says it should.
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from hubbub.losses.ratios import absent_source_loss, neg_si_snr, neg_snr

# A loss over the last (time) axis that broadcasts the others: (..., T), (..., T) -> (...).
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Above this many candidate assignments (S_est! / (S_est - S_ref)!; 120 is 5 sources) the search
# switches to the Hungarian algorithm: the exhaustive table grows factorially (8 sources: 40320 x 8
# per batch element), while the Hungarian one costs a device-to-host copy and a Python loop over
# the batch.
MAX_EXHAUSTIVE_ASSIGNMENTS = 120

METHODS = ("auto", "exhaustive", "hungarian")


def pairwise_loss_matrix(loss_fn: LossFn, est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``cost[b, i, j] = loss_fn(est[b, i], ref[b, j])`` for every pair, in one broadcast call.

    Args:
        loss_fn: a loss over the last axis that broadcasts the others, such as
            :func:`~hubbub.losses.ratios.neg_si_snr` or ``functools.partial(neg_snr, tau=1e-3)``.
        est: (B, N, T) candidate signals.
        ref: (B, R, T) target signals; N and R are independent.

    Returns:
        (B, N, R) cost matrix. Costs B·N·R·T elements per temporary of ``loss_fn`` (the price of
        the exact residual; computing it from inner products instead cancels to rounding noise in
        float32 and TF32 for good estimates).

    Example, PIT with 3 sources::

        cost = pairwise_loss_matrix(neg_si_snr, est, ref)            # (B, 3, 3)

    Example, MixIT over M estimates and two mixtures (the 2^M assignments of estimates to
    mixtures are the 2^M subsets sent to mixture 0, their complements to mixture 1)::

        subsets = torch.tensor(list(itertools.product([0.0, 1.0], repeat=M)))   # (K = 2^M, M)
        remixes = torch.einsum("km,bmt->bkt", subsets, est)                     # (B, K, T)
        cost = pairwise_loss_matrix(loss_fn, remixes, mixtures)                 # (B, K, 2)
        total = cost[:, :, 0] + cost.flip(1)[:, :, 1]    # subset K-1-k is the complement of k
    """
    if est.dim() != 3 or ref.dim() != 3 or est.shape[0] != ref.shape[0] or est.shape[-1] != ref.shape[-1]:
        raise ValueError(f"expected est (B, N, T) and ref (B, R, T), got {tuple(est.shape)} and {tuple(ref.shape)}")
    return loss_fn(est.unsqueeze(2), ref.unsqueeze(1))


@functools.lru_cache(maxsize=32)
def _assignments(num_est: int, num_ref: int, device: torch.device) -> torch.Tensor:
    """(P, num_ref) every ordered choice of distinct estimates, identity first (wins ties)."""
    table = list(itertools.permutations(range(num_est), num_ref))
    return torch.tensor(table, dtype=torch.int64, device=device)


def _resolve_method(method: str, num_est: int, num_ref: int) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method != "auto":
        return method
    num_assignments = math.perm(num_est, num_ref)
    return "exhaustive" if num_assignments <= MAX_EXHAUSTIVE_ASSIGNMENTS else "hungarian"


def pit_from_matrix(cost: torch.Tensor, mask: torch.Tensor | None = None,
                    method: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The best assignment of estimates to references for a precomputed pairwise cost matrix.

    Args:
        cost: (B, S_est, S_ref) with S_est ≥ S_ref, ``cost[b, i, j]`` the loss of estimate i
            against reference j (:func:`pairwise_loss_matrix`).
        mask: (B, S_ref) bool, False for references to leave out: they do not steer the
            assignment and do not enter the mean (their estimate is whichever is left over).
            Their cost entries must still be finite, or NaN reaches the gradients.
        method: "exhaustive" scores every assignment on the cost's device (vectorised); "hungarian"
            runs ``scipy.optimize.linear_sum_assignment`` per batch element on the CPU (a
            device-to-host sync); "auto" picks exhaustive up to
            :data:`MAX_EXHAUSTIVE_ASSIGNMENTS` candidates. Both find an optimal assignment; where
            several tie they may return different ones.

    Returns:
        loss: (B,) mean cost of the assigned pairs over the kept references (0 where none is
            kept), differentiable with respect to ``cost``.
        perm: (B, S_ref) int64, ``perm[b, j]`` the estimate assigned to reference j.

    Example::

        >>> cost = torch.tensor([[[5.0, 1.0], [2.0, 7.0]]])     # estimate 1 fits reference 0
        >>> pit_from_matrix(cost)
        (tensor([1.5000]), tensor([[1, 0]]))
    """
    if cost.dim() != 3 or cost.shape[1] < cost.shape[2]:
        raise ValueError(f"expected cost (B, S_est, S_ref) with S_est >= S_ref, got {tuple(cost.shape)}")
    batch, num_est, num_ref = cost.shape
    search = cost.detach()
    if mask is not None:
        mask = mask.to(device=cost.device, dtype=torch.bool)
        search = search.masked_fill(~mask.unsqueeze(1), 0)

    if _resolve_method(method, num_est, num_ref) == "exhaustive":
        candidates = _assignments(num_est, num_ref, cost.device)                      # (P, S_ref)
        totals = search[:, candidates, torch.arange(num_ref, device=cost.device)].sum(-1)  # (B, P)
        perm = candidates[totals.argmin(-1)]
    else:
        host = search.float().cpu().numpy()  # sync point on GPU
        # Rows are references (S_ref ≤ S_est), so every reference gets one distinct estimate.
        perm = torch.from_numpy(np.stack([linear_sum_assignment(host[b].T)[1] for b in range(batch)]))
        perm = perm.to(device=cost.device, dtype=torch.int64)

    picked = cost.gather(1, perm.unsqueeze(1)).squeeze(1)                             # (B, S_ref)
    if mask is None:
        return picked.mean(-1), perm
    return picked.masked_fill(~mask, 0).sum(-1) / mask.sum(-1).clamp(min=1), perm


def pit(loss_fn: LossFn, est: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None = None,
        method: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Permutation-invariant loss: ``loss_fn`` averaged over the references under the best assignment.

    Args:
        loss_fn: a loss over the last axis that broadcasts the others (lower is better), e.g.
            :func:`~hubbub.losses.ratios.neg_si_snr`; evaluated once on all pairs.
        est: (B, S_est, T) estimates.
        ref: (B, S_ref, T) references, S_ref ≤ S_est (surplus estimates are left unassigned).
        mask: (B, S_ref) bool, False for references to leave out (see :func:`pit_from_matrix`).
        method: "auto", "exhaustive" or "hungarian" (see :func:`pit_from_matrix`).

    Returns:
        loss (B,) and perm (B, S_ref), ``perm[b, j]`` the estimate assigned to reference j.

    Example::

        loss, perm = pit(neg_si_snr, est, ref)        # est, ref (B, 3, T)
        loss.mean().backward()
        ordered = reorder(est, perm)                  # ordered[:, j] estimates ref[:, j]
    """
    return pit_from_matrix(pairwise_loss_matrix(loss_fn, est, ref), mask=mask, method=method)


def reorder(est: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Estimates in reference order: ``out[b, j] = est[b, perm[b, j]]``.

    Args:
        est: (B, S_est, ...) estimates (any trailing axes).
        perm: (B, S_ref) int64 from :func:`pit` or :class:`PITLoss`.

    Returns:
        (B, S_ref, ...); surplus estimates (S_est > S_ref) are dropped.
    """
    return est[torch.arange(est.shape[0], device=est.device)[:, None], perm]


class PITLoss(nn.Module):
    """PIT loss for separation training, with variable speaker counts.

    Args:
        kind: "si_snr" (negative SI-SNR) or "snr" (negative SNR with soft threshold ``tau``).
        tau: soft threshold, ``10 ** (-max_db / 10)``: caps the SNR of "snr" at ``-10 log10(tau)``
            dB and is the floor of the absent-reference penalty for both kinds; None or 0 removes it.
        zero_ref: what absent references cost. "energy": the assigned estimate's energy relative to
            the mixture, :func:`~hubbub.losses.ratios.absent_source_loss` (trains surplus outputs to
            silence); "ignore": nothing, they are left out of the assignment and the mean. See the
            module docstring for why "energy" is the default.
        method: assignment search, "auto", "exhaustive" or "hungarian" (:func:`pit_from_matrix`).
        eps: absolute energy that keeps every ratio finite for silent signals.

    ``forward(est, ref, source_mask=None, mix=None) -> (loss, perm)``:

    * est (B, S_est, T), ref (B, S_ref, T) with S_est ≥ S_ref; any float dtype (computed in float32).
    * source_mask (B, S_ref) bool, True for present references (``collate_mixtures``'s
      ``source_mask``). An all-zero reference counts as absent too, mask or not: a speaker silent
      throughout the crop has silence as its target.
    * mix (B, T) or (B, 1, T), the mixture the absent-reference penalty is relative to; defaults to
      the sum of the present references (the mixture without its noise).
    * loss: scalar, the mean over the batch of each element's mean over its S_ref references
      (over its present ones with "ignore"). perm: (B, S_ref), see :func:`reorder`.

    Example::

        criterion = PITLoss(kind="snr", tau=1e-3)                     # MixIT-style 30 dB cap
        loss, perm = criterion(model(batch["mix"]), batch["sources"]["reverberant"],
                               source_mask=batch["source_mask"], mix=batch["mix"])
        loss.backward()
    """

    KINDS = ("si_snr", "snr")
    ZERO_REFS = ("energy", "ignore")

    def __init__(self, kind: str = "si_snr", tau: float | None = 1e-3, zero_ref: str = "energy",
                 method: str = "auto", eps: float = 1e-8):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        if zero_ref not in self.ZERO_REFS:
            raise ValueError(f"zero_ref must be one of {self.ZERO_REFS}, got {zero_ref!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if tau is not None and tau < 0:
            raise ValueError(f"tau must be >= 0, got {tau}")
        self.kind, self.tau, self.zero_ref, self.method, self.eps = kind, tau or 0.0, zero_ref, method, eps

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, tau={self.tau}, zero_ref={self.zero_ref!r}, method={self.method!r}"

    def pair_loss(self, est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """The loss of present references, (..., T) -> (...), broadcasting."""
        if self.kind == "si_snr":
            return neg_si_snr(est, ref, eps=self.eps)
        return neg_snr(est, ref, tau=self.tau, eps=self.eps)

    def forward(self, est: torch.Tensor, ref: torch.Tensor, source_mask: torch.Tensor | None = None,
                mix: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        present = ref.detach().float().pow(2).sum(-1) > 0
        if source_mask is not None:
            present = present & source_mask.to(device=present.device, dtype=torch.bool)
        cost = pairwise_loss_matrix(self.pair_loss, est, ref)
        if self.zero_ref == "ignore":
            loss, perm = pit_from_matrix(cost, mask=present, method=self.method)
            return loss.mean(), perm

        if mix is None:
            mix = (ref * present.unsqueeze(-1)).sum(1)
        elif mix.dim() == 3 and mix.shape[1] == 1:
            mix = mix[:, 0]
        if mix.shape != (ref.shape[0], ref.shape[-1]):
            raise ValueError(f"expected mix (B, T) or (B, 1, T) with B, T = {ref.shape[0]}, {ref.shape[-1]}, "
                             f"got {tuple(mix.shape)}")
        absent = absent_source_loss(est, mix.unsqueeze(1), tau=self.tau, eps=self.eps)    # (B, S_est)
        cost = torch.where(present.unsqueeze(1), cost, absent.unsqueeze(2))
        loss, perm = pit_from_matrix(cost, method=self.method)
        return loss.mean(), perm
