"""The training loop: epochs of patch batches, periodic sliding-window validation, checkpoints.

Everything swappable (network, loss, optimiser, scheduler, inferer, data) is built from the
config by the caller and passed in; this module only orders the steps. Settings come from the
``trainer`` config group.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from monai.data import set_track_meta
from omegaconf import DictConfig
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from medseg.core import distributed
from medseg.core.checkpoint import load_checkpoint, require_finite_weights, save_checkpoint
from medseg.core.errors import MedsegError
from medseg.core.threads import single_threaded
from medseg.core.trusted import trusted_config
from medseg.core.utils import autocast_context, channels_last
from medseg.engine.protocols import TrainingData

log = logging.getLogger(__name__)


class _NoWriter:
    """Stands in for TensorBoard's writer on ranks other than 0."""

    def add_scalar(self, *args, **kwargs) -> None: ...
    def add_image(self, *args, **kwargs) -> None: ...
    def close(self) -> None: ...


class Trainer:
    """Runs ``cfg.max_epochs`` epochs (or until ``cfg.max_minutes``), validating every ``cfg.val_every``.

    Under torchrun the network is wrapped in DistributedDataParallel; every rank takes the same
    decisions (validation metrics are gathered, the time budget follows rank 0's clock) and only
    rank 0 writes checkpoints and TensorBoard logs.

    Args:
        cfg: the ``trainer`` config.
        model, loss_fn, optimizer, scheduler: built from their config groups.
        data: loaders and label names.
        run_dir: Hydra run folder; receives ``checkpoints/`` and ``tensorboard/``.
        config: the resolved run config as a plain dict, stored in every checkpoint.
        device: where training runs.
        clock: seconds on a monotonic clock; the time budget follows it (tests inject a fake one).
    """

    def __init__(
        self,
        cfg: DictConfig,
        model: torch.nn.Module,
        loss_fn: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        data: TrainingData,
        run_dir: Path,
        config: dict[str, Any],
        device: torch.device,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.cfg = cfg
        self.net = model.to(device)  # the bare network: checkpoints, validation
        self.memory_format = channels_last(self.net) if cfg.get("channels_last") else None
        self.model = self.net  # what the training step calls: DDP-wrapped under torchrun
        if distributed.world_size() > 1:
            # 1x1x1 kernels have ambiguous channels-last strides; DDP's stride warning about them is harmless
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=[device.index] if device.type == "cuda" else None)
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.data = data
        self.run_dir = run_dir
        self.config = config
        self.device = device
        self.clock = clock
        self.amp = bool(cfg.amp) and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.ckpt_dir = run_dir / "checkpoints"
        self.validator = data.validator
        self.epoch = 0  # completed epochs
        self.global_step = 0
        self.elapsed = 0.0  # training seconds over all sessions of this run (resume included)
        self.best: dict[str, Any] = {"epoch": None, "metrics": None}
        self.last: dict[str, Any] = {"epoch": None, "metrics": None}
        self.history: list[dict[str, Any]] = []
        self.budget = math.inf  # seconds of training this run may use (trainer.max_minutes)
        self._session = (clock(), 0.0)  # (clock at this session's start, elapsed before it)

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "elapsed_seconds": self.elapsed,
            "best": self.best,
            "last": self.last,
            "history": self.history,
            "config": self.config,
            "label_names": {str(k): v for k, v in self.data.label_names.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.elapsed = float(state.get("elapsed_seconds", 0.0))
        self.best, self.last, self.history = state["best"], state["last"], list(state["history"])

    def resume(self, source: str) -> None:
        """``auto``: this run folder's ``last.pt`` if there is one; else a run folder or checkpoint path."""
        path = self.ckpt_dir / "last.pt" if source == "auto" else Path(source)
        if path.is_dir():
            path = path / "checkpoints" / "last.pt"
        if source == "auto" and not path.is_file():
            log.info("resume=auto: no %s yet, starting from scratch", path)
            return
        state = load_checkpoint(path, map_location=self.device)
        require_finite_weights(state, path)
        trusted_config(state.get("config"), path)  # a tampered checkpoint is refused, not continued from
        try:
            self.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError) as err:  # another network, optimiser or task
            trained = state.get("config", {}).get("model", {}).get("_target_", "another network")
            raise MedsegError(f"{path} was trained with {trained} and does not fit this run's "
                              f"{type(self.net).__name__} ({type(err).__name__}); resume with the same model settings, "
                              "or start a new run") from err
        log.info("resumed from %s at epoch %d", path, self.epoch)

    # -- steps -------------------------------------------------------------------------------
    def train_epoch(self, deadline: float | None) -> tuple[float, bool]:
        """One pass over the training loader. Returns mean loss and whether the time budget ran out."""
        self.model.train()
        if not self.data.meta_free_training:
            return self._train_steps(deadline)
        set_track_meta(False)  # random patch transforms skip MetaTensor bookkeeping (MONAI fast-training recipe)
        try:
            return self._train_steps(deadline)
        finally:
            set_track_meta(True)

    def _train_steps(self, deadline: float | None) -> tuple[float, bool]:
        total, count, out_of_time = 0.0, 0, False
        loader = self.data.train_loader
        steps = max(min(len(loader), self.cfg.steps_per_epoch or len(loader)), 1)  # this epoch's steps  # fetched on one thread unless told otherwise: see medseg.core.threads
        batches = single_threaded(loader) if self.cfg.get("fetch_on_one_thread", True) else loader
        bar = tqdm(batches, total=len(loader), desc=f"epoch {self.epoch + 1}/{self.cfg.max_epochs}",
                   leave=False, disable=not (sys.stderr.isatty() and distributed.is_main()), dynamic_ncols=True)
        for batch in bar:
            image = batch["image"].to(self.device, non_blocking=True)
            if self.memory_format is not None and image.dim() == (5 if self.memory_format == torch.channels_last_3d else 4):
                image = image.contiguous(memory_format=self.memory_format)
            label = batch["label"].to(self.device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            with autocast_context(self.device, self.amp):
                outputs = self.model(image)
                loss = self.loss_fn(outputs, label)
            if distributed.any_rank(not bool(torch.isfinite(loss))):
                self._stop_on_non_finite_loss(loss, batch)
            self.scaler.scale(loss).backward()
            if self.cfg.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += loss.item()
            count += 1
            self.global_step += 1
            self._advance_schedule(count / steps)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if deadline is not None and distributed.any_rank(self.clock() > deadline):
                out_of_time = True
                break
            if self.cfg.steps_per_epoch and count >= self.cfg.steps_per_epoch:
                break
        return distributed.mean_over_ranks(total / max(count, 1)), out_of_time

    def validate(self) -> tuple[dict[str, float], Any]:
        """The task's validation metrics on the validation split, and a picture when the task has one."""
        return self.validator(self.net, self.data.val_loader, self.device, self.amp)

    # -- loop --------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Trains to the end (or budget) and returns ``{"best": ..., "last": ...}`` validation results."""
        writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard")) if distributed.is_main() else _NoWriter()
        budget = self.budget = self.cfg.max_minutes * 60 if self.cfg.max_minutes is not None else math.inf
        self._session = (self.clock(), self.elapsed)
        deadline = None if math.isinf(budget) else self._session[0] + max(budget - self.elapsed, 0.0)
        out_of_time = deadline is not None and self.clock() >= deadline
        while self.epoch < self.cfg.max_epochs and not out_of_time:
            t0 = self.clock()
            lr = self.optimizer.param_groups[0]["lr"]
            mean_loss, out_of_time = self.train_epoch(deadline)
            self.epoch += 1
            self.elapsed = distributed.from_main(self._elapsed_now())
            self._advance_schedule(0.0)
            writer.add_scalar("train/loss", mean_loss, self.epoch)
            writer.add_scalar("train/lr", lr, self.epoch)
            log.info("epoch %d/%d  loss %.4f  lr %.2e  %.1fs", self.epoch, self.cfg.max_epochs, mean_loss, lr,
                     self.clock() - t0)
            if out_of_time:
                log.info("time budget of %s min reached: validating and stopping", self.cfg.max_minutes)
            if out_of_time or self.epoch == self.cfg.max_epochs or self._validation_due():
                self._validate_and_record(writer)
            self._save("last.pt")
        if self.last["epoch"] != self.epoch:  # e.g. resumed a finished run: still report fresh numbers
            self._validate_and_record(writer)
            self._save("last.pt")
        result = {"best": self.best, "last": self.last, "epochs": self.epoch, "train_minutes": self.elapsed / 60}
        if self.data.test_loader is not None:
            result["test"] = self.test(writer)
        writer.close()
        return result

    def test(self, writer: SummaryWriter) -> dict[str, float]:
        """Scores the best-validation weights on the labelled test split (scores saved as test_scores.npy)."""
        best = load_checkpoint(self.ckpt_dir / "best.pt", map_location=self.device)
        self.net.load_state_dict(best["model"])
        metrics, _ = self.validator(self.net, self.data.test_loader, self.device, self.amp,
                                    save_scores=str(self.run_dir / "test_scores.npy"))
        for name, value in metrics.items():
            writer.add_scalar(f"test/{name}", value, best["epoch"])
        log.info("test (best-validation weights, epoch %d): %s", best["epoch"],
                 "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return {"epoch": best["epoch"], "metrics": metrics}

    def _elapsed_now(self) -> float:
        start, before = self._session
        return before + self.clock() - start

    def _advance_schedule(self, epoch_fraction: float) -> None:
        """Steps the LR schedule to the run's progress after every training step: epochs done
        (plus ``epoch_fraction`` of the current one), or time used if that is further.

        Schedulers are configured over ``max_epochs`` steps. Under a ``max_minutes`` budget that
        ends the run early, the schedule follows the clock instead, so a time-limited run warms up
        in its first seconds (not its first epoch) and ends on the low learning rates its schedule
        intends.
        """
        if self.scheduler is None:
            return
        progress = (self.epoch + epoch_fraction) / self.cfg.max_epochs
        if not math.isinf(self.budget):
            # Under torchrun every rank must step the schedule alike (DDP never re-syncs weights):
            # within an epoch only the local clock of a single process is followed; ranks follow
            # rank 0's elapsed time, synced at each epoch's end.
            elapsed = self._elapsed_now() if distributed.world_size() == 1 else self.elapsed
            progress = max(progress, elapsed / self.budget)
        target = min(max(int(progress * self.cfg.max_epochs), self.epoch), self.cfg.max_epochs)
        while self.scheduler.last_epoch < target:
            self.scheduler.step()

    def _validation_due(self) -> bool:
        """Every ``val_every`` epochs; under a time budget at most ``budget_validations`` times before
        the final one, evenly over the budget (validation time is training time lost)."""
        if self.epoch % self.cfg.val_every:
            return False
        if math.isinf(self.budget):
            return True
        times = int(self.cfg.get("budget_validations", 4))
        if times <= 0:
            return False
        # a checkpoint from before budget-fitted validation has no "elapsed": count from the resume
        last = max((h.get("elapsed", self._session[1]) for h in self.history), default=0.0)
        return self.elapsed - last >= self.budget / (times + 1)

    def _validate_and_record(self, writer: SummaryWriter) -> None:
        metrics, picture = self.validate()
        self.last = {"epoch": self.epoch, "metrics": metrics, "elapsed": self.elapsed}
        self.history.append(self.last)
        for name, value in metrics.items():
            writer.add_scalar(f"val/{name}", value, self.epoch)
        if picture is not None and self.cfg.log_images:
            writer.add_image("val/image_label_prediction", picture, self.epoch, dataformats="HWC")
        key = self.validator.key
        improved = self.best["metrics"] is None or metrics[key] > self.best["metrics"][key]
        if improved:
            self.best = dict(self.last)
        log.info("validation at epoch %d: %s%s", self.epoch,
                 "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()), "  (best)" if improved else "")
        if improved:
            self._save("best.pt")

    def _stop_on_non_finite_loss(self, loss: torch.Tensor, batch: dict[str, Any]) -> None:
        """A NaN/Inf loss would turn every weight into NaN within a step: stop now, name the cases,
        keep the checkpoints written so far."""
        cases = list(dict.fromkeys(batch.get("case") or []))  # patches of one volume share its id
        last = self.ckpt_dir / "last.pt"
        kept = f"the last good checkpoint {last} (epoch {self.epoch}) is kept" if last.is_file() else "no checkpoint was written"
        raise MedsegError(
            f"loss is {loss.item()} at epoch {self.epoch + 1}, step {self.global_step + 1}, on a batch of "
            f"{', '.join(map(str, cases)) or 'unnamed cases'}: look for NaN/Inf voxels in those images (or lower "
            f"optimizer.lr); {kept}")

    def _save(self, name: str) -> None:
        """Rank 0 writes the checkpoint; the others wait, so a following read sees it.

        Raises:
            MedsegError: a weight is not finite; such a model is never saved.
        """
        bad = [n for n, p in self.net.state_dict().items() if p.is_floating_point() and not torch.isfinite(p).all()]
        if bad:
            raise MedsegError(f"the network's weights became non-finite ({bad[0]}, {len(bad)} tensors) at epoch "
                              f"{self.epoch}; {name} was not written. Lower optimizer.lr or check the data for NaN/Inf")
        if distributed.is_main():
            save_checkpoint(self.state_dict(), self.ckpt_dir / name)
        distributed.barrier()
