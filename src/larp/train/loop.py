"""The one training loop both trainers (tokenizer, AR generator) use.

How a task plugs in
-------------------
``train(make_task, dataset, params, run_dir, weights_out)`` calls ``make_task(device)`` once, after the
process group is up and the RNGs are seeded (seed + rank), and expects an object with:

* ``modules: dict[str, nn.Module]``: every trained module, by name. These are saved in checkpoints and in
  the final weights file (keys ``<name>.<state key>``); frozen helpers (LPIPS, a frozen tokenizer) stay
  outside. Every module's parameters must belong to exactly one optimizer.
* ``metric_names: Sequence[str]``: extra metric columns of the CSV (besides ``loss_<optimizer>``).
* ``configure_optimizers() -> dict[str, torch.optim.Optimizer]``: called after the modules were moved to
  the device. Each param group's ``lr`` is its base lr; the loop multiplies it by the schedule every step.
  A group may carry ``lr_mult`` (default 1): its lr is then base lr x schedule x lr_mult.
* ``phases(step, epoch) -> Sequence[Phase]``: what optimizer step ``step`` (0-based; in epoch ``epoch``) does,
  in order. A phase names an optimizer and a ``loss(batch, ctx) -> StepLoss`` for one micro-batch. For every
  phase the loop runs ``loss`` on all micro-batches of the step (accumulating gradients, syncing them across
  ranks on the last one only), then steps that optimizer. The tokenizer returns [Phase("d", ...), Phase("g", ...)] on
  discriminator steps and [Phase("g", ...)] otherwise; the AR generator returns [Phase("ar", ...)].
* ``sample(step, directory) -> None``: writes samples under ``directory`` (rank 0, every
  ``params.sample_every`` steps, modules in eval mode, under ``torch.no_grad``, RNG state restored after).

Data: ``dataset`` is a map-style Dataset; items are batched by the default collate and moved to the device
(tensors, also inside dicts / lists / tuples) before ``loss`` sees them. An item may draw random numbers
from the global torch / numpy / random generators: every item is loaded under its own seed (see
``sampler``), so augmentations survive a resume and do not depend on the number of DataLoader workers.

Inside ``loss``, call modules through ``ctx.modules[name]``, never ``task.modules``: for the modules the
phase's optimizer trains this is the DDP wrapper (gradient sync), for the others the plain module with its
parameters frozen (``requires_grad`` off, as the official trainer freezes D for the G step). The loop
checks after the first step that parameters agree across ranks and fails loudly when they do not.
``loss`` runs under autocast; ``StepLoss.loss`` is the micro-batch mean (the loop divides by the number of
micro-batches); ``StepLoss.metrics`` holds scalars to log, averaged over micro-batches and ranks.

What the loop owns
------------------
DDP from the torchrun environment (gloo on CPU, NCCL on GPU); gradient accumulation
global_batch / (micro_batch x world size); fp16 / bf16 autocast on CUDA, with one GradScaler per optimizer
for fp16 (kept on CPU too, where it scales fp32 losses by powers of two: same code path and checkpoint
layout); TF32 and optional ``torch.compile`` on CUDA; the lr schedule (``schedule.lr_multiplier``); a data
order that is a pure function of (seed, epoch) (``sampler``); atomic checkpoints every
``checkpoint_every`` steps with model, optimizers, scalers, step and the RNG state of every rank, so that a
resumed run is bit-identical on CPU with an uninterrupted one; SIGTERM / SIGUSR1 (SLURM preemption):
checkpoint at the next step boundary and exit with ``PREEMPTED_EXIT_CODE``; the metrics CSV; a progress
bar; the final safetensors weights.

Why exit code 75 (EX_TEMPFAIL) after a preemption checkpoint: the job must not look successful, otherwise
Snakemake would only complain about a missing output. A non-zero code makes SLURM mark the job FAILED and
Snakemake resubmit it (``--retries`` / ``retries:``); the new job resumes from the checkpoint. The run
directory (checkpoints) must therefore not be a declared Snakemake output, which Snakemake deletes on
failure; only ``weights_out`` is.
"""

from __future__ import annotations

import dataclasses
import random
import signal
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import Dataset
from tqdm import tqdm

from larp.config import TrainParams
from larp.models.layers import frozen
from larp.preemption import PREEMPTED_EXIT_CODE, STOP_SIGNALS  # noqa: F401 (public here too)
from larp.train.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint_file,
    load_latest_checkpoint,
    restore_rng_state,
    save_checkpoint,
    save_weights,
)
from larp.train.csvlog import MetricsCSV
from larp.train.distributed import DistEnv, all_reduce_mean, any_rank, setup_distributed, teardown_distributed
from larp.train.data_order import micro_batches
from larp.train.schedule import lr_multiplier, resolve_schedule



class StepLoss(NamedTuple):
    """What a phase's loss function returns for one micro-batch."""

    loss: torch.Tensor  # scalar, mean over the micro-batch
    metrics: Mapping[str, torch.Tensor | float] = {}  # scalars to log; names from Task.metric_names


@dataclasses.dataclass(frozen=True)
class StepContext:
    step: int  # optimizer steps done before this one (0-based)
    epoch: int  # step // steps_per_epoch
    micro: int  # index of this micro-batch within the step, 0 .. accum - 1
    accum: int  # micro-batches per optimizer step on this rank
    modules: Mapping[str, nn.Module]  # the views to call (DDP for the trained modules, frozen plain others)
    device: torch.device


@dataclasses.dataclass(frozen=True)
class Phase:
    optimizer: str
    loss: Callable[[Any, StepContext], StepLoss]


class Task(Protocol):
    modules: dict[str, nn.Module]
    metric_names: Sequence[str]

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]: ...

    def phases(self, step: int, epoch: int) -> Sequence[Phase]: ...

    def sample(self, step: int, directory: Path) -> None: ...


class Preempted(SystemExit):
    """Raised after the checkpoint that a SIGTERM / SIGUSR1 asked for; exits the process with code 75."""

    def __init__(self, step: int) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.step = step


@dataclasses.dataclass(frozen=True)
class TrainResult:
    steps: int  # optimizer steps done in total (== total_steps)
    resumed_from: int | None  # step of the checkpoint this process started from, None for a fresh start
    weights: Path


# ---- small pieces ----


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)  # also seeds every CUDA device
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


_START_OVER = "to start this run over, move the run directory {} aside"


def resume_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest usable checkpoint of a run directory, or None; a refusal (unsafe or no usable checkpoint)
    is one line that says how to start over."""
    try:
        return load_latest_checkpoint(run_dir / "checkpoints")
    except CheckpointError as e:
        raise type(e)(f"{e}; {_START_OVER.format(run_dir)}") from e


@contextmanager
def _stop_flag() -> Iterator[list[int]]:
    """Collect SIGTERM / SIGUSR1 into a list instead of dying; previous handlers come back afterwards.

    The signals are also unblocked for the duration: a blocked signal mask is inherited from the parent
    process, and a launcher that blocks SIGUSR1 would otherwise turn SLURM's preemption warning into a
    signal that stays pending until the job is killed.
    """
    received: list[int] = []
    try:
        previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in STOP_SIGNALS}
    except ValueError:  # not the main thread: signals cannot be caught here
        warnings.warn(
            "training outside the main thread: SIGTERM/SIGUSR1 will not checkpoint",
            RuntimeWarning,
            stacklevel=3,
        )
        previous = {}
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS) if previous else None
    try:
        yield received
    finally:
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for s, handler in previous.items():
            signal.signal(s, handler)


def _owners(
    modules: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer]
) -> dict[str, str]:
    """Module name -> the one optimizer that trains its parameters."""
    owner: dict[str, str] = {}
    for opt_name, opt in optimizers.items():
        ids = {id(p) for g in opt.param_groups for p in g["params"]}
        for mod_name, module in modules.items():
            if any(id(p) in ids for p in module.parameters()):
                if mod_name in owner:
                    raise ValueError(
                        f"module {mod_name!r} has parameters in optimizers {owner[mod_name]!r} and "
                        f"{opt_name!r}; each module must belong to one optimizer"
                    )
                owner[mod_name] = opt_name
    if missing := sorted(set(modules) - set(owner)):
        raise ValueError(f"modules {missing} have no parameters in any optimizer")
    return owner


def _modules_differing_across_ranks(modules: Mapping[str, nn.Module], env: DistEnv) -> list[str]:
    """Names of modules whose parameters differ between ranks (a loss that bypassed ctx.modules)."""
    sums = torch.stack(
        [torch.stack([p.detach().double().sum() for p in m.parameters()]).sum() for m in modules.values()]
    )
    gathered = [torch.empty_like(sums) for _ in range(env.world_size)]
    dist.all_gather(gathered, sums)
    return [name for i, name in enumerate(modules) if any(g[i] != gathered[0][i] for g in gathered)]


# ---- the loop ----


def train(
    make_task: Callable[[torch.device], Task],
    dataset: Dataset,
    params: TrainParams,
    run_dir: Path,
    weights_out: Path,
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``make_task(device)`` on ``dataset`` until ``total_steps``; resume from ``run_dir`` if possible.

    ``run_dir`` receives ``checkpoints/``, ``metrics.csv`` and ``samples/``; ``weights_out`` the final
    safetensors weights of all modules. total_steps = ``params.max_steps`` if set, else
    epochs x steps_per_epoch with steps_per_epoch = len(dataset) // global_batch (one epoch = one pass over
    the shuffled dataset; ``max_steps`` may span more or fewer epochs). The warm-up lasts
    round(warmup_epochs x steps_per_epoch) steps. Raises :class:`Preempted` (exit code 75) after
    checkpointing when SIGTERM or SIGUSR1 arrived.
    """
    params.validate()
    env = setup_distributed(device)
    try:
        return _Trainer(make_task, dataset, params, Path(run_dir), env).fit(Path(weights_out), progress)
    finally:
        teardown_distributed(env)


class _Trainer:
    """State of one training process: the task's modules in their three views, optimizers, scalers."""

    def __init__(
        self,
        make_task: Callable[[torch.device], Task],
        dataset: Dataset,
        params: TrainParams,
        run_dir: Path,
        env: DistEnv,
    ) -> None:
        self.params, self.run_dir, self.env, self.dataset = params, run_dir, env, dataset
        device = self.device = env.device
        per_step = params.micro_batch * env.world_size
        if params.global_batch % per_step:
            raise ValueError(
                f"train.global_batch ({params.global_batch}) must be a multiple of "
                f"train.micro_batch ({params.micro_batch}) x world size ({env.world_size})"
            )
        self.accum = params.global_batch // per_step
        self.num_items = len(dataset)  # type: ignore[arg-type]
        self.steps_per_epoch, self.total_steps, self.warmup_steps, _ = resolve_schedule(self.num_items, params)

        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        _seed_everything(params.seed + env.rank)
        self.task = task = make_task(device)
        self.modules = task.modules
        for m in self.modules.values():
            m.to(device).train()
        self.optimizers = task.configure_optimizers()
        self.owner = _owners(self.modules, self.optimizers)
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group.setdefault("base_lr", group["lr"])  # saved with the optimizer state
        self.scalers = {
            n: torch.amp.GradScaler(device.type, enabled=params.amp == "fp16") for n in self.optimizers
        }
        self.autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "none": None}[params.amp]
        if device.type != "cuda":
            self.autocast_dtype = None  # autocast is a GPU feature here; CPU runs stay in fp32
        # Three views of each module: plain (state dicts), compiled (frozen calls), DDP (trained calls).
        self.compiled = {
            n: torch.compile(m) if params.compile and device.type == "cuda" else m
            for n, m in self.modules.items()
        }
        self.wrapped = {
            n: DDP(m, device_ids=[device.index] if device.type == "cuda" else None) if env.distributed else m
            for n, m in self.compiled.items()
        }
        names = list(self.optimizers)
        self.columns = [
            "step",
            "epoch",
            *(f"lr_{n}" for n in names),
            *(f"loss_{n}" for n in names),
            *task.metric_names,
            "sec_per_step",
        ]

    # -- one optimizer step --

    def run_phases(self, step: int, batches: list[Any]) -> dict[str, torch.Tensor]:
        """Run the task's phases of ``step`` on this rank's micro-batches; return mean metrics."""
        sums: dict[str, torch.Tensor] = {}
        epoch = step // self.steps_per_epoch
        for phase in self.task.phases(step, epoch):
            if phase.optimizer not in self.optimizers:
                raise ValueError(
                    f"phase names optimizer {phase.optimizer!r}; the task has {list(self.optimizers)}"
                )
            trained = [n for n, o in self.owner.items() if o == phase.optimizer]
            views = {n: self.wrapped[n] if n in trained else self.compiled[n] for n in self.modules}
            with frozen(*[m for n, m in self.modules.items() if n not in trained]):
                for i, batch in enumerate(batches):
                    for n in trained:
                        if isinstance(self.wrapped[n], DDP):  # sync gradients on the last micro-step only
                            self.wrapped[n].require_backward_grad_sync = i == len(batches) - 1
                    ctx = StepContext(step, epoch, i, len(batches), views, self.device)
                    with torch.autocast(
                        self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
                    ):
                        out = phase.loss(batch, ctx)
                    self.scalers[phase.optimizer].scale(out.loss / len(batches)).backward()
                    for k, v in {f"loss_{phase.optimizer}": out.loss, **out.metrics}.items():
                        if k not in self.columns:
                            raise ValueError(
                                f"metric {k!r} is not in the task's metric_names "
                                f"{list(self.task.metric_names)}"
                            )
                        v = torch.as_tensor(v, device=self.device).detach().float()
                        sums[k] = sums[k] + v if k in sums else v
            scaler, opt = self.scalers[phase.optimizer], self.optimizers[phase.optimizer]
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
        return {k: v / len(batches) for k, v in sums.items()}

    def set_lr(self, step: int) -> None:
        mult = lr_multiplier(step, self.warmup_steps, self.total_steps, self.params.min_lr_mult)
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * mult * group.get("lr_mult", 1.0)

    # -- checkpoints --

    def save(self, step: int) -> None:
        mine = capture_rng_state()
        rng = [mine]
        if self.env.distributed:
            rng = [None] * self.env.world_size
            dist.all_gather_object(rng, mine)
        if self.env.is_main:
            save_checkpoint(
                self.run_dir / "checkpoints",
                step,
                {
                    "step": step,
                    "total_steps": self.total_steps,
                    "world_size": self.env.world_size,
                    "num_items": self.num_items,
                    "params": dataclasses.asdict(self.params),
                    "modules": {n: m.state_dict() for n, m in self.modules.items()},
                    "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
                    "scalers": {n: s.state_dict() for n, s in self.scalers.items()},
                    "rng": rng,  # one entry per rank
                },
            )

    def resume(self) -> int | None:
        """Load the newest usable checkpoint (rank 0 picks it, every rank loads it); its step, or None."""
        found = resume_checkpoint(self.run_dir) if self.env.is_main else None
        chosen = [str(found[0]) if found else None]
        if self.env.distributed:
            dist.broadcast_object_list(chosen, src=0)
        if chosen[0] is None:
            return None
        state = found[1] if found else load_checkpoint_file(Path(chosen[0]), verify=False)
        where = chosen[0]
        saved = state["params"]
        if state["num_items"] != self.num_items or saved["global_batch"] != self.params.global_batch:
            raise CheckpointError(
                f"{where}: saved with {state['num_items']} items and global batch "
                f"{saved['global_batch']}, now {self.num_items} and {self.params.global_batch}; "
                f"the saved data position would be meaningless; {_START_OVER.format(self.run_dir)}"
            )
        now = dataclasses.asdict(self.params)
        if self.env.is_main and (changed := [k for k in now if saved.get(k) != now[k]]):
            warnings.warn(
                f"{where}: resuming with changed train params {changed}", RuntimeWarning, stacklevel=4
            )
        for key, have in (
            ("modules", self.modules),
            ("optimizers", self.optimizers),
            ("scalers", self.scalers),
        ):
            if set(state[key]) != set(have):
                raise ValueError(
                    f"{where}: checkpoint {key} {sorted(state[key])} differ from the task's {sorted(have)}"
                )
            for name, obj in have.items():
                obj.load_state_dict(state[key][name])
        rng = state["rng"]
        if len(rng) == self.env.world_size:
            restore_rng_state(rng[self.env.rank])
        else:
            if self.env.is_main:
                warnings.warn(
                    f"{where}: saved by {len(rng)} processes, resumed by {self.env.world_size}: random "
                    f"streams are re-seeded, so the run is not bit-identical to an uninterrupted one",
                    RuntimeWarning,
                    stacklevel=4,
                )
            _seed_everything(self.params.seed + self.env.rank + 1_000_003 * state["step"])
        return int(state["step"])

    # -- samples, metrics --

    def log(self, csv_log: MetricsCSV | None, bar: tqdm, step: int, metrics: dict[str, torch.Tensor]) -> None:
        """One CSV row (rank 0) with the metrics averaged over ranks; progress-bar postfix."""
        names = sorted(metrics)
        values = all_reduce_mean(torch.stack([metrics[k] for k in names]), self.env).tolist()
        now = time.perf_counter()
        row = {
            "step": step,
            "epoch": step / self.steps_per_epoch,
            **{f"lr_{n}": o.param_groups[0]["lr"] for n, o in self.optimizers.items()},
            **dict(zip(names, values, strict=True)),
            "sec_per_step": (now - self.last_log[0]) / (step - self.last_log[1]),
        }
        self.last_log = (now, step)
        if csv_log is not None:
            csv_log.append(row)
        bar.set_postfix({k: f"{v:.4g}" for k, v in zip(names, values, strict=True)}, refresh=False)

    def sample(self, step: int) -> None:
        rng = capture_rng_state()  # sampling must not shift the training random streams
        for m in self.modules.values():
            m.eval()
        with torch.no_grad():
            self.task.sample(step, self.run_dir / "samples")
        for m in self.modules.values():
            m.train()
        restore_rng_state(rng)

    # -- the loop --

    def fit(self, weights_out: Path, progress: bool) -> TrainResult:
        params, env = self.params, self.env
        resumed_from = self.resume()
        step = resumed_from or 0
        csv_log = (
            MetricsCSV(self.run_dir / "metrics.csv", self.columns, resumed_from) if env.is_main else None
        )
        batches = micro_batches(
            self.dataset,
            seed=params.seed,
            global_batch=params.global_batch,
            micro_batch=params.micro_batch,
            num_workers=params.num_workers,
            rank=env.rank,
            world_size=env.world_size,
            start_step=step,
            pin_memory=self.device.type == "cuda",
        )
        bar = tqdm(
            total=self.total_steps,
            initial=step,
            desc="train",
            dynamic_ncols=True,
            disable=not (progress and env.is_main),
        )
        self.last_log = (time.perf_counter(), step)
        try:
            with _stop_flag() as received:
                while step < self.total_steps:
                    self.set_lr(step)
                    metrics = self.run_phases(
                        step, [_to_device(next(batches), self.device) for _ in range(self.accum)]
                    )
                    step += 1
                    bar.update(1)
                    if (
                        step == (resumed_from or 0) + 1
                        and env.distributed
                        and (bad := _modules_differing_across_ranks(self.modules, env))
                    ):
                        raise RuntimeError(
                            f"parameters of {bad} differ across ranks after a step: the task's "
                            f"loss must call modules through ctx.modules (DDP)"
                        )
                    if step % params.log_every == 0 or step == self.total_steps:
                        self.log(csv_log, bar, step, metrics)
                    if params.sample_every and step % params.sample_every == 0 and env.is_main:
                        self.sample(step)
                    stop = any_rank(bool(received), env)
                    if step % params.checkpoint_every == 0 or step == self.total_steps or stop:
                        self.save(step)
                    if stop and step < self.total_steps:
                        if env.distributed:
                            dist.barrier()  # nobody exits (torchrun would kill the rest) before the save ends
                        if env.is_main:
                            bar.write(
                                f"signal {received or '(on another rank)'}: checkpointed step {step}; "
                                f"exiting with code {PREEMPTED_EXIT_CODE} to be resubmitted"
                            )
                        raise Preempted(step)
        finally:
            bar.close()
            batches.close()  # type: ignore[attr-defined]

        if env.is_main:
            save_weights(
                weights_out, self.modules, metadata={"step": str(step), "total_steps": str(self.total_steps)}
            )
        if env.distributed:
            dist.barrier()
        return TrainResult(steps=step, resumed_from=resumed_from, weights=weights_out)
