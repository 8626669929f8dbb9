"""``python -m training train``: train a Spikeformer on binned event windows.

    python -m training train --config small --data sim:1200 --out runs/small-sim [options]

Retrain the built-in checkpoint (``inference/checkpoints/spikeformer-medium-sim``) on four draws of
the four simulated domains, $D, $M and the eight of $N (README, "The simulator and the built-in
model"; 71 + 57 + 50 min on the 2-core CPU, alone)::

    python -m training train --config medium --previous-frame --normalisation density:4 --filters ba:5000 \\
        --data $D --out runs/base --epochs 45 --repeats 2 --export runs/base.json
    python -m training train --from runs/base.json --data $D+$M --out runs/eight --epochs 18 --lr 6e-4 \\
        --warmup-epochs 1 --repeats 2 --export-epoch last --export runs/eight.json
    python -m training train --from runs/eight.json --data $D+$M$N --out runs/builtin --epochs 14 --lr 4e-4 \\
        --warmup-epochs 1 --export-epoch last --export inference/checkpoints/spikeformer-medium-sim.json

    python -m training evaluate --checkpoint inference/checkpoints/spikeformer-medium-sim.json --data $D \\
        --confusion confusion.png

What it does: AdamW (no weight decay on norms, biases, PLIF and embeddings), linear warm-up then
cosine decay of the learning rate per step, label smoothing, gradient-norm clipping, AMP on CUDA
(bf16 autocast, or fp16 with a GradScaler), optional EMA of the weights (``--ema 0.999``; the EMA
model is the one evaluated and saved), a fixed seed, a tqdm bar, metrics in ``OUT/metrics.csv`` and
TensorBoard (``OUT/tensorboard``), a checkpoint every epoch (``OUT/last.json``) and the best one
(``OUT/best.json``) via ``training.checkpoint.save_checkpoint``, and ``--export PATH.json`` which
copies the best (or with ``--export-epoch last`` the last) checkpoint there at the end.

A causal (streaming) model, ``--causal`` (#17): from scratch with ``--config``, or from a windowed
checkpoint's weights with ``--from CHECKPOINT --causal`` (every weight but the time embedding, which
a causal model does without; its window, mapping, normalisation and filters stay the parent's).
``--onset-windows N`` adds N windows per training segment that begin before the gesture (in the idle
time before it), their steps before the onset unlabelled: the model learns to decide from a
gesture's first steps after standing still, as a stream meets it (``training.data``, onset windows).

Weight-space ensembling, ``--from CHECKPOINT --interpolate A`` (WiSE-FT, Wortsman et al., CVPR 2022):
every checkpoint saved is ``(1 - A) * parent + A * trained``, weight by weight, and is what each
epoch evaluates; the optimizer keeps training the unmixed weights. A few takes then move the model
toward the new room without erasing what the parent knew. The output rows of classes the parent
does not have are the trained ones.

Distillation, ``--distill-from TEACHER [--distill-weight W]`` (Hinton et al., 2015): the loss is
``(1 - W) * cross-entropy + W * T^2 * KL(teacher || student)`` at temperature ``T = 2``, the
teacher's class distribution over the whole (augmented) window being the target at every labelled
step of a causal student. A causal model thus learns from the windowed one what the full window
says, from its first steps on. The teacher must make windows as the student does (window, mapping,
normalisation; it reads the student's frames, whatever its own noise filters) and know the same
classes.

Rehearsal, ``--from CHECKPOINT --rehearse SPEC``: recordings of what the parent learnt (``sim:110``)
are binned like ``--data`` and every epoch adds as many augmented windows of them (of the classes
``--data`` has) as ``--data`` gives, so that a few takes do not overwrite the rest.

Resume: ``--resume OUT`` (or ``OUT/train_state.json``) continues after the last finished epoch.
``OUT/train_state.safetensors`` holds the model, optimizer and EMA tensors, ``train_state.json``
the scalars (epoch, step, best accuracy, optimizer hyper-parameters, the run's options): no pickle.
The learning rate is a pure function of the step, so no scheduler state is needed.

Windows: ``--bins`` (default: the preset's time steps), ``--bin-us`` (50 ms), ``--stride-us`` (the
live stride, default ``--bin-us``), ``--input-size WxH`` (default: the preset's). They, the sensor
mapping (``--method``, no flips: see ``training.data`` on orientation) and ``--normalisation`` are
stored in the checkpoint; the live pipeline follows the checkpoint.

Several GPUs or nodes: ``torchrun --nproc_per_node N -m training train ...`` (DistributedDataParallel,
NCCL on CUDA, gloo on CPU; a DistributedSampler; ``--batch-size`` is per process; rank 0 prepares
the data cache, logs and writes checkpoints; evaluation is sharded and summed over ranks).
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from stream.binning import WindowSpec, check_filters, check_normalisation
from stream.classes import GESTURE_CLASSES, MIRRORED_CLASS
from stream.coverage import coverage_spec, window_coverage
from stream.events import SensorSize
from stream.stage import ArgumentParser
from training import data
from training.augment import AUGMENT_PRESETS, augment_preset
from training.evaluate import EvalResult, evaluate_model
from training.spikeformer import PRESETS, SpikeformerConfig, build_model

DEFAULT_BIN_US = 50_000
DISTILL_TEMPERATURE = 2.0  # --distill-from: the softmax temperature of teacher and student
TRAIN_STATE = "train_state"
TRAIN_STATE_VERSION = 1
METRIC_FIELDS = ("epoch", "step", "lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
                 "epoch_seconds", "samples_per_second")  # fmt: skip


# --- options ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="spikeformer-live train", description="Train a Spikeformer on event windows.")
    add = parser.add_argument
    add("--config", default=None, help=f"preset ({', '.join(PRESETS)}) or a model-config .json (not with --from)")
    add("--data", required=True, help="data spec: sim:N | sim:DIR | dvsgesture:DIR | tonic:DIR | folder:CSV, "
        "or several joined by +")
    add("--out", required=True, help="run directory (checkpoints, metrics.csv, tensorboard/)")
    add("--epochs", type=int, default=24)
    add("--batch-size", type=int, default=16, help="per process")
    add("--lr", type=float, default=2e-3, help="peak learning rate")
    add("--min-lr-ratio", type=float, default=0.02, help="final learning rate / peak")
    add("--weight-decay", type=float, default=0.02)
    add("--warmup-epochs", type=float, default=0.5)
    add("--label-smoothing", type=float, default=0.1)
    add("--clip-grad", type=float, default=1.0, help="max gradient norm (0 = off)")
    add("--ema", type=float, default=0.0, help="EMA decay of the weights per step (0 = off, e.g. 0.999)")
    add("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto", help="CUDA only; auto = bf16 if supported")
    add("--seed", type=int, default=0)
    add("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    add("--workers", type=int, default=None, help="DataLoader workers (default: 0 on CPU, 4 on CUDA)")
    add("--bins", type=int, default=None, help="time bins T per window (default: the preset's time steps)")
    add("--bin-us", type=int, default=DEFAULT_BIN_US, help="bin duration in µs (default 50 ms)")
    add("--stride-us", type=int, default=None, help="live window stride in µs (default: --bin-us)")
    add("--input-size", type=SensorSize.parse, default=None, help="model input WxH (default: the preset's)")
    add("--method", choices=("area", "nearest"), default="area", help="sensor -> input downsampling")
    add("--normalisation", default="log1p", help="log1p | binary | density:MAX | clip:MAX | none")
    add("--filters", default=None, help="noise filters: none | ba:US (background activity within US µs; "
        "ba:US:KNEE_HZ:POWER: shorter as the noise rises above the knee) | hot:PERIOD_US:MAX_EVENTS | "
        "flicker:MIN_HZ:MAX_HZ (bursts repeating at that rate), comma separated "
        "(e.g. ba:10000,hot:1000000:1000,flicker:80:150); default none, or the parent's with --from")
    add("--train-windows", type=int, default=6, help="random windows per training segment (cached pool)")
    add("--eval-windows", type=int, default=2, help="fixed windows per test segment")
    add("--augment", choices=tuple(AUGMENT_PRESETS), default="moderate",
        help="augmentation preset (training.augment): moderate (default), shape (moderate + body shape and "
        "outline jitter), full (zoom, rotation, occluders, drop-out, noise, flip, shift), basic (flip, shift, "
        "drop-out), none")
    add("--flip-prob", type=float, default=None, help="left-right flip with class swap (default: the preset's)")
    add("--max-shift", type=int, default=None, help="random shift in input pixels (default: the preset's)")
    add("--max-drop", type=float, default=None, help="event drop-out fraction, upper bound (default: the preset's)")
    add("--stretch", type=float, default=2.0, help="time stretch of the pool windows: 1/S to S times as fast (1 = off)")
    add("--onset-windows", type=int, default=0,
        help="a causal model: this many more pool windows per training segment that begin 1 to T-1 steps before "
             "the gesture (steps before it unlabelled)")
    add("--cache", default=None, help=f"cache directory (default {data.DEFAULT_CACHE_DIR})")
    add("--bin-workers", type=int, default=os.cpu_count() or 1, help="processes that read and bin recordings")
    add("--sim-seed", type=int, default=0, help="seed of a generated sim:N data set")
    add("--resume", default=None, help="run directory or its train_state.json")
    add("--export", default=None, help="copy the --export-epoch checkpoint (default the best) to this .json path at the end")
    add("--export-epoch", choices=("best", "last"), default="best",
        help="which checkpoint --export copies: the best on the test split, or the last epoch's (when the test "
        "split is what you will report, as fine-tuning's held-out takes are)")
    add("--from", dest="init_from", default=None,
        help="start from this checkpoint's weights (fine-tuning): its model, window, mapping, normalisation and "
        "filters (unless --filters) are kept; the head is made anew for classes it does not have; with --causal a "
        "windowed parent becomes a causal model")
    add("--freeze-tokenizer", action="store_true", help="with --from: train only the transformer and the head")
    add("--rehearse", default=None, metavar="SPEC",
        help="with --from: recordings of what the parent learnt (e.g. sim:110), as many augmented windows per epoch as "
        "--data gives, so that fine-tuning does not forget; only classes --data has are used")
    add("--interpolate", type=float, default=1.0, metavar="A",
        help="with --from: save (1-A) * parent + A * trained weights, a weight-space ensemble (WiSE-FT) that keeps "
        "more of what the parent knew (0 < A <= 1; default 1 = the trained weights)")
    add("--distill-from", default=None, metavar="TEACHER",
        help="a checkpoint whose class distribution over the whole window is a second target (knowledge "
        "distillation; e.g. the windowed model for a causal student); it must read windows as the student does")
    add("--distill-weight", type=float, default=0.5, metavar="W",
        help="with --distill-from: loss = (1-W) * cross-entropy + W * distillation (0 < W <= 1)")
    add("--repeats", type=int, default=1, help="windows drawn per training segment and epoch (few recordings)")
    add("--causal", action="store_true", help="a causal (streaming) model, trained with a loss at every prefix")
    add("--previous-frame", action="store_true",
        help="the tokenizer sees each bin next to the one before (local motion; see SpikeformerConfig.previous_frame)")
    add("--no-progress", action="store_true", help="no tqdm bar")
    return parser


def parse_normalisation(text: str) -> dict[str, Any] | None:
    """``log1p`` | ``binary`` | ``density:MAX`` | ``clip:MAX`` | ``none`` -> a ``stream.binning``
    normalisation spec."""
    if text == "none":
        return None
    if text in ("log1p", "binary"):
        return {"kind": text}
    kind, _, maximum = text.partition(":")
    if kind in ("clip", "density"):
        try:
            return check_normalisation({"kind": kind, "max": float(maximum)})
        except ValueError:
            pass
    raise ValueError(f"--normalisation must be log1p, binary, density:MAX, clip:MAX (MAX > 0) or none, got {text!r}")


def parse_filters(text: str) -> dict[str, Any] | None:
    """``none`` | ``ba:US[:KNEE_HZ:POWER]`` | ``hot:PERIOD_US:MAX_EVENTS`` | ``flicker:MIN_HZ:MAX_HZ``
    (comma separated) -> a ``stream.binning`` filter spec. ``ba:US:KNEE_HZ:POWER``: the window
    shrinks as the noise rises above the knee (``background_activity_adapt``)."""
    if text == "none":
        return None
    spec: dict[str, Any] = {"background_activity_us": None, "hot_pixels": None, "flicker": None}
    try:
        for part in text.split(","):
            kind, *values = part.split(":")
            if kind == "ba" and len(values) in (1, 3):
                spec["background_activity_us"] = int(values[0])
                spec["background_activity_adapt"] = None  # the last ba: part is the one that counts
                if len(values) == 3:
                    spec["background_activity_adapt"] = {"knee_hz": float(values[1]), "power": float(values[2])}
            elif kind == "hot" and len(values) == 2:
                spec["hot_pixels"] = {"period_us": int(values[0]), "max_events": int(values[1])}
            elif kind == "flicker" and len(values) == 2:
                spec["flicker"] = {"min_hz": float(values[0]), "max_hz": float(values[1])}
            else:
                raise ValueError(part)
        return check_filters(spec)
    except ValueError:
        raise ValueError(f"--filters must be none, or ba:US[:KNEE_HZ:POWER], hot:PERIOD_US:MAX_EVENTS and/or "
                         f"flicker:MIN_HZ:MAX_HZ, got {text!r}") from None


def format_filters(spec: dict[str, Any] | None) -> str:
    """A ``stream.binning`` filter spec as ``--filters`` text (the inverse of ``parse_filters``)."""
    spec = check_filters(spec)
    if spec is None:
        return "none"
    parts = [] if spec["flicker"] is None else [f"flicker:{spec['flicker']['min_hz']:g}:{spec['flicker']['max_hz']:g}"]
    adapt = spec.get("background_activity_adapt")
    adapt_text = "" if adapt is None else f":{adapt['knee_hz']:g}:{adapt['power']:g}"
    parts += [] if spec["background_activity_us"] is None else [f"ba:{spec['background_activity_us']}{adapt_text}"]
    hot = spec["hot_pixels"]
    parts += [] if hot is None else [f"hot:{hot['period_us']}:{hot['max_events']}"]
    return ",".join(parts)


def model_config(name_or_path: str, *, bins: int | None, input_size: SensorSize | None, num_classes: int,
                 causal: bool = False, previous_frame: bool = False) -> SpikeformerConfig:  # fmt: skip
    """The preset (or JSON config file) with the window's T, the input size and the class count."""
    if name_or_path in PRESETS:
        base = PRESETS[name_or_path]
    elif name_or_path.endswith(".json") and Path(name_or_path).is_file():
        base = SpikeformerConfig.from_dict(json.loads(Path(name_or_path).read_text()))
    else:
        raise ValueError(f"--config must be a preset ({', '.join(sorted(PRESETS))}) or a config .json, got {name_or_path!r}")
    changes: dict[str, Any] = {"num_classes": num_classes, "causal": causal}
    if previous_frame:
        changes["previous_frame"] = True
    if bins is not None:
        changes["time_steps"] = bins
    if input_size is not None:
        changes["input_size"] = (input_size.height, input_size.width)
    config = dataclasses.replace(base, **changes)
    return config if config == base else dataclasses.replace(config, name="custom")


# --- learning rate, EMA, distributed --------------------------------------------------------------


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, min_ratio: float) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine down to ``min_ratio * peak``."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return peak * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


class ModelEma:
    """Exponential moving average of a model's parameters (buffers are copied), in its own copy."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"--ema decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.mul_(self.decay).add_(p.detach(), alpha=1.0 - self.decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a (torchrun) job; world_size 1 without torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device_text: str | None) -> tuple[Distributed, torch.device]:
    """Join the process group torchrun describes (RANK/WORLD_SIZE/LOCAL_RANK), pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device_text is None:
        device_text = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_text)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank if world_size > 1 else 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, world_size, local_rank), device


def _sum_over_ranks(values: np.ndarray, job: Distributed) -> np.ndarray:
    if not job.enabled:
        return values
    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.numpy()


def evaluate_sharded(model: nn.Module, dataset: torch.utils.data.Dataset, classes: tuple[str, ...], job: Distributed,
                     *, batch_size: int, device: torch.device) -> EvalResult:  # fmt: skip
    """Each rank evaluates items ``rank::world_size``; confusion and loss are summed over ranks."""
    result = evaluate_model(model, dataset, classes, batch_size=batch_size, device=device,
                            indices=range(job.rank, len(dataset), job.world_size))  # fmt: skip
    summed = _sum_over_ranks(np.append(result.confusion.ravel(), result.loss_sum), job)
    return EvalResult(summed[:-1].reshape(result.confusion.shape).round().astype(np.int64), float(summed[-1]), classes)


# --- training state (no pickle) -------------------------------------------------------------------


def save_train_state(out_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ema: ModelEma | None,
                     scalars: dict[str, Any]) -> None:  # fmt: skip
    """``OUT/train_state.safetensors`` (model, optimizer, EMA tensors) + ``train_state.json`` (scalars)."""
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().contiguous().cpu() for k, v in ema.model.state_dict().items()})
    optimizer_state = optimizer.state_dict()
    optimizer_scalars: dict[str, dict[str, Any]] = {}
    for index, state in optimizer_state["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                optimizer_scalars.setdefault(str(index), {})[name] = value
    document = dict(scalars, version=TRAIN_STATE_VERSION, optimizer_param_groups=optimizer_state["param_groups"],
                    optimizer_scalars=optimizer_scalars)  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    temporary = out_dir / f".{TRAIN_STATE}.safetensors.tmp"
    save_file(tensors, str(temporary))
    os.replace(temporary, out_dir / f"{TRAIN_STATE}.safetensors")
    (out_dir / f".{TRAIN_STATE}.json.tmp").write_text(json.dumps(document, indent=1))
    os.replace(out_dir / f".{TRAIN_STATE}.json.tmp", out_dir / f"{TRAIN_STATE}.json")


def load_train_state(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     ema: ModelEma | None) -> dict[str, Any]:  # fmt: skip
    """Restore what ``save_train_state`` wrote into ``model``/``optimizer``/``ema``; return the scalars."""
    path = Path(path)
    json_path = path / f"{TRAIN_STATE}.json" if path.is_dir() else path
    tensor_path = json_path.with_suffix(".safetensors")
    if not json_path.is_file() or not tensor_path.is_file():
        raise ValueError(f"--resume: {json_path} and {tensor_path.name} not found (a run directory was expected)")
    document = json.loads(json_path.read_text())
    if document.get("version") != TRAIN_STATE_VERSION:
        raise ValueError(f"--resume: {json_path} has version {document.get('version')}, expected {TRAIN_STATE_VERSION}")
    config = getattr(model, "config", None)
    if config is not None and document.get("model_config") != config.to_dict():
        raise ValueError(f"--resume: {json_path} was trained with another model configuration "
                         f"({document.get('model_config')}); check --config, --bins and --input-size")
    tensors = load_file(str(tensor_path))

    def section(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    model.load_state_dict(section("model."))
    if ema is not None:
        stored = section("ema.")
        ema.model.load_state_dict(stored if stored else model.state_dict())
    state: dict[int, dict[str, Any]] = {}
    for key, value in section("optimizer.").items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, scalars in document["optimizer_scalars"].items():
        state.setdefault(int(index), {}).update(scalars)
    groups = document["optimizer_param_groups"]
    for group in groups:
        for key, value in group.items():
            if isinstance(value, list) and key != "params":
                group[key] = tuple(value)
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    return document


# --- the run --------------------------------------------------------------------------------------


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:  # frozen (fine-tuning with --freeze-tokenizer)
            continue
        (decay if parameter.ndim >= 2 and "embed" not in name else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def _run_options(args: argparse.Namespace) -> dict[str, Any]:
    return {key: (str(value) if isinstance(value, SensorSize) else value) for key, value in vars(args).items()}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m training train`` (argv without the command name). Ctrl-C ends
    it with a hint to resume (exit code 130)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print(resume_hint(list(sys.argv[1:] if argv is None else argv)), file=sys.stderr, flush=True)
        return 130


def resume_hint(argv: list[str]) -> str:
    """What to run to go on after an interrupted ``train ARGV``: the same command with ``--resume
    OUT`` once an epoch has finished (its ``train_state.json`` exists), else that nothing was saved."""
    args = build_parser().parse_args(argv)
    out_dir = Path(args.out)
    if not (out_dir / f"{TRAIN_STATE}.json").is_file():
        return f"train: interrupted before the first epoch finished; nothing to resume in {out_dir}"
    kept = []
    skip = False
    for word in argv:  # drop an earlier --resume
        if skip:
            skip = False
        elif word == "--resume":
            skip = True
        elif not word.startswith("--resume="):
            kept.append(word)
    command = shlex.join(["spikeformer-live", "train", *kept, "--resume", str(out_dir)])
    return f"train: interrupted; the last finished epoch is saved in {out_dir}. To go on from it:\n  {command}"


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("epochs", "batch_size", "train_windows", "eval_windows", "bin_us"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.init_from is None and args.config is None:
        raise ValueError("give --config PRESET (a new model) or --from CHECKPOINT (fine-tuning)")
    if not 0.0 < args.interpolate <= 1.0:
        raise ValueError(f"--interpolate must be in (0, 1], got {args.interpolate}")
    if args.interpolate < 1.0 and args.init_from is None:
        raise ValueError("--interpolate mixes with the parent's weights: it needs --from CHECKPOINT")
    if args.rehearse and args.init_from is None:
        raise ValueError("--rehearse replays what a parent learnt: it needs --from CHECKPOINT")
    if args.onset_windows < 0:
        raise ValueError(f"--onset-windows must be >= 0, got {args.onset_windows}")
    if not 0.0 < args.distill_weight <= 1.0:
        raise ValueError(f"--distill-weight must be in (0, 1], got {args.distill_weight}")
    if args.init_from is not None:
        return _train_from(args, argv)
    normalisation = parse_normalisation(args.normalisation)
    filters = parse_filters(args.filters or "none")
    job, device = init_distributed(args.device)
    try:
        return _train(args, normalisation, filters, job, device,
                      command="spikeformer-live train " + shlex.join(argv))  # fmt: skip
    finally:
        if job.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _train_from(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Fine-tuning: the parent checkpoint fixes the model and how windows are made."""
    from training.checkpoint import load_checkpoint

    parent, metadata = load_checkpoint(args.init_from)
    config = parent.config
    window = WindowSpec.from_dict(metadata["input"]["window"])
    mapping = metadata["input"]["sensor_mapping"]
    conflicts = [option for option, given in (("--config", args.config), ("--bins", args.bins),
                                              ("--input-size", args.input_size), ("--stride-us", args.stride_us))
                 if given is not None]  # fmt: skip
    # --causal may turn a windowed parent into a causal model (same weights but the time embedding);
    # --previous-frame would change the tokenizer's input, so it cannot.
    conflicts += ["--previous-frame"] if args.previous_frame else []
    if args.bin_us != DEFAULT_BIN_US and args.bin_us != window.bin_us:
        conflicts.append("--bin-us")
    if conflicts:
        raise ValueError(f"{', '.join(conflicts)} cannot change with --from: {args.init_from} keeps its model "
                         f"({config.input_size[1]}x{config.input_size[0]} input, {window.bins} bins of "
                         f"{window.bin_us} µs)")  # fmt: skip
    args.bins, args.bin_us, args.stride_us = window.bins, window.bin_us, window.stride_us
    args.input_size = SensorSize(mapping["input_width"], mapping["input_height"])
    args.method = mapping["method"]
    parent_info = parent_record(args.init_from, metadata)
    filters = metadata["input"].get("filters") if args.filters is None else parse_filters(args.filters)
    job, device = init_distributed(args.device)
    try:
        return _train(args, metadata["input"].get("normalisation"), filters, job, device,
                      command="spikeformer-live train " + shlex.join(argv), parent=(parent, parent_info))  # fmt: skip
    finally:
        if job.enabled and dist.is_initialized():
            dist.destroy_process_group()


def parent_record(path: str | Path, metadata: dict) -> dict:
    """What a checkpoint made from another records of it (``data.parent``): its path, weights
    sha256, classes and data spec."""
    return {"checkpoint": str(path), "sha256": metadata["weights"]["sha256"], "classes": list(metadata["classes"]),
            "data": metadata["data"].get("spec")}  # fmt: skip


def initial_weights(model: nn.Module, parent: nn.Module, parent_classes: Sequence[str], classes: Sequence[str]) -> list[str]:
    """Copy ``parent``'s weights into ``model`` (same architecture but maybe another class list, or
    causal where the parent is windowed): every weight except the classifier's last layer, whose rows
    are copied for the class names both have and freshly initialised for the others, and except the
    parent's time embedding when ``model`` is causal. Returns the new class names."""
    state = {name: value for name, value in parent.state_dict().items() if not name.startswith("head.fc.")}
    if model.time_embed is None:  # a causal model made from a windowed parent knows time without it
        state.pop("time_embed", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not name.startswith("head.fc.") for name in missing):
        raise ValueError(f"the parent checkpoint does not fit the model: missing {missing}, unexpected {unexpected}")
    new = []
    with torch.no_grad():
        for row, name in enumerate(classes):
            if name in parent_classes:
                model.head.fc.weight[row] = parent.head.fc.weight[list(parent_classes).index(name)]
                model.head.fc.bias[row] = parent.head.fc.bias[list(parent_classes).index(name)]
            else:
                new.append(name)
    return new


class WeightMix:
    """``(1 - alpha) * initial + alpha * trained`` per weight (WiSE-FT), into a model of its own.

    ``initial`` is ``model``'s state when the mix is made: the parent's weights as ``initial_weights``
    copied them. Output rows in ``keep_rows`` (classes the parent does not have) and integer buffers
    take the trained values."""

    def __init__(self, model: nn.Module, alpha: float, keep_rows: Sequence[int]) -> None:
        self.alpha = alpha
        self.mixed = copy.deepcopy(model).eval()
        self.initial = {name: value.detach().clone() for name, value in model.state_dict().items()}
        self.keep_rows = list(keep_rows)

    @torch.no_grad()
    def __call__(self, trained: nn.Module) -> nn.Module:
        state = {}
        for name, value in trained.state_dict().items():
            if value.is_floating_point():
                mixed = torch.lerp(self.initial[name].to(value), value, self.alpha)
                if name.startswith("head.fc.") and self.keep_rows:
                    mixed[self.keep_rows] = value[self.keep_rows]
                value = mixed
            state[name] = value
        self.mixed.load_state_dict(state)
        return self.mixed


def _train(args: argparse.Namespace, normalisation: dict | None, filters: dict | None, job: Distributed,
           device: torch.device, command: str, parent: tuple[nn.Module, dict] | None = None) -> int:
    from training.checkpoint import save_checkpoint  # E's module; only needed once training starts

    started = time.perf_counter()
    out_dir = Path(args.out)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    say = (lambda text: tqdm.write(text)) if job.is_main else (lambda text: None)

    # Data: rank 0 generates / bins into the cache first, the others then read it.
    spec = args.data
    causal = args.causal or (parent is not None and parent[0].config.causal)
    if args.onset_windows and not causal:
        raise ValueError("--onset-windows needs a causal model (--causal): a windowed model has no per-step loss")
    base = parent[0].config if parent is not None else PRESETS.get(args.config)
    bins = args.bins or (base.time_steps if base else None)
    if bins is None:
        raise ValueError("--bins is required with a config file")
    window = WindowSpec(bins, args.bin_us, args.stride_us or args.bin_us)
    preset_size = base.input_size if base else None
    input_size = args.input_size or (SensorSize(preset_size[1], preset_size[0]) if preset_size else None)
    if input_size is None:
        raise ValueError("--input-size is required with a config file")
    overrides = {name: value for name, value in (("flip_prob", args.flip_prob), ("max_shift_px", args.max_shift),
                                                 ("max_drop", args.max_drop)) if value is not None}  # fmt: skip
    augmentation = dataclasses.replace(augment_preset(args.augment), **overrides)
    loaded: dict[str, Any] = {}
    for turn in ("main", "others"):
        if (turn == "main") == job.is_main:
            source = data.open_source(spec, cache_dir=args.cache, sim_seed=args.sim_seed)

            def progress(items, what: str):
                return tqdm(items, desc=f"binning {what}", leave=False, disable=args.no_progress or not job.is_main)

            train_plan = data.WindowPlan("train", args.train_windows, args.seed, args.stretch, args.onset_windows)
            for split, plan in (("train", train_plan), ("test", data.WindowPlan("eval", args.eval_windows))):
                loaded[split] = data.load_windows(
                    source.split(split), plan, window, input_size, method=args.method, filters=filters,
                    cache_dir=args.cache, progress=lambda items, what=split: progress(items, what),
                    workers=args.bin_workers,
                )  # fmt: skip
            if args.rehearse:
                rehearsal = data.open_source(args.rehearse, cache_dir=args.cache, sim_seed=args.sim_seed)
                loaded["rehearse"] = data.load_windows(
                    rehearsal.recordings, train_plan, window, input_size, method=args.method, filters=filters,
                    cache_dir=args.cache, progress=lambda items: progress(items, "rehearsal"), workers=args.bin_workers,
                ).relabelled(rehearsal.classes, source.classes)  # fmt: skip
            loaded["source"] = source
        job.barrier()
    source, train_windows, test_windows = loaded["source"], loaded["train"], loaded["test"]
    classes = source.classes
    mirrored = MIRRORED_CLASS if classes == GESTURE_CLASSES else None
    say(f"data {spec}: {train_windows.segments} train segments ({len(train_windows)} pool windows), "
        f"{test_windows.segments} test segments ({len(test_windows)} windows), "
        f"cache {train_windows.cache_hits + test_windows.cache_hits} hits / "
        f"{train_windows.cache_misses + test_windows.cache_misses} misses, "
        f"{time.perf_counter() - started:.0f} s")  # fmt: skip
    train_set = data.WindowDataset(train_windows, normalisation=normalisation, augmentation=augmentation,
                                   mirrored_class=mirrored, seed=args.seed, repeats=args.repeats,
                                   step_labels=causal)  # fmt: skip
    if args.rehearse:  # as many windows of what the parent learnt as of the new data, every epoch
        rehearsal_windows = loaded["rehearse"]
        if not len(rehearsal_windows):
            raise ValueError(f"--rehearse {args.rehearse}: none of its classes is one of the data's "
                             f"({', '.join(classes)})")  # fmt: skip
        rehearsal_set = data.WindowDataset(rehearsal_windows, normalisation=normalisation,
                                           augmentation=augmentation, mirrored_class=mirrored, seed=args.seed + 1,
                                           items=len(train_set), step_labels=causal)  # fmt: skip
        say(f"rehearsal {args.rehearse}: {rehearsal_windows.segments} segments of the data's classes, "
            f"{len(rehearsal_set)} windows per epoch")  # fmt: skip
        train_set = data.WindowDatasets([train_set, rehearsal_set])
    test_set = data.WindowDataset(test_windows, normalisation=normalisation)

    # Model, optimizer, EMA, resume.
    if parent is not None:
        config = dataclasses.replace(parent[0].config, num_classes=len(classes), causal=causal)
        if config != parent[0].config:
            config = dataclasses.replace(config, name="custom")
        model = build_model(config)
        new_classes = initial_weights(model, parent[0], parent[1]["classes"], classes)
        say(f"from {parent[1]['checkpoint']}: {len(classes) - len(new_classes)} classes kept"
            + (f", new: {', '.join(new_classes)}" if new_classes else ""))  # fmt: skip
        if args.freeze_tokenizer:
            for parameter in model.tokenizer.parameters():
                parameter.requires_grad_(False)
        model = model.to(device)
        keep_rows = [classes.index(name) for name in new_classes]  # before resuming: the mix starts from the parent
        mix = WeightMix(model, args.interpolate, keep_rows) if args.interpolate < 1.0 else None
    else:
        config = model_config(args.config, bins=bins, input_size=input_size, num_classes=len(classes),
                              causal=causal, previous_frame=args.previous_frame)  # fmt: skip
        model = build_model(config).to(device)
        mix = None
    optimizer = torch.optim.AdamW(_parameter_groups(model, args.weight_decay), lr=args.lr)
    ema = ModelEma(model, args.ema) if args.ema else None
    start_epoch, step, best_accuracy = 0, 0, -1.0
    if args.resume:
        state = load_train_state(args.resume, model, optimizer, ema)
        start_epoch, step, best_accuracy = state["epoch"], state["step"], state["best_accuracy"]
        say(f"resumed from {args.resume}: epoch {start_epoch} done, step {step}, best accuracy {best_accuracy:.2%}")
    train_model: nn.Module = model
    if job.enabled:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    eval_model = ema.model if ema is not None else model

    sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=job.world_size, rank=job.rank,
                                                  shuffle=True, seed=args.seed)  # fmt: skip
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)
    loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, num_workers=workers,
                                         pin_memory=device.type == "cuda", persistent_workers=workers > 0)  # fmt: skip
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * args.epochs
    warmup_steps = int(round(args.warmup_epochs * steps_per_epoch))
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing, ignore_index=data.IGNORED_STEP)
    autocast_dtype = _autocast_dtype(args.amp, device)
    scaler = torch.amp.GradScaler("cuda") if autocast_dtype == torch.float16 else None

    writer = None
    if job.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tensorboard"))
        metrics_path = out_dir / "metrics.csv"
        if not args.resume or not metrics_path.is_file():
            with open(metrics_path, "w", newline="") as file:
                csv.writer(file).writerow(METRIC_FIELDS)
    base_metadata = {
        "classes": list(classes),
        "input": {"window": window.to_dict(),
                  "sensor_mapping": {"input_width": input_size.width, "input_height": input_size.height,
                                     "method": args.method, "flip_x": False, "flip_y": False},
                  "normalisation": normalisation, "filters": filters,
                  "coverage": coverage_spec(window_coverage(train_windows.frames))},  # fmt: skip
        "data": {"spec": spec, "source_orientation": "top-left",
                 "canonical_orientation": "top-left", "train_segments": train_windows.segments,
                 "test_segments": test_windows.segments, "train_pool_windows_per_segment": args.train_windows,
                 "eval_windows_per_segment": args.eval_windows, "augmentation": augmentation.to_dict(),
                 "sim_seed": args.sim_seed if spec.startswith("sim:") else None,
                 "command": command, "parent": parent[1] if parent is not None else None,
                 "interpolate": args.interpolate if parent is not None else None,
                 "rehearse": args.rehearse, "onset_windows": args.onset_windows},  # fmt: skip
    }

    teacher = None
    if args.distill_from:
        teacher, teacher_info = load_teacher(args.distill_from, base_metadata, device)
        base_metadata["data"]["distill"] = dict(teacher_info, weight=args.distill_weight,
                                                temperature=DISTILL_TEMPERATURE)  # fmt: skip
        say(f"distilling from {args.distill_from} (weight {args.distill_weight}, temperature {DISTILL_TEMPERATURE})")

    for epoch in range(start_epoch, args.epochs):
        epoch_started = time.perf_counter()
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        train_model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False, disable=args.no_progress or not job.is_main)
        lr = args.lr
        for frames, labels in bar:
            lr = lr_at(step, total_steps, warmup_steps, args.lr, args.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            frames = frames.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                if config.causal:  # a loss at every prefix: the first steps of a gesture must carry evidence too
                    step_logits, step_labels = train_model(frames, steps=True).float(), labels  # [B, T, ...]
                    loss = criterion(step_logits.flatten(0, 1), step_labels.flatten())
                    logits, labels = step_logits[:, -1], labels[:, -1]
                else:
                    logits = train_model(frames)
                    loss = criterion(logits.float(), labels)
                    step_logits, step_labels = logits[:, None], labels[:, None]  # one step: the window
                if teacher is not None:
                    distilled = distillation_loss(step_logits, teacher(frames), step_labels)
                    loss = (1.0 - args.distill_weight) * loss + args.distill_weight * distilled
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if args.clip_grad > 0:
                nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if ema is not None:
                ema.update(model)
            step += 1
            batch = len(labels)
            loss_sum += loss.item() * batch
            correct += int((logits.argmax(dim=1) == labels).sum())
            seen += batch
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.2f}", lr=f"{lr:.1e}")
        train_seconds = time.perf_counter() - epoch_started
        loss_sum, correct, seen = _sum_over_ranks(np.array([loss_sum, correct, seen]), job)
        saved_model = mix(eval_model) if mix is not None else eval_model
        result = evaluate_sharded(saved_model, test_set, classes, job, batch_size=args.batch_size * 2, device=device)
        epoch_seconds = time.perf_counter() - epoch_started
        row = {"epoch": epoch + 1, "step": step, "lr": lr, "train_loss": loss_sum / max(seen, 1),
               "train_accuracy": correct / max(seen, 1), "test_loss": result.loss, "test_accuracy": result.accuracy,
               "epoch_seconds": epoch_seconds, "samples_per_second": seen / max(train_seconds, 1e-9)}  # fmt: skip
        if job.is_main:
            with open(out_dir / "metrics.csv", "a", newline="") as file:
                csv.writer(file).writerow([row[name] for name in METRIC_FIELDS])
            for name, value in row.items():
                if name not in ("epoch", "step"):
                    writer.add_scalar(name, value, epoch + 1)
            writer.flush()
            metadata = dict(base_metadata, metrics={
                "epoch": epoch + 1, "test_accuracy": result.accuracy, "test_samples": result.samples,
                "test_per_class": result.per_class(), "train_loss": row["train_loss"], "ema": ema is not None,
                "train_seconds_total": time.perf_counter() - started,
            })  # fmt: skip
            save_checkpoint(out_dir / "last.json", saved_model, metadata)
            if result.accuracy > best_accuracy:
                best_accuracy = result.accuracy
                save_checkpoint(out_dir / "best.json", saved_model, metadata)
            save_train_state(out_dir, model, optimizer, ema, {
                "epoch": epoch + 1, "step": step, "best_accuracy": best_accuracy,
                "model_config": config.to_dict(), "options": _run_options(args),
            })  # fmt: skip
            say(f"epoch {epoch + 1}/{args.epochs}: train loss {row['train_loss']:.3f} acc {row['train_accuracy']:.2%}, "
                f"test loss {result.loss:.3f} acc {result.accuracy:.2%} ({result.samples} windows), "
                f"{seen / max(train_seconds, 1e-9):.1f} samples/s, {epoch_seconds:.0f} s")  # fmt: skip
        best_accuracy = float(_sum_over_ranks(np.array([best_accuracy if job.is_main else 0.0]), job)[0])
        job.barrier()

    if job.is_main:
        if writer is not None:
            writer.close()
        if args.export:
            from training.checkpoint import load_checkpoint

            chosen_model, chosen_metadata = load_checkpoint(out_dir / f"{args.export_epoch}.json")
            exported = save_checkpoint(Path(args.export), chosen_model, _without_managed_keys(chosen_metadata))
            accuracy = chosen_metadata["metrics"]["test_accuracy"]
            say(f"exported the {args.export_epoch} checkpoint ({accuracy:.2%}) to {exported}")
        say(f"done in {time.perf_counter() - started:.0f} s; best test accuracy {best_accuracy:.2%}; {out_dir}")
    return 0


def load_teacher(path: str | Path, student_metadata: dict[str, Any], device: torch.device) -> tuple[nn.Module, dict]:
    """The ``--distill-from`` checkpoint, frozen, in eval mode on ``device``, and its record (path,
    sha256). It must know the student's classes in the same order and make windows as the student
    does (window, sensor mapping, normalisation; it reads the student's frames, so its own noise
    filters do not apply), or this raises one ``ValueError`` naming what differs."""
    from training.checkpoint import load_checkpoint

    teacher, metadata = load_checkpoint(path, device)
    if list(metadata["classes"]) != list(student_metadata["classes"]):
        raise ValueError(f"--distill-from {path}: its classes ({', '.join(metadata['classes'])}) are not the "
                         f"data's ({', '.join(student_metadata['classes'])})")  # fmt: skip
    for key in ("window", "sensor_mapping", "normalisation"):  # filters only choose events: it may read others
        if metadata["input"].get(key) != student_metadata["input"].get(key):
            raise ValueError(f"--distill-from {path}: its input {key} {metadata['input'].get(key)} is not the "
                             f"student's {student_metadata['input'].get(key)}; a teacher must read windows as the "
                             f"student does")  # fmt: skip
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher.eval(), {"checkpoint": str(path), "sha256": metadata["weights"]["sha256"]}


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float = DISTILL_TEMPERATURE) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the labelled steps.

    ``student_logits`` [B, S, classes] (S steps, 1 for a windowed student), ``teacher_logits``
    [B, classes] (the whole window), ``labels`` [B, S]: steps labelled ``data.IGNORED_STEP`` carry
    no loss."""
    with torch.no_grad():
        target = torch.softmax(teacher_logits.float() / temperature, dim=-1)[:, None].expand_as(student_logits)
    log_student = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    per_step = nn.functional.kl_div(log_student, target, reduction="none").sum(dim=-1)  # [B, S]
    labelled = labels != data.IGNORED_STEP
    return per_step[labelled].sum() / labelled.sum().clamp_min(1) * temperature**2


def _without_managed_keys(metadata: dict[str, Any]) -> dict[str, Any]:
    """Metadata as ``save_checkpoint`` takes it (keys it writes itself removed)."""
    return {key: value for key, value in metadata.items() if key in ("classes", "input", "data", "metrics")}
