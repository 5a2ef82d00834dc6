"""The one training loop. Stages (PIT, MixIT, codec tokens, AV) subclass :class:`Solver`.

The base class owns the loop on Accelerate: device placement and DDP, mixed precision, gradient
accumulation and clipping, the learning-rate schedule, steps with a non-finite loss or
gradients skipped and counted (a run whose weights stop being finite stopped before it saves them),
TensorBoard logging through Accelerate's trackers, a progress bar, checkpoints and exact resume
(model, optimizer, schedule, random streams and the position in the shard stream), also on
another number of processes. A stage overrides three hooks: :meth:`build_model`,
:meth:`build_datasets` and :meth:`run_step`, one step that serves training and validation
(audiocraft's ``run_step``): the Solver feeds it training batches and, every ``eval_every`` steps
and at the end, the first ``data.valid_max_samples`` of the valid split in batches, and reports
the mean of each value it returns there as ``valid/{name}``. Which stage a run is comes from
its config (``stage``), the one place it is kept.

A run directory holds::

    run.json            config, stage, data card, final metrics (written at start and end)
    metrics.jsonl       one row per logged step (the same numbers TensorBoard gets)
    curves.png          the loss and valid metrics per step, redrawn at every checkpoint and the end
    samples_rank{r}.jsonl   with log_sample_keys: the keys rank r trained on, one row per micro-batch
    checkpoints/step_XXXXXXXX/   model.safetensors + config.json, optimizer.pt, scheduler.pt,
                        trainer.json (step, epoch, skipped steps, world size, global batch),
                        data.json (the position in the global sample sequence)
    model/              the final model (save_model), what evaluate/separate/publish read
    tensorboard/

The same command restarts a killed run from its latest checkpoint, on any number of processes W'
that divides the global batch. On the run's own W it logs exactly the losses an uninterrupted run
logs; on another W' it trains on the same global batches, which gives the same losses up to float
reassociation (DDP's all-reduce sums in another order) where a step depends on its global batch
only: not with torch-RNG draws (below) or BatchNorm on CPU ranks, whose statistics are per
process. Nothing in a checkpoint depends on the rank:

* The global batch. ``data.batch_size`` and ``semi.batch_size`` are per process; trainer.json
  records them times W (``global_batch``). A resumed run keeps the global batch whatever its
  config says: before :meth:`build_datasets` the Solver sets those fields to global / W' (a
  one-line ValueError when W' does not divide it), so stages size their datasets from the config
  as on a fresh run (MixIT's ``2 * data.batch_size`` included). Gradient accumulation stays as
  configured. run.json holds the per-process batches actually used.
* The data position. data.json, written by the main process, is the loader's state in global
  terms: ``{"epoch", "global_consumed"}``, with a :class:`~hubbub.shards.reader.PairedLoader`'s
  extra stream nested under its key. The global sample sequence does not depend on the world size
  (:mod:`hubbub.shards.reader`), and with the same global batch the position is a global batch
  boundary on every W', so every rank resumes from this one file.
* The random streams. Before every micro-batch each process seeds torch (all devices) from a
  digest of (seed, step, micro-batch, rank), so no RNG state is saved and a resumed run draws what
  an uninterrupted run on the same W draws. Training randomness comes from two places: the
  reader's crops and lip ROIs, drawn from (seed, epoch, key) and so the same on any W, and
  torch's global RNG (the codec stage's span masks; no model has dropout), whose draws depend on
  the rank: such a stage continues on another W' with other draws than on W.

Checkpoints written before elastic resume (per-rank ``rank{r}.json`` and ``rng_rank{r}.pt``, no
global batch) still resume on their own number of processes; their RNG states are not read.
Optimizer and schedule states are loaded with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import logging
import math
import os
import pickle
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tqdm import tqdm

from hubbub import rundir, storage
from hubbub.config import ConfigError, to_dict
from hubbub.models import save_model
from hubbub.models.io import save_weights
from hubbub.shards.reader import ShardLoader, collate_mixtures
from hubbub.shards.writer import LOCK_NAME, atomic_write_json
from hubbub.train.config import TrainConfig

log = logging.getLogger(__name__)

# The config's per-process batch sizes: a checkpoint records them times the processes (the global
# batch), which a resumed run keeps on any number of processes.
BATCH_FIELDS = ("data.batch_size", "semi.batch_size")
# Steps skipped in a row (non-finite loss or gradients) after which a run stops: one bad batch is
# skipped, a model whose every step fails is not trained on in silence.
MAX_NONFINITE_RUN = 20
# What a resumed run may not change (prefixes of config fields): the model and what it trains on.
FIXED_ON_RESUME = ("stage", "seed", "model.", "data.shards", "data.train_split", "data.target", "semi.unlabelled",
                   "semi.split", "mixit.recordings", "mixit.segment_s", "mixit.sample_rate_hz", "mixit.num_outputs",
                   "codec.model", "codec.task", "codec.source_target")
# Changes not worth recording: bookkeeping, and what only acts when a run starts.
NOT_RECORDED = ("log_every", "eval_every", "ckpt_every", "keep_checkpoints", "log_sample_keys", "data.num_workers",
                "data.persistent_workers", "data.valid_max_samples", "init", *BATCH_FIELDS)


def lr_lambda(cfg: TrainConfig):
    warmup, total, floor = cfg.schedule.warmup_steps, cfg.steps, cfg.schedule.min_lr_ratio

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cfg.schedule.kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class Solver:
    """Base trainer. Subclasses implement the hooks; :meth:`run` does the rest.

    Example::

        class MyStage(Solver):
            def build_model(self): ...
            def build_datasets(self): return train_ds, valid_ds
            def run_step(self, model, batch, train):
                est = model(batch["mix"][:, 0])
                loss = ...
                return loss, ({} if train else {"si_snri_db": per_example_gains})

        MyStage(cfg, "runs/x").run()
    """

    def __init__(self, cfg: TrainConfig, out_dir: str | Path):
        self.cfg = cfg
        # A run in an object store (s3://, gs://, ...) trains in a local mirror that its checkpoints
        # and logs are pushed from (hubbub.train.rundir); ``url`` is None for a run on a disk.
        self.url = storage.normalize(out_dir) if rundir.is_remote(out_dir) else None
        self.out_dir = rundir.local_mirror(self.url) if self.url else Path(out_dir)
        self._keys_file = None  # samples_rank{r}.jsonl while training with log_sample_keys

    @property
    def stage(self) -> str:
        """The config's ``stage`` ("pit", "av", "mixit", "codec"): what run.json records."""
        return self.cfg.stage

    # -- hooks -----------------------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def build_datasets(self):
        """(train ShardDataset, valid ShardDataset or None); rank and world size of the train one
        are set by the loop, the valid one is read whole by the main process (rank 0 of 1)."""
        raise NotImplementedError

    def build_loader(self, train_ds):
        """The training loader over ``train_ds`` for this process: anything with ``__iter__``,
        ``set_epoch``, ``state_dict`` and ``load_state_dict`` (semi-supervised stages zip two)."""
        train_ds.rank, train_ds.world_size = self.accelerator.process_index, self.accelerator.num_processes
        return ShardLoader(train_ds, num_workers=self.cfg.data.num_workers,
                           persistent_workers=self.cfg.data.persistent_workers)

    def run_step(self, model, batch, train: bool) -> tuple[torch.Tensor, dict[str, Any]]:
        """One batch (:func:`~hubbub.shards.reader.collate_mixtures`' layout, on the device):
        ``(loss, values)``.

        ``train=True``: a training batch; the loss is minimised, each value (a scalar) is logged
        next to it. ``train=False``: a valid batch under ``torch.inference_mode`` on the unwrapped
        model in eval mode; the loss is not used, and each value (a scalar, or one per example) is
        averaged over every example of the validation pass (``valid/{name}``).
        """
        raise NotImplementedError

    def valid_items(self, dataset) -> Iterable[dict]:
        """The items one validation pass scores: the first ``data.valid_max_samples`` of the valid
        dataset (a stage may attach what its step needs to each)."""
        return itertools.islice(dataset, self.cfg.data.valid_max_samples)

    @property
    def valid_batch_size(self) -> int:
        """Valid items per batch: ``data.batch_size`` (MixIT pairs twice that, as in training)."""
        return self.cfg.data.batch_size

    def data_card(self) -> dict:
        """What the run was trained on (published with the model)."""
        return {}

    def final_model(self, model) -> torch.nn.Module:
        """The model saved to RUN/model (stages with extra heads may strip them)."""
        return model

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train (or resume) into the run folder and return the final validation metrics.

        Raises:
            hubbub.storage.LockedError: another run is training into the same folder.
            ValueError: the folder is a file; a resume that changes what is trained on.
        """
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ValueError(f"{self.out_dir} is a file, not a run folder: choose another --out")
        if self.url and rundir.is_file(self.url):
            raise ValueError(f"{self.url} is a file, not a run folder: choose another --out")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # One run per folder: a second command on it (a resume started twice, a typo'd --out) is
        # refused before it reads or writes anything. The main process holds it; under a launcher,
        # the launcher stops the other ranks when the main one exits. A run in an object store is
        # locked there (a lease object), so two machines cannot train into one URL either.
        lock = storage.join(self.url, LOCK_NAME) if self.url else self.out_dir / LOCK_NAME
        with storage.exclusive(lock, f"{self.stage} training") if _is_main_process() else contextlib.nullcontext():
            return self._run()

    def _run(self) -> dict[str, Any]:
        from accelerate import Accelerator
        from accelerate.utils import send_to_device, set_seed

    
        cfg = self.cfg
        if _is_main_process():
            for stale in (self.out_dir / "checkpoints").glob("step_*.tmp"):  # what a killed run was writing
                shutil.rmtree(stale, ignore_errors=True)
        # Without a GPU, processes started by `accelerate launch --multi_gpu` or torchrun must be
        # told they are CPU ranks, or each would train alone as rank 0 (gloo is used then).
        acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.precision, gradient_accumulation_steps=cfg.optim.grad_accum,
                          log_with="tensorboard", project_dir=str(self.out_dir / "tensorboard"))
        self.accelerator = acc
        if self.url:
            # Each node pulls the run's newest complete checkpoint from the store into its own
            # mirror (no shared disk needed); the other processes of the node wait for it.
            if acc.is_local_main_process:
                rundir.pull_run(self.url, self.out_dir)
            acc.wait_for_everyone()
        ckpt = self._latest_checkpoint()
        trainer = json.loads((ckpt / "trainer.json").read_text()) if ckpt is not None else None
        self._changes = []
        if trainer is not None:  # before build_datasets, which sizes batches from the config
            self.cfg = cfg = self._resume_config(ckpt, trainer, acc.num_processes)
            self._changes = self._resume_changes(trainer["step"])
        set_seed(cfg.seed)
        model = self.build_model()
        if acc.num_processes > 1 and acc.device.type == "cuda":
            # Batch statistics over the global batch, not each process's share: N GPUs then train
            # as one does (the lip encoder's BatchNorms; models without BatchNorm are untouched).
            # The converted layers keep their parameter and buffer names, so checkpoints load
            # anywhere. PyTorch syncs BatchNorm on GPUs only: CPU processes keep per-process stats.
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                      weight_decay=cfg.optim.weight_decay)
        # Not prepared by Accelerate: its wrapper steps the schedule once per process, so the
        # learning rate would depend on the number of processes.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
        model, optimizer = acc.prepare(model, optimizer)

        train_ds, self.valid_dataset = self.build_datasets()
        loader = self.build_loader(train_ds)

        state = {"step": 0, "epoch": 0, "skipped_nonfinite": 0}
        if ckpt is not None:
            state = self._load_checkpoint(ckpt, trainer, acc, model, optimizer, scheduler, loader)
            log.info("resumed from %s at step %d", ckpt, state["step"])
        elif acc.is_main_process:
            (self.out_dir / "metrics.jsonl").unlink(missing_ok=True)
        if acc.is_main_process:
            self._write_run_json(status="running")
            if self.url:
                rundir.push_files(self.out_dir, self.url, include_tensorboard=False)
        acc.init_trackers("hubbub", config={k: str(v) for k, v in _flatten(to_dict(cfg)).items()})

        self._keys_file = None
        if cfg.log_sample_keys:
            keys_path = self.out_dir / f"samples_rank{acc.process_index}.jsonl"
            if self.url and not keys_path.exists() and storage.exists(storage.join(self.url, keys_path.name)):
                # a remote run resumed on another machine: this rank's rows so far are in the store
                storage.write_bytes(keys_path, storage.read_bytes(storage.join(self.url, keys_path.name)))
            self._keys_file = open(keys_path, "a")
        bar = tqdm(total=cfg.steps, initial=state["step"], desc=self.stage, disable=not acc.is_local_main_process)
        model.train()
        metrics: dict[str, float] = {}
        micro = 0  # micro-batches of the current optimizer step so far
        nonfinite_run, skipped_before = 0, state["skipped_nonfinite"]  # steps skipped in a row
        try:
            while state["step"] < cfg.steps:
                loader.set_epoch(state["epoch"])
                for batch in loader:
                    if self._keys_file:
                        self._keys_file.write(json.dumps({"step": state["step"], "epoch": state["epoch"],
                                                    "keys": list(batch["keys"])}) + "\n")
                    batch = send_to_device(batch, acc.device, non_blocking=True)
                    # After the batch is fetched: a new epoch's DataLoader draws its workers' seeds
                    # from this RNG too.
                    torch.manual_seed(_stream_seed(cfg.seed, state["step"], micro, acc.process_index))
                    with acc.accumulate(model):
                        loss, logs = self.run_step(model, batch, train=True)
                        # Every rank must take the same branch or DDP's all-reduce hangs.
                        finite = acc.gather(torch.isfinite(loss.detach()).float().reshape(1)).min() > 0
                        if finite:
                            acc.backward(loss)
                            # A finite loss can still give NaN gradients (a NaN in a target the loss
                            # masks out): the step is skipped, or one batch would ruin the weights.
                            if not acc.sync_gradients or _finite_gradients(acc, model, cfg.optim.grad_clip):
                                optimizer.step()
                            else:
                                state["skipped_nonfinite"] += 1
                        else:
                            state["skipped_nonfinite"] += 1
                        optimizer.zero_grad(set_to_none=True)
                    if not acc.sync_gradients:
                        micro += 1
                        continue
                    micro = 0
                    scheduler.step()
                    state["step"] += 1
                    nonfinite_run = nonfinite_run + 1 if state["skipped_nonfinite"] > skipped_before else 0
                    skipped_before = state["skipped_nonfinite"]
                    if nonfinite_run >= MAX_NONFINITE_RUN:
                        raise NonFiniteWeights(
                            f"the loss or gradients were not finite in {nonfinite_run} steps in a row (up to step "
                            f"{state['step']}): training diverged or the data is broken; nothing was saved, the "
                            f"checkpoints in {self._checkpoints_where()} are as they were; lower optim.lr (or "
                            "check the corpus with `hubbub shards verify`) and rerun, which resumes from the last one")
                    bar.update(1)
                    step = state["step"]
                    if step % cfg.log_every == 0 or step % cfg.ckpt_every == 0 or step == cfg.steps:
                        _check_weights(acc, model, step, self._checkpoints_where())  # before anything logs or saves them
                    if step % cfg.log_every == 0 or step == cfg.steps:
                        # note: a CPU-GPU sync point; only on logging steps
                        row = {"step": step, "epoch": state["epoch"], "loss": acc.reduce(loss.detach(), "mean").item(),
                               "lr": scheduler.get_last_lr()[0], "skipped_nonfinite": state["skipped_nonfinite"]}
                        row.update({k: float(acc.reduce(torch.as_tensor(v, device=acc.device), "mean").item())
                                    for k, v in logs.items()})
                        self._log(acc, row)
                        bar.set_postfix(loss=f"{row['loss']:.3f}")
                    if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                        metrics = self._evaluate(acc, model, step)
                    if step % cfg.ckpt_every == 0 or step == cfg.steps:
                        self._save_checkpoint(acc, model, optimizer, scheduler, loader, state)
                    if step >= cfg.steps:
                        break
                else:
                    state["epoch"] += 1
        finally:
            bar.close()  # also when a step raises: a message then starts on a line of its own
        if self._keys_file:
            self._keys_file.close()
            self._keys_file = None
            self._push_keys(acc)
        metrics = self._evaluate(acc, model, state["step"])
        if acc.is_main_process:
            save_model(self.final_model(acc.unwrap_model(model)), self.out_dir / "model")
            self._write_run_json(status="done", final_metrics=metrics, state=state)
            _draw_curves(self.out_dir)
        acc.wait_for_everyone()
        acc.end_training()  # flushes the TensorBoard files before they are pushed
        if self.url and acc.is_main_process:
            rundir.push_model(self.out_dir, self.url)
            rundir.push_files(self.out_dir, self.url)
        # Accelerate keeps its state (mixed precision, accumulation) in a process-wide singleton
        # that refuses a second Accelerator with other settings; forget it so another run in this
        # process (a notebook, a test, a pretrain-then-finetune script) can choose its own. The
        # process group (PartialState) is kept.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state()
        return metrics

    # -- helpers ---------------------------------------------------------------------------------
    def _evaluate(self, acc, model, step: int) -> dict[str, float]:
        metrics = {}
        if acc.is_main_process:
            model.eval()
            # Validation draws (the codec stage's masks) start from the seed every time, and leave
            # the RNG training resumes with as it was.
            with torch.inference_mode(), torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(self.cfg.seed)
                metrics = self._validate(acc.unwrap_model(model), acc.device)
            model.train()
            if metrics:
                self._log(acc, {"step": step, **{f"valid/{k}": v for k, v in metrics.items()}})
        acc.wait_for_everyone()
        return metrics

    def _validate(self, model, device) -> dict[str, float]:
        """Every value :meth:`run_step` returns on the valid batches, averaged over examples."""
        from accelerate.utils import send_to_device

        if self.valid_dataset is None:
            return {}
        values: dict[str, list[float]] = {}
        for batch in _valid_batches(self.valid_items(self.valid_dataset), self.valid_batch_size):
            _, logs = self.run_step(model, send_to_device(batch, device), train=False)
            for name, value in logs.items():
                values.setdefault(name, []).extend(torch.as_tensor(value).detach().flatten().tolist())
        return {name: sum(v) / len(v) for name, v in values.items() if v}

    def _log(self, acc, row: dict) -> None:
        acc.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])
        if acc.is_main_process:
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    def _write_run_json(self, **extra) -> None:
        info = {"stage": self.stage, "config": to_dict(self.cfg), "data_card": self.data_card(),
                "sample_rate_hz": getattr(self, "sample_rate_hz", None), **extra}
        if getattr(self, "_changes", None):
            info["config_changes"] = self._changes
        atomic_write_json(self.out_dir / "run.json", info)

    def _resume_changes(self, step: int) -> list[dict]:
        """Compare the config with the one the run used so far (run.json): a change to what is
        trained on or to the model is refused; any other change that alters training (optimizer,
        schedule, loss, steps, crops, precision) is logged and recorded in run.json's
        ``config_changes`` with the step it took effect at, after those recorded before."""
        path = self.out_dir / "run.json"
        try:
            previous = json.loads(path.read_text())
            before = _flatten(previous["config"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s is unreadable (%s): settings changed since the run started cannot be checked", path, exc)
            return []
        after = _flatten(to_dict(self.cfg))
        for flat in (before, after):  # one corpus, however it is spelled (relative, absolute, file://)
            if flat.get("data.shards"):
                flat["data.shards"] = storage.normalize(flat["data.shards"])
        changed = sorted(k for k in before.keys() | after.keys()
                         if _setting(before.get(k)) != _setting(after.get(k)) and not k.startswith(NOT_RECORDED))
        fixed = [k for k in changed if k.startswith(FIXED_ON_RESUME)]
        if fixed:
            raise ValueError(f"{self.out_dir} was trained with " + ", ".join(f"{k}={before.get(k)!r}" for k in fixed)
                             + "; this command says " + ", ".join(f"{k}={after.get(k)!r}" for k in fixed)
                             + ": resume with the same settings, or train into a new --out")
        records = [{"step": step, "field": k, "was": before.get(k), "now": after.get(k)} for k in changed]
        for r in records:
            log.warning("%s: %s changed from %r to %r at step %d (recorded in run.json)", self.out_dir, r["field"],
                        r["was"], r["now"], step)
        return list(previous.get("config_changes") or []) + records

    def _checkpoints_where(self) -> str:
        """Where the user finds this run's checkpoints: in the store for a remote run (not its mirror)."""
        return storage.join(self.url, "checkpoints") if self.url else str(self.out_dir / "checkpoints")

    def _latest_checkpoint(self) -> Path | None:
        """The newest checkpoint whose files all read back; a damaged newer one (a truncated file
        after a crash or a full disk) is passed over with a warning that names the file."""
        ckpts = sorted((self.out_dir / "checkpoints").glob("step_*[0-9]"))
        damaged = []
        for ckpt in reversed(ckpts):
            problem = _checkpoint_problem(ckpt)
            if problem is None:
                if damaged:
                    log.warning("resuming from %s; newer checkpoints are damaged: %s", ckpt, "; ".join(damaged))
                return ckpt
            damaged.append(problem)
        if damaged:
            raise RuntimeError(f"every checkpoint in {self.out_dir / 'checkpoints'} is damaged ({'; '.join(damaged)}): "
                               "delete them to start over")
        return None

    def _save_checkpoint(self, acc, model, optimizer, scheduler, loader, state) -> None:
        root = self.out_dir / "checkpoints"
        final = root / f"step_{state['step']:08d}"
        tmp = root / f"step_{state['step']:08d}.tmp"
        # Nothing in a checkpoint differs between ranks: the replicas are equal and the data
        # position is global (the ranks step together), so the main process writes it alone.
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                tmp.mkdir(parents=True)
                _save_state(acc.unwrap_model(model), tmp)
                # Serialised in memory and written by Python: a full disk is an OSError that names
                # the file (torch's own writer reports a RuntimeError that does not say why).
                for name, obj in (("optimizer.pt", optimizer.state_dict()), ("scheduler.pt", scheduler.state_dict())):
                    buffer = io.BytesIO()
                    torch.save(obj, buffer)
                    storage.write_bytes(tmp / name, buffer.getvalue())
                atomic_write_json(tmp / "data.json", _global_position(loader.state_dict()))
                global_batch = {f: _field(self.cfg, f) * acc.num_processes for f in BATCH_FIELDS}
                atomic_write_json(tmp / "trainer.json", {**state, "world_size": acc.num_processes,
                                                         "global_batch": global_batch})
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)  # earlier checkpoints are untouched
                raise
            shutil.rmtree(final, ignore_errors=True)  # a damaged one of this step, passed over on resume
            tmp.rename(final)  # the checkpoint exists only once every file is in it
            for old in sorted(root.glob("step_*[0-9]"))[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
            self._truncate_metrics(state["step"])
            _draw_curves(self.out_dir)
            if self.url:  # the checkpoint (files.json last), the logs, then old checkpoints go
                rundir.push_checkpoint(final, self.url)
                rundir.push_files(self.out_dir, self.url)
                rundir.prune_checkpoints(self.url, self.cfg.keep_checkpoints)
        if self._keys_file is not None:
            self._keys_file.flush()
            self._push_keys(acc)
        acc.wait_for_everyone()

    def _push_keys(self, acc) -> None:
        """A remote run's ``samples_rank{r}.jsonl`` into the store, by the rank that writes it (the
        ranks of a multi-node job share no disk)."""
        if self.url:
            name = f"samples_rank{acc.process_index}.jsonl"
            storage.put_file(self.out_dir / name, storage.join(self.url, name))

    def _truncate_metrics(self, step: int) -> None:
        """Drop logged rows past ``step``: a resumed run logs them again from the checkpoint."""
        path = self.out_dir / "metrics.jsonl"
        if not path.exists():
            return
        rows = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(r + "\n" for r in rows))
        tmp.replace(path)

    def _resume_config(self, ckpt: Path, trainer: dict, world_size: int) -> TrainConfig:
        """The config with the checkpoint's global batch split over ``world_size`` processes."""
        written_by = trainer["world_size"]
        if "global_batch" not in trainer:
            if written_by != world_size:
                raise ValueError(f"{ckpt} holds per-rank data positions of {written_by} processes (written before "
                                 f"elastic resume), this run has {world_size}: resume it on {written_by}")
            return self.cfg
        sections: dict[str, dict[str, int]] = {}
        for name, total in trainer["global_batch"].items():
            if total % world_size:
                raise ValueError(f"{ckpt} trains a global batch of {total} ({name} {total // written_by} x "
                                 f"{written_by} processes), which {world_size} processes cannot split evenly: "
                                 f"resume on a number of processes that divides {total}")
            if _field(self.cfg, name) != total // world_size:
                log.warning("%s: %s=%d per process on %d processes keeps the checkpoint's global batch of %d "
                            "(the config says %d)", ckpt, name, total // world_size, world_size, total,
                            _field(self.cfg, name))
            section, key = name.split(".")
            sections.setdefault(section, {})[key] = total // world_size
        return replace(self.cfg, **{s: replace(getattr(self.cfg, s), **kw) for s, kw in sections.items()})

    def _load_checkpoint(self, ckpt: Path, trainer: dict, acc, model, optimizer, scheduler, loader) -> dict:
        # Launched CPU ranks are on "cpu:{local rank}", a device torch.load and safetensors refuse.
        device = "cpu" if acc.device.type == "cpu" else str(acc.device)
        acc.unwrap_model(model).load_state_dict(load_file(str(ckpt / "model.safetensors"), device=device))
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=device, weights_only=True))
        scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
        # _resume_config let a checkpoint without data.json through only on its own world size.
        data = ckpt / "data.json"
        if not data.exists():
            data = ckpt / f"rank{acc.process_index}.json"
        loader.load_state_dict(json.loads(data.read_text()))
        if acc.is_main_process:
            self._truncate_metrics(trainer["step"])
        acc.wait_for_everyone()
        return {k: trainer[k] for k in ("step", "epoch", "skipped_nonfinite")}


def _valid_batches(items: Iterable[dict], batch_size: int) -> Iterator[dict]:
    """Valid items collated in batches of up to ``batch_size``, a new batch wherever the length
    changes: whole samples are scored unpadded, so a batch scores each as it would alone."""
    batch: list[dict] = []
    for item in items:
        if batch and (len(batch) == batch_size or item["mix"].shape[-1] != batch[0]["mix"].shape[-1]):
            yield collate_mixtures(batch)
            batch = []
        batch.append(item)
    if batch:
        yield collate_mixtures(batch)


def _save_state(model: torch.nn.Module, directory: Path) -> None:
    """The trained module's weights: a registered model as a model directory (config.json too),
    a stage's training wrapper (extra heads around a separator) as its bare state dict."""
    if getattr(model, "spec", None) is not None:
        save_model(model, directory)
    else:
        save_weights(model, directory)


def check_stage(cfg: TrainConfig, stage: str) -> None:
    """Refuse to train one stage on a config of another: the config's ``stage`` is what the run
    records (run.json) and what a resume must keep."""
    if cfg.stage != stage:
        raise ConfigError("stage", f"the config is for the {cfg.stage!r} stage, this command trains {stage!r}: "
                                   f"pass a {stage} config (or set stage={stage})")


class NonFiniteWeights(ValueError):
    """Training diverged: the weights hold NaN or infinity (the command line prints it in one line)."""


def _finite_gradients(acc, model, grad_clip: float) -> bool:
    """Clip the synced gradients (``grad_clip > 0``) and say whether their norm is finite, the same
    answer on every rank (each must take the same branch, or DDP's next all-reduce hangs)."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = acc.clip_grad_norm_(params, grad_clip) if grad_clip > 0 else None
    if norm is None:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.detach()) for p in params])) \
            if params else torch.zeros((), device=acc.device)
    return bool(acc.gather(torch.isfinite(norm.detach()).float().reshape(1)).min() > 0)


def _check_weights(acc, model, step: int, checkpoints: str) -> None:
    """Stop the run, saving nothing, once the weights themselves are no longer finite (a learning
    rate that overflows them): every checkpoint written so far stays as it was."""
    if all(bool(torch.isfinite(p.detach()).all()) for p in acc.unwrap_model(model).parameters()):
        return
    raise NonFiniteWeights(f"the model's weights are no longer finite at step {step}: nothing was saved, the "
                       f"checkpoints in {checkpoints} are as they were; lower optim.lr (or set "
                       "optim.grad_clip) and rerun, which resumes from the last checkpoint")


def _checkpoint_problem(ckpt: Path) -> str | None:
    """What is wrong with a checkpoint's files ("FILE: reason"), or None if each reads back."""
    def json_file(name: str) -> None:
        json.loads((ckpt / name).read_text())

    checks = [("trainer.json", lambda: json_file("trainer.json")),
              ("model.safetensors", lambda: safe_open(str(ckpt / "model.safetensors"), "pt").keys()),
              ("optimizer.pt", lambda: torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)),
              ("scheduler.pt", lambda: torch.load(ckpt / "scheduler.pt", map_location="cpu", weights_only=True))]
    if (ckpt / "data.json").exists() or not list(ckpt.glob("rank*.json")):
        checks.append(("data.json", lambda: json_file("data.json")))
    for name, check in checks:
        try:
            check()
        except pickle.UnpicklingError:
            # never PyTorch's advice to load it with weights_only=False: it would run its code
            return f"{ckpt / name}: holds objects other than tensors and numbers, refused unread"
        except Exception as exc:  # truncated or empty files fail in many ways, all the same here
            return f"{ckpt / name}: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else 'unreadable'}"
    return None


def _stream_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """torch's seed for one micro-batch of one rank: a digest (the same in every run and process,
    unlike hash()) of where it is in the run, so resume needs no saved RNG state."""
    return int.from_bytes(hashlib.blake2b(f"{seed}/{step}/{micro}/{rank}".encode(), digest_size=8).digest(), "little")


def _global_position(state: dict) -> dict:
    """A loader's state without the per-rank ``consumed``: ``epoch`` and ``global_consumed`` of each
    stream, nested streams (a PairedLoader's extra one) under their keys."""
    return {k: _global_position(v) if isinstance(v, dict) else v for k, v in state.items() if k != "consumed"}


def _draw_curves(out_dir: Path) -> None:
    """RUN/curves.png (loss and valid metrics per step); a plot that fails never stops training."""
    from hubbub.train.curves import plot_run

    try:
        plot_run(out_dir)
    except OSError:
        raise  # a full disk: the same one-line end as any other write
    except Exception as exc:  # noqa: BLE001 - matplotlib on odd values; the run matters more than its picture
        log.warning("could not draw %s/curves.png: %s", out_dir, exc)


def _is_main_process() -> bool:
    """Rank 0 of a launched job (torchrun/accelerate set RANK), or a process run alone; known
    before the Accelerator (and its process group) exists."""
    return int(os.environ.get("RANK", "0")) == 0


def _setting(value):
    """A config value as compared across a resume: JSON turns tuples into lists."""
    return list(value) if isinstance(value, tuple) else value


def _field(cfg: TrainConfig, name: str):
    section, key = name.split(".")
    return getattr(getattr(cfg, section), key)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
