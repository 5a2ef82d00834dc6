"""Distributed corpus generation: one Ray task per shard, resumable, identical for any worker count.

The driver indexes the sources once, fixes the shard plan (which sample indices go to which
shard: it depends on the recipe's ``samples_per_shard`` and ``--num`` only), and submits one task
per shard that is not already complete. A sample's content depends only on (recipe, seed, split,
index) (:func:`hubbub.simulate.seeds.sample_seed`), so 1 worker or 100 give the same bytes.
Shards are written under a temporary name and renamed when complete (in an object store: built
in local scratch and uploaded in one PUT); their sidecars say they are complete; a rerun of the
same command skips them and rewrites the rest. ``out_dir`` is a local folder or any fsspec URL
(``s3://bucket/corpus``, :mod:`hubbub.storage`).

A sample that cannot be made from its sources (a clipped or silent draw) is recorded as failed
and skipped; an error of the machine (a source file that cannot be read, a full disk, the store
unreachable) fails the whole task instead, which Ray retries, and no shard is written for it.

Files next to the shards: ``recipe.json`` (the resolved recipe, seed and hash: a rerun with a
different recipe into the same folder is refused), ``report.json`` (skipped source files and
failed samples, each with its reason) and ``index.json`` (see :mod:`hubbub.shards.writer`),
written in the sequence every corpus is built by (:func:`hubbub.shards.build.build_corpus`).
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyroomacoustics as pra
from tqdm import tqdm

from hubbub import audio, storage
from hubbub.config import to_dict
from hubbub.shards.build import build_corpus
from hubbub.shards.writer import ShardPlan, ShardRecord, plan_split, write_sidecar, writing_shard
from hubbub.simulate.bank import BANK_KIND, RirBankJob
from hubbub.simulate.recipe import Recipe
from hubbub.simulate.sample import Simulator, SplitPool
from hubbub.sources.noise import index_noise, split_noise_files
from hubbub.sources.speech import assign_splits, default_cache_dir, index_speech
from hubbub.voices import make_voices

log = logging.getLogger(__name__)

# One thread per task: parallelism comes from Ray's processes; BLAS/OpenMP threads on top of
# them oversubscribe the cores and make every task slower.
SINGLE_THREAD_ENV = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                            "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")}

# glibc's malloc options (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


@functools.cache
def keep_freed_memory() -> bool:
    """Let this process reuse the memory it frees instead of handing it back to the OS each mixture.

    Rendering a mixture allocates and frees ~12 MB of large temporaries (padded FFTs, targets). With
    glibc's defaults much of it goes back to the OS when freed and is faulted in again, zeroed, by
    the next mixture: ~3000 page faults, 15% of a mixture's time. Larger mmap and trim thresholds
    (``mallopt``) keep it in the heap; a worker then holds at most 256 MiB more than its peak.
    Called once per process by :func:`write_shard`. Returns False, changing nothing, where the C
    library has no ``mallopt`` (macOS; musl's accepts and ignores it).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all([mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1,  # glibc's largest: bigger blocks are mmapped
                mallopt(_M_TRIM_THRESHOLD, 256 << 20) == 1,
                mallopt(_M_TOP_PAD, 64 << 20) == 1])


@dataclass
class SimulateResult:
    out_dir: Path | str  # a Path for a local corpus, else its URL
    index: dict
    written: int          # shards written by this run
    skipped_complete: int  # shards found complete and kept
    failed_samples: list[dict]
    skipped_files: list[dict]


def split_counts(num: int, fractions: dict[str, float]) -> dict[str, int]:
    """``num`` samples divided by the split fractions (largest-remainder rounding)."""
    names = [n for n, f in fractions.items() if f > 0]
    total = sum(fractions[n] for n in names)
    exact = {n: num * fractions[n] / total for n in names}
    counts = {n: int(exact[n]) for n in names}
    for n in sorted(names, key=lambda n: exact[n] - counts[n], reverse=True)[: num - sum(counts.values())]:
        counts[n] += 1
    return counts


def plan_shards(recipe: Recipe, num: int, splits: list[str] | None = None) -> list[ShardPlan]:
    """The shards of ``num`` samples (of ``splits`` only, if given); ValueError for a count below
    one or a split the recipe does not have."""
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"the number of samples must be a whole number of at least 1, got {num!r}")
    unknown = sorted(set(splits or ()) - {s for s, f in recipe.splits.items() if f > 0})
    if unknown:
        raise ValueError(f"splits {unknown} are not splits of the recipe (it has "
                         f"{sorted(s for s, f in recipe.splits.items() if f > 0)})")
    return [plan for split, n in split_counts(num, recipe.splits).items() if not splits or split in splits
            for plan in plan_split(split, n, recipe.samples_per_shard)]


def builtin_voices_dir() -> Path:
    """The built-in voices corpus, made on first use (``hubbub voices`` makes one anywhere)."""
    out = default_cache_dir() / "voices" / "default"
    make_voices(out)
    return out


def prepare_sources(recipe: Recipe, seed: int) -> tuple[dict[str, SplitPool], list[dict], dict]:
    """Index speech and noise once and split them (disjoint speakers per split).

    Returns the pools, the skipped files (with reasons) and a data card of the sources. With the
    target "lips", utterances without a usable lip source are skipped too (reasons ``no-lips``,
    ``bad-lips``, ``lips-too-small``, ``lips-length-mismatch``: :mod:`hubbub.sources.lips`).
    """
    sc = recipe.speech
    corpus = builtin_voices_dir() if sc.corpus == "builtin" else sc.corpus  # a path or a URL
    lips = "lips" in recipe.targets
    idx = index_speech(corpus, layout=sc.layout, regex=sc.regex, min_duration_s=sc.min_duration_s,
                       lips=lips, lips_dir=sc.lips_dir)
    skipped = [dict(s, kind="lips" if "roi" in s else "speech") for s in idx.skipped]
    if not idx.utterances:
        reasons = Counter(s.get("reason", "unreadable") for s in idx.skipped)
        raise ValueError(f"no usable speech in {corpus}: {len(idx.skipped)} files skipped ("
                         + (", ".join(f"{n} {r}" for r, n in reasons.most_common(4)) or "none found") + ")")
    by_speaker = idx.by_speaker()
    need = recipe.speakers.max_count
    split_speakers = assign_splits(by_speaker, recipe.splits, seed=seed, min_per_split=need)
    noise_by_split: dict[str, list] = {s: [] for s in split_speakers}
    if recipe.noise.kind == "folder":
        files, bad = index_noise(recipe.noise.folder)
        skipped += [dict(s, kind="noise") for s in bad]
        if not files:
            raise ValueError(f"no usable noise files in {recipe.noise.folder}")
        noise_by_split = split_noise_files(files, recipe.splits)
    pools = {split: SplitPool({s: by_speaker[s] for s in spk}, noise_by_split.get(split, []))
             for split, spk in split_speakers.items()}
    card = {
        "speech_corpus": str(corpus), "speech_corpus_name": idx.corpus,
        "speakers_per_split": {s: len(v) for s, v in split_speakers.items()},
        "utterances": len(idx.utterances),
        "speech_hours": round(sum(u.duration_s for u in idx.utterances) / 3600, 4),
        "licences": sorted({u.licence or "unknown" for u in idx.utterances}),
        "noise": recipe.noise.kind if recipe.noise.kind != "folder" else str(recipe.noise.folder),
        "skipped_files": len(skipped),
    }
    if lips:  # where the lip streams come from: drawn from phoneme timings, or ROI files
        card["lips"] = {kind: sum(u.lips["kind"] == kind for u in idx.utterances) for kind in ("phonemes", "file")}
    return pools, skipped, card


def write_shard(job, plan: ShardPlan, out_dir: str) -> dict:
    """Write one shard of ``job`` (anything with ``members(split, index) -> (members, seconds)``)
    into ``out_dir`` (a folder or URL) and return its record (the sidecar's content).

    A sample that fails with a content error is recorded in the sidecar and skipped. An OSError
    (unreadable source, full disk, unreachable store) is raised: the task fails and nothing is
    left under the shard's name, so a retry or rerun makes the whole shard. Sets this process up
    for rendering: one pyroomacoustics thread, freed memory kept for the next mixture
    (:func:`keep_freed_memory`).
    """
    pra.constants.set("num_threads", 1)
    keep_freed_memory()
    if not isinstance(job, ShippedSources):
        audio.use_sources(None, None)  # a reused Ray worker may hold an earlier job's shipped sources
    rec = ShardRecord(name=plan.name, split=plan.split, shard_index=plan.shard_index,
                      first_sample=plan.first_sample, num_planned=plan.num_samples)
    with writing_shard(out_dir, plan.name) as writer:
        for index in range(plan.first_sample, plan.first_sample + plan.num_samples):
            try:
                members, seconds = job.members(plan.split, index)
            except OSError:
                raise
            except Exception as exc:
                rec.failed.append({"index": index, "split": plan.split, "error": f"{type(exc).__name__}: {exc}",
                                   "traceback": traceback.format_exc(limit=3)})
                continue
            writer.write(members)
            rec.keys.append(members["__key__"])
            rec.durations_s.append(seconds)
    write_sidecar(rec, out_dir, writer)
    return rec.__dict__


class _DropNotice(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def init_local_ray(num_cpus: int, **kwargs) -> None:
    """Start a new Ray instance on this machine for this process (``address="local"``: whatever
    ``RAY_ADDRESS`` or a running cluster says), its tasks single-threaded (:data:`SINGLE_THREAD_ENV`).

    Token authentication stays on, Ray's default for a new local cluster; only Ray's notice that
    it turned it on by default, printed at every start, is dropped (``RAY_AUTH_MODE`` still rules).
    """
    import ray

    notices = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _DropNotice) for f in notices.filters):
        notices.addFilter(_DropNotice("Token authentication is enabled for this Ray cluster"))
    kwargs.setdefault("runtime_env", {"env_vars": dict(SINGLE_THREAD_ENV)})
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)


def _init_ray(address: str | None, workers: int | None):
    import ray

    if ray.is_initialized():
        return False
    kwargs = dict(log_to_driver=True, configure_logging=True, logging_level=logging.WARNING)
    if address:
        ray.init(address=address, runtime_env={"env_vars": dict(SINGLE_THREAD_ENV)}, include_dashboard=False,
                 **kwargs)
    else:
        init_local_ray(workers or os.cpu_count(), **kwargs)
    return True


def simulate(recipe: Recipe, *, num: int, out_dir: str | Path, seed: int = 0, workers: int | None = None,
             address: str | None = None, splits: list[str] | None = None, progress: bool = True,
             max_retries: int = 3, shared_disk: bool | None = None) -> SimulateResult:
    """Generate (or finish) a corpus of ``num`` mixtures in ``out_dir``.

    ``workers``: tasks in flight at once (default: all CPUs of the local Ray, or of the cluster);
    ``workers=0`` runs in this process without Ray (debugging). ``address``: a Ray cluster
    (``auto`` or ``ray://host:10001``); default starts a local Ray. ``out_dir``: a folder or any
    fsspec URL (``s3://bucket/corpus``).

    ``shared_disk``: whether every Ray node reads and writes this machine's paths. None decides:
    yes on a Ray this call starts or a one-node cluster; no on a cluster of several nodes or
    through Ray Client. Without a shared disk, ``out_dir`` must be an object-store URL, and
    local source files are shipped to the workers through Ray's object store
    (:func:`ship_sources`; refused, with what to do, above ``HUBBUB_SHIP_SOURCES_GB``).

    Example::

        from hubbub.simulate import load_recipe, simulate
        simulate(load_recipe("whamr", ["speech.corpus=/data/voices"]), num=1000, out_dir="whamr", seed=0)
    """
    out_dir = storage.normalize(out_dir)  # an unknown scheme or missing package: said before any work
    all_plans = plan_shards(recipe, num, None)
    run_plans = plan_shards(recipe, num, splits)  # checks num and the split names first
    pools, skipped_files, card = prepare_sources(recipe, seed)  # before anything is written
    simulator = Simulator(recipe, pools, seed)
    identity = {"recipe_hash": simulator.recipe_hash, "sources_hash": simulator.sources_hash, "seed": seed,
                "samples_per_shard": recipe.samples_per_shard, "splits": recipe.splits,
                "storage": to_dict(recipe.storage), "recipe": to_dict(recipe)}
    return _build(simulator, out_dir, identity, all_plans, run_plans, what=f"hubbub simulate (seed {seed})",
                  skipped_files=skipped_files,
                  index_extra={"seed": seed, "recipe_hash": identity["recipe_hash"],
                               "sources_hash": identity["sources_hash"], "num_requested": num, "data_card": card},
                  workers=workers, address=address, progress=progress, max_retries=max_retries,
                  shared_disk=shared_disk)


def simulate_rir_bank(recipe: Recipe, *, num_rooms: int, positions: int, out_dir: str | Path, seed: int = 0,
                      workers: int | None = None, address: str | None = None, progress: bool = True,
                      max_retries: int = 3, shared_disk: bool | None = None) -> SimulateResult:
    """Simulate ``num_rooms`` rooms with ``positions`` source positions each into a RIR bank.

    Mixtures then reuse it with ``--set room.rir_bank=OUT_DIR`` (see :mod:`hubbub.simulate.bank`).
    Same sharding, resume and worker-count invariance as :func:`simulate`.
    """
    out_dir = storage.normalize(out_dir)
    if positions < 1:
        raise ValueError(f"positions must be at least 1, got {positions}")
    plans = plan_shards(recipe, num_rooms)
    identity = {"kind": BANK_KIND, "recipe_hash": recipe.content_hash(), "seed": seed,
                "samples_per_shard": recipe.samples_per_shard, "splits": recipe.splits, "positions": positions,
                "recipe": to_dict(recipe)}
    return _build(RirBankJob(recipe, seed, positions), out_dir, identity, plans, plans,
                  what=f"hubbub rirs (seed {seed})", skipped_files=[],
                  index_extra={"kind": BANK_KIND, "seed": seed, "recipe_hash": identity["recipe_hash"],
                               "positions": positions, "num_requested": num_rooms},
                  workers=workers, address=address, progress=progress, max_retries=max_retries,
                  shared_disk=shared_disk)


def _build(job, out_dir: str, identity: dict, all_plans: list[ShardPlan], run_plans: list[ShardPlan], *,
           what: str, skipped_files: list[dict], index_extra: dict, workers: int | None, address: str | None,
           progress: bool, max_retries: int, shared_disk: bool | None) -> SimulateResult:
    """A simulated corpus (mixtures, RIR banks) through :func:`hubbub.shards.build.build_corpus`:
    its shards written by :func:`write_pending`, its report the skipped source files and the
    failed samples."""

    def report(records: list[ShardRecord]) -> dict:
        failed = [f for r in sorted(records, key=lambda r: (r.split, r.shard_index)) for f in r.failed]
        return {"skipped_files": skipped_files, "failed_samples": failed,
                "summary": {"skipped_files": len(skipped_files), "failed_samples": len(failed)}}

    built = build_corpus(out_dir, identity, all_plans, run_plans=run_plans, what=what, report=report,
                         index_extra=lambda records, content: index_extra,
                         write=lambda pending: write_pending(job, pending, out_dir, workers=workers, address=address,
                                                             progress=progress, max_retries=max_retries,
                                                             shared_disk=shared_disk))
    failed = built.report["failed_samples"]
    for f in failed:
        log.warning("sample %s/%d skipped: %s", f["split"], f["index"], f["error"])
    return SimulateResult(storage.as_path(out_dir), built.index, built.written, built.kept, failed, skipped_files)


def write_pending(job, pending: list[ShardPlan], out_dir: str, *, workers: int | None, address: str | None,
                  progress: bool, max_retries: int, shared_disk: bool | None = None) -> list[ShardRecord]:
    """Write the shards of ``pending`` (:func:`write_shard`) and return their records: in this
    process with ``workers=0``, else one Ray task each. The records come back from the tasks,
    so the index needs no read of what was just written."""
    if workers == 0:
        written = _drain((write_shard(job, p, out_dir) for p in pending), len(pending), progress)
    else:
        written = _run_on_ray(job, pending, out_dir, workers, address, progress, max_retries, shared_disk)
    return [ShardRecord(**r) for r in written]


def _drain(iterator, total: int, progress: bool) -> list:
    return list(tqdm(iterator, total=total, desc="shards", unit="shard", disable=not progress))


# Local sources larger than this are not shipped through Ray's object store (its memory is shared
# with the tasks): the run refuses and says how to make them reachable.
SHIP_LIMIT_BYTES = int(float(os.environ.get("HUBBUB_SHIP_SOURCES_GB", "8")) * 2**30)


class ShippedSources:
    """A job whose local source files travel with it through Ray's object store, for clusters whose
    nodes do not share the driver's disk: on a worker every source path is read from the object
    store (never from that worker's disk); sources given as URLs are read from their store."""

    def __init__(self, job, refs: dict):
        self.job, self.refs = job, refs
        self.token = uuid.uuid4().hex

    def _fetch(self, path: str) -> bytes:
        import ray

        ref = self.refs.get(path)
        if ref is None:
            raise FileNotFoundError(f"{path} was not shipped with the job (a source outside the indexed corpus)")
        return ray.get(ref)

    def members(self, split: str, index: int):
        audio.use_sources(self._fetch, self.token)
        return self.job.members(split, index)


def local_source_files(job) -> list[str]:
    """The local files a job's workers read (utterances and noise files; URLs excluded)."""
    pools = getattr(job, "pools", None) or {}
    paths = {u.path for p in pools.values() for us in p.utterances_by_speaker.values() for u in us}
    paths |= {f.path for p in pools.values() for f in p.noise_files}
    return sorted(p for p in paths if storage.is_local(p))


def ship_sources(job):
    """``job`` with its local source files put in Ray's object store (:class:`ShippedSources`),
    or a ValueError saying how to make them reachable when they cannot travel that way."""
    import ray

    files = local_source_files(job)
    pools = getattr(job, "pools", None) or {}
    if any((u.lips or {}).get("kind") == "file" for p in pools.values() for us in p.utterances_by_speaker.values()
           for u in us):
        raise ValueError("the lip ROI files are on this machine's disk, which the cluster's nodes do not share: "
                         "put the corpus on a disk every node mounts and pass --shared-disk")
    total = sum(os.path.getsize(p) for p in files)
    if total > SHIP_LIMIT_BYTES:
        raise ValueError(f"the sources are {total / 2**30:.1f} GB on this machine's disk, which the cluster's nodes "
                         f"do not share, more than HUBBUB_SHIP_SOURCES_GB={SHIP_LIMIT_BYTES / 2**30:g} to ship "
                         "through Ray: give them as an object-store URL (speech.corpus=s3://...), or put them on a "
                         "disk every node mounts and pass --shared-disk")
    log.info("shipping %d source files (%.1f MB) through Ray's object store", len(files), total / 1e6)
    refs = {}
    for path in files:
        with open(path, "rb") as f:
            refs[path] = ray.put(f.read())
    return ShippedSources(job, refs)


def _needs_shipping(address: str | None, shared_disk: bool | None) -> bool:
    """Do this cluster's workers need the sources shipped (and the output in an object store)?"""
    import ray

    if shared_disk is not None:
        return not shared_disk
    if address is None and ray.is_initialized() and len(ray.nodes()) == 1:
        return False  # a Ray started on this machine
    if address and address.startswith("ray://"):
        return True  # Ray Client: the driver is not on the cluster
    return sum(1 for n in ray.nodes() if n.get("Alive")) > 1


def _run_on_ray(job, pending, out_dir, workers, address, progress, max_retries, shared_disk=None) -> list[dict]:
    import ray

    started = _init_ray(address, workers)
    try:
        if _needs_shipping(address, shared_disk):
            if storage.is_local(out_dir):
                raise ValueError(f"--out {out_dir} is a folder on this machine, but the Ray cluster's nodes do not "
                                 "share its disk (each would write its shards to its own): write to an object "
                                 "store (--out s3://bucket/corpus), or pass --shared-disk if every node mounts it")
            job = ship_sources(job)
        task = ray.remote(num_cpus=1, max_retries=max_retries, retry_exceptions=True)(write_shard)
        job_ref = ray.put(job)
        limit = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        queue = list(pending)
        running, records = [], []
        with tqdm(total=len(pending), desc="shards", unit="shard", disable=not progress) as bar:
            while queue or running:
                while queue and len(running) < limit:
                    running.append(task.remote(job_ref, queue.pop(0), out_dir))
                ready, running = ray.wait(running, num_returns=1)
                records += ray.get(ready)  # re-raises a task that failed after all its retries
                bar.update(len(ready))
        return records
    finally:
        if started:
            ray.shutdown()
