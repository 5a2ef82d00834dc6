"""How every corpus is built, once: identity, plan, write, report, index.

``hubbub simulate`` (mixtures), ``hubbub rirs`` (RIR banks) and ``hubbub shards ingest``
(recordings, standard sets) differ in what a shard holds and what ``report.json`` says; the
steps around them are one sequence, :func:`build_corpus`, under the corpus's lock:

1. **identity**: a rerun must make the same corpus. ``recipe.json`` is checked against it
   (:func:`hubbub.shards.writer.check_same_corpus`; another corpus's folder is refused) and
   written before the first shard.
2. **plan**: the shards are fixed before any is written (split, first sample, count). The ones
   complete in the folder (:func:`hubbub.shards.writer.complete_shards`: one listing, the
   sidecars) are kept; the rest of those asked for are pending.
3. **write**: the caller's ``write`` makes the pending shards, each atomically with its sidecar,
   and returns their records. How is the caller's choice: in this process, or one Ray task per
   shard (:mod:`hubbub.simulate.runner`); this module knows nothing of Ray.
4. **report**: ``report.json``, from the records of every planned shard that is complete.
5. **index**: ``index.json`` and the members tables over every complete planned shard, written
   last, so a corpus with an index is a finished one, and a run of some splits keeps the others
   listed.

A folder or any fsspec URL (:mod:`hubbub.storage`); two runs into one corpus at once: the second
is refused (:func:`hubbub.storage.exclusive`) before it writes anything.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from hubbub import storage
from hubbub.shards.writer import (LOCK_NAME, ShardPlan, ShardRecord, atomic_write_json, build_index,
                                  check_same_corpus, complete_shards, sidecar_name)

log = logging.getLogger(__name__)


@dataclass
class Built:
    """What :func:`build_corpus` did."""

    records: list[ShardRecord]  # every complete planned shard, in plan order (what the index lists)
    written: int                # shards written by this run
    kept: int                   # shards asked for that were found complete and kept
    report: dict                # report.json's content
    index: dict                 # index.json's content


def build_corpus(out_dir: str | Path, identity: dict, plans: list[ShardPlan], *,
                 write: Callable[[list[ShardPlan]], Iterable[ShardRecord]],
                 report: Callable[[list[ShardRecord]], dict],
                 index_extra: Callable[[list[ShardRecord], dict], Mapping],
                 what: str, run_plans: list[ShardPlan] | None = None, labels: Mapping[str, str] | None = None,
                 nothing_usable: Callable[[dict], str] | None = None) -> Built:
    """Build, finish or keep the corpus at ``out_dir`` (a folder or URL, normalised by the caller).

    Args:
        identity: what makes the folder this corpus (``recipe.json``'s content; the keys of
            :data:`hubbub.shards.writer.IDENTITY_KEYS` are compared), with the recipe under
            ``"recipe"``, which ``index.json`` repeats.
        plans: every shard of the corpus; the index lists those complete.
        write: makes the pending shards it is given (never called with none), each atomically
            with its sidecar, and returns their records. It raises to fail the run: shards it
            finished stay complete for the rerun, the one it was writing leaves nothing.
        report: ``report.json``'s content, given the records of the complete planned shards.
        index_extra: keys added to ``index.json``, given those records and the report.
        what: what this run is, for the lock's refusal of a second run (``"hubbub simulate (seed 0)"``).
        run_plans: the shards this run may write (default all of ``plans``; a subset of them,
            e.g. one split's); complete ones among them are kept.
        labels: how a refusal names identity keys (``{"sources_hash": "recordings"}``).
        nothing_usable: where given and no planned shard holds a sample, the run removes what it
            wrote (the folder, where it made it on a local disk) and raises ValueError with
            ``nothing_usable(report)`` as its message. Without it such a corpus is indexed as
            any other, its failures in the report.

    Raises ValueError where ``out_dir`` holds another corpus, :class:`hubbub.storage.LockedError`
    where a run holds it. Example, with a ``write_one(plan) -> ShardRecord``::

        built = build_corpus(out, identity, plans, write=lambda pending: [write_one(p) for p in pending],
                             report=lambda records: {"failed": [f for r in records for f in r.failed]},
                             index_extra=lambda records, report: {"seed": 0}, what="my tool")
    """
    run_plans = plans if run_plans is None else run_plans
    created = nothing_usable is not None and not storage.list_sizes(out_dir)
    storage.makedirs(out_dir)
    with storage.exclusive(storage.join(out_dir, LOCK_NAME), what):
        check_same_corpus(out_dir, identity, labels=labels)
        atomic_write_json(storage.join(out_dir, "recipe.json"), identity)
        if storage.is_local(out_dir):
            storage.remove_stale_temporaries(out_dir)  # partial shards of killed runs, not of live ones
        done = complete_shards(out_dir, {p.name: p.num_samples for p in plans})
        pending = [p for p in run_plans if p.name not in done]
        log.info("%d shards planned, %d complete, %d to write", len(run_plans), len(run_plans) - len(pending),
                 len(pending))
        made = {r.name: r for r in write(pending)} if pending else {}
        missing = [p.name for p in pending if p.name not in made]
        if missing:
            raise RuntimeError(f"the shard writer returned no record for {', '.join(missing)}")
        found = {**done, **made}
        records = [found[p.name] for p in plans if p.name in found]
        content = report(records)
        if nothing_usable is not None and not any(r.keys for r in records):
            _remove_written(out_dir, run_plans, created)
            raise ValueError(nothing_usable(content))
        atomic_write_json(storage.join(out_dir, "report.json"), content)
        index = build_index(out_dir, records, recipe=identity["recipe"], extra=index_extra(records, content))
    return Built(records, len(pending), len(run_plans) - len(pending), content, index)


def _remove_written(out_dir: str | Path, plans: list[ShardPlan], created: bool) -> None:
    """Undo a run that found nothing usable, so that it leaves nothing behind: the folder itself
    where the run created it on a local disk, else the planned shards, their sidecars and
    ``recipe.json``."""
    if created and storage.is_local(out_dir):
        shutil.rmtree(storage.local_path(out_dir))
        return
    for p in plans:
        storage.remove(storage.join(out_dir, p.name))
        storage.remove(storage.join(out_dir, sidecar_name(p.name)))
    storage.remove(storage.join(out_dir, "recipe.json"))
