"""What validation scores, written once: best-permutation SI-SNRi of a batch, and which other
utterance's lips an audio-visual extractor is tried with (the training stages and
:func:`hubbub.evaluate.evaluate_run` both use it).
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch

from hubbub.losses import pit, reorder, si_snr
from hubbub.video import fit_frames


def pit_si_snri(est: torch.Tensor, ref: torch.Tensor, mix: torch.Tensor,
                source_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Each example's mean SI-SNR improvement over the mixture, in dB, under the assignment of
    estimates to its present references that maximises SI-SNR.

    Args:
        est: (B, S_est, T) estimates, S_est >= S (surplus outputs are left unassigned).
        ref: (B, S, T) references, zero-padded past each example's speakers.
        mix: (B, T) the mixture each improvement is measured from.
        source_mask: (B, S) bool, True for present references (``collate_mixtures``'s); None: all.

    Returns:
        (B,) float: the mean over each example's present references of
        ``si_snr(best estimate, ref) - si_snr(mix, ref)``.

    Example::

        gains = pit_si_snri(model(mix), batch["sources"]["reverberant"], mix, batch["source_mask"])
    """
    if source_mask is None:
        source_mask = torch.ones(ref.shape[:2], dtype=torch.bool, device=ref.device)
    mask = source_mask.to(device=ref.device, dtype=torch.bool)
    # Absent references neither steer the assignment nor enter the mean.
    _, perm = pit(lambda e, r: -si_snr(e, r), est, ref, mask=mask)
    gain = si_snr(reorder(est, perm), ref) - si_snr(mix[:, None].expand_as(ref), ref)
    return (gain * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def with_mismatched_lips(items: Iterable[dict], target: str = "lips") -> Iterator[tuple[dict, torch.Tensor | None]]:
    """Each item with another utterance's lip frames, for scoring an extractor given the wrong
    speaker's video: the first source's frames of the next item (the last item takes the first
    item's), cut or padded to this item's frame count by :func:`hubbub.video.fit_frames`.

    Items are :class:`~hubbub.shards.reader.ShardDataset` items with ``sources[target]`` of
    (S, F, H, W); they come out in their order, one item behind the input (a stream: only the
    first item's frames are kept to the end). A lone item has no other utterance: it comes with None.
    """
    first, previous, count = None, None, 0
    for item in items:
        lips = item["sources"][target]
        if previous is None:
            first = lips[0]
        else:
            yield previous, fit_frames(lips[0], previous["sources"][target].shape[1])
        previous, count = item, count + 1
    if previous is not None:
        yield previous, fit_frames(first, previous["sources"][target].shape[1]) if count > 1 else None
