"""The STML training loop (docs/design.md §7): per epoch, mine nearest-neighbour batches from the
student's g embeddings, then for each batch: teacher pseudo labels W, student loss, optimizer
step, EMA teacher update. After every epoch the package and the resumable state are written.

Under torchrun (training/distributed.py, docs/distributed.md) each rank embeds its shard of the
train set for mining and its slice of every batch; the pseudo labels and losses are computed on
the gathered global batch, so the run gives the model one process would. Rank 0 alone writes."""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from stml_deploy.config import DataRecord, MetricsRecord, TrainingRecord
from stml_deploy.console import info, progress, stderr
from stml_deploy.errors import Interrupted, PackageError, StmlError
from stml_deploy.package import (
    CONFIG_NAME,
    ENGINES_DIR,
    ONNX_DIR,
    PARITY_DIR,
    WEIGHTS_NAME,
    ModelPackage,
)
from training import semi_supervised as semi
from training.config import TrainConfig
from training.device import autocast_factory, resolve_amp
from training.distributed import (
    Ranks,
    barrier,
    buffers_from_main,
    disagreement,
    from_main,
    gather_arrays,
    global_rows,
    join,
    joined,
    shard,
    wrap_student,
)
from training.embedding import embed_source
from training.evaluate import retrieval_metrics
from training.history import LOGS_DIR, TensorBoardLog, write_history
from training.loaders import MultiViewDataset, collate_views, default_workers
from training.losses import stml_loss
from training.model import EmbeddingNet, make_teacher
from training.package_io import architecture_of, build_student, write_package
from training.sampler import NeighbourBatchSampler, RankSlice, nearest_neighbour_table
from training.similarity import contextual_similarity
from training.sources import ImageSource
from training.state import (
    STATE_DIR,
    Progress,
    load_networks,
    load_optimization,
    read_progress,
    save_state,
)
from training.teacher import ema_update


@dataclass
class TrainRequest:
    cfg: TrainConfig
    source: ImageSource
    out: Path
    name: str | None = None
    device: str = "auto"
    amp: str = "auto"
    workers: int | None = None
    strict: bool = False
    val_source: ImageSource | None = None
    stop_after: int | None = None  # epochs to run in this invocation (then resume later)
    resume: bool = False
    overwrite: bool = False
    eval_batch_size: int = 256
    init_from: str | None = None  # a package (path or hf://) whose weights start the run
    # how to run, not what to learn (not recorded as hyper-parameters; --resume may change them)
    sync_bn: bool = False  # SyncBatchNorm across ranks (CUDA only)
    compile: bool = False  # torch.compile the student's training forward
    log: str | None = None  # "tensorboard": epoch scalars to DIR/logs/ as well
    supervision: semi.LabelledSet | None = None  # the labelled images (semi-supervised STML)


def _prepare_out(req: TrainRequest) -> None:
    out = req.out
    has_package = (out / CONFIG_NAME).exists() or (out / STATE_DIR).exists()
    if req.resume:
        return
    if has_package and not req.overwrite:
        raise StmlError(
            f"{out} already holds a model package; continue it with --resume or replace it "
            "with --overwrite"
        )
    if out.exists() and not out.is_dir():
        raise StmlError(f"--out {out}: exists and is not a folder")


def _clear_derived(out: Path) -> None:
    """ONNX variants, parity results and engines belong to the weights they were made from:
    they go when this run writes its first new weights (not earlier, so a run that fails to
    start leaves the old package whole)."""
    stale = [sub for sub in (ONNX_DIR, PARITY_DIR, ENGINES_DIR) if (out / sub).exists()]
    for sub in stale:
        shutil.rmtree(out / sub, ignore_errors=True)
    if stale:
        info(f"{out}: removed {', '.join(stale)} (made from the previous weights; export again)")


def _optimizer(student: EmbeddingNet, cfg: TrainConfig) -> torch.optim.Optimizer:
    from timm.optim import AdamP

    heads = [p for name, p in student.named_parameters() if name.startswith(("f.", "g."))]
    body = [p for name, p in student.named_parameters() if not name.startswith(("f.", "g."))]
    groups = [
        {"params": body, "lr": cfg.lr},
        {"params": heads, "lr": cfg.effective_head_lr},
    ]
    return AdamP(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, nesterov=True)


def _scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    # cosine to 0 over the whole run, stepped per iteration
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps)),
    )


class Trainer:
    def __init__(self, req: TrainRequest, ranks: Ranks | None = None) -> None:
        self.req = req
        self.cfg = req.cfg
        self.ranks = ranks if ranks is not None else join(req.device)
        self.device = self.ranks.device
        self.amp_dtype = resolve_amp(req.amp, self.device)
        self.autocast = autocast_factory(self.device, self.amp_dtype)
        self.workers = default_workers() if req.workers is None else req.workers
        self.name = req.name or req.out.name
        self.active = np.arange(len(req.source))  # source indices still in use

    # --- data ---------------------------------------------------------------------------
    def _active_source(self) -> ImageSource:
        if len(self.active) == len(self.req.source):
            return self.req.source
        return self.req.source.subset(self.active)

    def _check_batch_fits(self, images: int) -> None:
        """A batch larger than the data set would repeat images many times over (and can
        exhaust memory): refused before any work, and again once unreadable files are out."""
        if self.cfg.batch_size > images:
            raise StmlError(
                f"--batch-size {self.cfg.batch_size} exceeds the {images} readable training "
                f"images in {self.req.source.root}; lower it"
            )

    def _mine(self, student: EmbeddingNet, epoch: int) -> np.ndarray:
        """Nearest-neighbour table over the train set; drops images that cannot be read."""
        student.eval()
        source = self._active_source()
        mine = shard(len(source), self.ranks)  # this rank's share, gathered back in order
        with self.autocast():
            embedded = embed_source(
                student.embed_aux, source.subset(mine) if self.ranks.distributed else source,
                self.spec, self.device, self.req.eval_batch_size, self.workers,
                self.req.strict, f"epoch {epoch + 1}: mining neighbours",
            )  # fmt: skip
        vectors = gather_arrays(embedded.vectors, self.ranks, main_only=True)
        kept = gather_arrays(mine[embedded.kept], self.ranks)
        if len(kept) < len(source):
            self.active = self.active[kept]
        if len(self.active) < 2:
            raise StmlError(f"{self.req.source.root}: fewer than 2 readable images to train on")
        self._check_batch_fits(len(self.active))
        # one table, rank 0's, so every rank walks the same batch plan
        width = min(self.cfg.neighbours, len(kept))
        table = (
            nearest_neighbour_table(vectors, self.cfg.neighbours)
            if self.ranks.is_main
            else np.empty((len(kept), width), dtype=np.int64)
        )
        return from_main(table, self.ranks)

    def _loader(self, sampler: NeighbourBatchSampler) -> DataLoader:
        return DataLoader(
            MultiViewDataset(self._active_source(), self.spec, self.cfg.views),
            batch_sampler=RankSlice(sampler, self.ranks.rank, self.ranks.world),
            collate_fn=collate_views,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
        )

    def _validate(self, student: EmbeddingNet) -> dict[str, float]:
        val = self.req.val_source
        assert val is not None and val.labels is not None
        student.eval()
        with self.autocast():
            embedded = embed_source(
                student.embed, val, self.spec, self.device, self.req.eval_batch_size,
                self.workers, self.req.strict, "validation",
            )  # fmt: skip
        metrics = retrieval_metrics(embedded.vectors, embedded.labels(val), with_nmi=False)
        return {k: metrics[k] for k in ("recall_at_1", "recall_at_2", "recall_at_4", "map_at_r")}

    # --- the run ------------------------------------------------------------------------
    def run(self) -> ModelPackage:
        req, cfg = self.req, self.cfg
        if req.val_source is not None and req.val_source.labels is None:
            raise StmlError(
                f"--val {req.val_source.root}: validation data needs labels (class sub-folders)"
            )
        self._check_batch_fits(len(req.source))
        RankSlice.check_splits(cfg.batch_size // cfg.neighbours * cfg.neighbours, self.ranks.world)
        _prepare_out(req)
        # a missing tensorboard is said before any work
        board = TensorBoardLog(req.out / LOGS_DIR) if req.log and self.ranks.is_main else None
        torch.manual_seed(cfg.seed)
        student, self.spec = build_student(cfg)
        # read once (an hf-hub: backbone's timm config, from the Hub cache timm just filled)
        self.architecture = architecture_of(cfg, student)
        if req.init_from and not req.resume:
            from stml_deploy.hub import open_package
            from stml_deploy.package import WEIGHTS_NAME
            from training.package_io import load_weights

            load_weights(open_package(req.init_from).path(WEIGHTS_NAME), student)
        teacher = make_teacher(student)
        on = f"{self.device}" + (
            f" x {self.ranks.world} processes" if self.ranks.distributed else ""
        )
        info(
            f"training on {req.source.name}: {len(req.source)} images; {cfg.epochs} epochs of {cfg.backbone} on {on}"
        )
        history: list[dict[str, Any]] = []
        start_epoch = global_step = 0
        if req.resume:
            saved = read_progress(req.out)
            self._check_resume(saved)
            load_networks(req.out, student, teacher)
            history, start_epoch, global_step = saved.history, saved.epochs_done, saved.global_step
            dropped = set(saved.dropped)
            self.active = np.array(
                [i for i in range(len(req.source)) if i not in dropped], dtype=np.int64
            )
            if start_epoch >= cfg.epochs:
                info(f"{req.out}: training already complete ({start_epoch}/{cfg.epochs} epochs)")
                problem = _weights_record_problem(req.out)
                if problem is None:
                    return ModelPackage.load(req.out)
                # stopped between writing the weights and config.json: the state has both
                info(f"rewriting the package from the training state ({problem})")
                return self._publish(student, saved)
            info(f"resuming {req.out} after epoch {start_epoch}/{cfg.epochs}")
        student.to(self.device)
        teacher.to(self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            student.to(memory_format=torch.channels_last)
            teacher.to(memory_format=torch.channels_last)
        self.model = wrap_student(student, self.ranks, req.sync_bn)  # what the step calls
        if req.compile:
            self.model = torch.compile(self.model)

        table = self._mine(student, start_epoch)
        sampler = NeighbourBatchSampler(table, cfg.batch_size, cfg.seed)
        total_steps = cfg.epochs * len(sampler)
        optimizer = _optimizer(student, cfg)
        scheduler = _scheduler(optimizer, cfg, total_steps)
        if req.resume:
            load_optimization(req.out, optimizer, scheduler)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        last_epoch = (
            cfg.epochs if req.stop_after is None else min(cfg.epochs, start_epoch + req.stop_after)
        )
        package = None
        for epoch in range(start_epoch, last_epoch):
            if epoch > start_epoch:
                table = self._mine(student, epoch)
            labelled = semi.labelled_groups(req.supervision, self.active, cfg)
            sampler.set_epoch(epoch, table, labelled)
            started = time.perf_counter()
            sums = {"total": 0.0, "rc_f": 0.0, "rc_g": 0.0, "kl": 0.0}
            student.train()
            try:
                with progress("loss", transient=False) as bar:  # images/s and the epoch's ETA
                    task = bar.add_task(
                        f"epoch {epoch + 1}/{cfg.epochs}",
                        total=len(sampler) * cfg.batch_size,
                        loss="",
                    )
                    for step, (pixels, ids) in enumerate(self._loader(sampler)):
                        terms = self._step(student, teacher, optimizer, scaler, pixels, ids)
                        scheduler.step()
                        global_step += 1
                        for key, value in terms.items():
                            sums[key] = sums.get(key, 0.0) + value
                        if not math.isfinite(terms["total"]):
                            raise StmlError(
                                f"loss is not finite at epoch {epoch + 1}, step {step + 1}; "
                                "try a lower --lr (or --amp off)"
                            )
                        shown = f"loss {terms['total']:.4f} (rc {terms['rc_f']:.3f}/{terms['rc_g']:.3f} kl {terms['kl']:.4f})"
                        bar.update(task, advance=cfg.batch_size, loss=shown)
            except KeyboardInterrupt:
                raise Interrupted(
                    f"interrupted in epoch {epoch + 1}; {req.out} holds the last complete epoch "
                    f"({epoch}); continue with the same command plus --resume"
                ) from None
            steps = len(sampler)
            entry: dict[str, Any] = {
                "epoch": epoch + 1,
                **{k: v / steps for k, v in sums.items()},
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": round(time.perf_counter() - started, 2),
            }
            self._check_teacher_agrees(teacher, epoch)
            if req.val_source is not None and self.ranks.is_main:
                entry["validation"] = self._validate(student)
                info(
                    f"epoch {epoch + 1}: validation "
                    + ", ".join(f"{k} {v:.4f}" for k, v in entry["validation"].items())
                )
            if not stderr.is_terminal:  # no live bar in logs: one line per epoch instead
                info(
                    f"epoch {epoch + 1}/{cfg.epochs}: loss {entry['total']:.4f} (rc "
                    f"{entry['rc_f']:.3f}/{entry['rc_g']:.3f} kl {entry['kl']:.4f}), {entry['seconds']:.0f} s"
                )
            history.append(entry)
            saved = Progress(
                epoch + 1, global_step, cfg.to_dict(), req.source.summary(with_labels=False), history,
                sorted(set(range(len(req.source))) - set(self.active.tolist())),
                semi.progress_record(req.supervision),
            )  # fmt: skip
            if self.ranks.is_main:
                save_state(req.out, student, teacher, optimizer, scheduler, saved)
            package = self._publish(student, saved)
            # derived files of the previous weights go only once the new weights, config and
            # state are safely written (a full disk before that leaves the old package whole)
            if epoch == start_epoch and self.ranks.is_main:
                _clear_derived(req.out)
            if board is not None:
                board.log_epoch(entry)
        if board is not None:
            board.close()
        assert package is not None
        return package

    def _global(self, rows: torch.Tensor, with_grad: bool = False) -> torch.Tensor:
        """Every rank's rows of this batch, in one process's order (the identity on one)."""
        return global_rows(rows, self.ranks, self.cfg.views, with_grad)

    def _step(
        self,
        student: EmbeddingNet,
        teacher: EmbeddingNet,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        pixels: torch.Tensor,
        ids: torch.Tensor,
    ) -> dict[str, float]:
        """student forward on this rank's slice -> gather the global batch -> W -> losses."""
        pixels = pixels.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        ids = ids.to(self.device)
        labels = semi.batch_labels(self.req.supervision, self.active, ids)  # -1: unlabelled
        with self.autocast():
            f, g = self.model(pixels)
            with torch.no_grad():
                _, teacher_g = teacher(pixels)
        f, g = self._global(f, with_grad=True), self._global(g, with_grad=True)
        teacher_g, ids = self._global(teacher_g), self._global(ids)
        if labels is not None:  # labels travel with the ids
            labels = self._global(labels)
        w = contextual_similarity(teacher_g, ids, self.cfg.sigma, self.cfg.topk)
        w = semi.ground_truth_pairs(w, labels)  # labelled pairs: the ground truth
        terms = semi.add_supervised(stml_loss(f, g, w, self.cfg.delta), f, labels, self.cfg)
        optimizer.zero_grad(set_to_none=True)
        # no rescaling by the world size: the gather's backward sums, DDP averages
        scaler.scale(terms.total).backward()
        scaler.step(optimizer)
        scaler.update()
        # after the step (the mean-teacher convention); the reference code updates before it,
        # which lags the teacher by one step: at momentum 0.999 a 0.1% difference per step
        ema_update(teacher, student, self.cfg.momentum)
        buffers_from_main(teacher, self.ranks)  # per-rank BatchNorm statistics -> rank 0's
        return terms.as_floats()

    def _check_teacher_agrees(self, teacher: EmbeddingNet, epoch: int) -> None:
        """The ranks' teachers are identical by construction; a difference is a bug that would
        make the ranks pseudo-label differently, so it stops the run."""
        differs = disagreement(teacher, self.ranks)
        if differs != 0.0:
            raise StmlError(
                f"epoch {epoch + 1}: the EMA teacher differs between ranks (by {differs:.3g}); "
                "please report this"
            )

    def _publish(self, student: EmbeddingNet, saved: Progress) -> ModelPackage:
        """Rank 0 writes the package; the others wait for it and open it (--out must be a
        folder every rank sees)."""
        package = self._write_package(student, saved) if self.ranks.is_main else None
        barrier(self.ranks)
        return package if package is not None else ModelPackage.load(self.req.out, verify=False)

    def _check_resume(self, saved: Progress) -> None:
        """The options come from the saved run (resume_config); the data must be the same."""
        semi.check_resume(saved.supervision, self.req.supervision, self.req.out)
        now = self.req.source.summary(with_labels=False)
        if saved.data.get("images") != now.get("images") or saved.data.get("name") != now.get(
            "name"
        ):
            raise StmlError(
                f"{self.req.out}: the run began on {saved.data.get('name')} "
                f"({saved.data.get('images')} images), not {now.get('name')} ({now.get('images')})"
            )
        if saved.data.get("files_sha256", now.get("files_sha256")) != now.get("files_sha256"):
            raise StmlError(
                f"{self.req.out}: the files in {now.get('root')} changed since the run began "
                f"(same count, different names); resuming would mix two data sets"
            )

    def _write_package(self, student: EmbeddingNet, saved: Progress) -> ModelPackage:
        training = TrainingRecord(
            hyperparameters=self.cfg.to_dict(),
            data=DataRecord.from_json(saved.data),
            epochs_done=saved.epochs_done,
            complete=saved.epochs_done >= self.cfg.epochs,
            device=str(self.device),
            amp=str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off",
            history=saved.history,
            init_from=self.req.init_from,
            supervision=semi.package_record(saved.supervision),
        )
        metrics = {}
        if saved.history and "validation" in saved.history[-1]:
            metrics["validation"] = MetricsRecord(saved.history[-1]["validation"])
        package = write_package(
            self.req.out, student, self.architecture, self.spec, self.name, training, metrics
        )
        # what a user watches: the history as a table and a picture, published with the package
        for rel in write_history(self.req.out, saved.history):
            package.record_artifact(rel, kind=rel.rsplit(".", 1)[0])
        return package


def _weights_record_problem(out: Path) -> PackageError | None:
    """Why config.json does not describe model.safetensors (None: it does). Other artifacts
    are not looked at: rewriting the config would drop their records."""
    try:
        ModelPackage.load(out, verify=False).verify(only=[WEIGHTS_NAME])
    except PackageError as exc:  # unreadable config.json, or weights not the recorded ones
        return exc
    return None


def train(req: TrainRequest) -> ModelPackage:
    """Train in this process: alone, or as one rank of a torchrun launch."""
    with joined(req.device) as ranks:
        return Trainer(req, ranks).run()
