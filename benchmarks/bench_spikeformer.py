"""Forward latency of one window (B=1) of a Spikeformer preset: PyTorch eager vs ONNX Runtime (CPU).

    python benchmarks/bench_spikeformer.py [--preset small | --checkpoint CK.json] [--iters 200] [--threads 2]

Also exports the same model with the textbook PLIF loop (``plif_step`` per time step) to show what
the rearranged multi-step loop in ``training.neuron.plif_multistep`` saves in ONNX nodes and time,
and with the reset as ``Where(fired, 0, v)`` (the export before 2026-12-07) against the multiply
that ``training.neuron.fire_and_reset`` uses now.
Prints a markdown table: wall-clock median / p90 / p99 and median CPU time in milliseconds, and
ratios to PyTorch eager (1 thread), all measured in this run, interleaved round by round so that load
from other processes hits every runner alike.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import training.neuron as neuron  # noqa: E402
from inference.export import export_onnx  # noqa: E402
from training.checkpoint import load_checkpoint  # noqa: E402
from training.spikeformer import PRESETS, build_model, count_parameters  # noqa: E402


def textbook_multistep(x_seq: torch.Tensor, w: torch.Tensor, time_dim: int = 0) -> torch.Tensor:
    """The peer: iterate ``plif_step`` over unbound time slices, as SpikingJelly's multi-step loop."""
    steps = x_seq.unbind(time_dim)
    v = torch.zeros_like(steps[0])
    spikes = []
    for x in steps:
        spike, v = neuron.plif_step(x, v, w)
        spikes.append(spike)
    return torch.stack(spikes, time_dim)


def where_reset(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The earlier inference reset: ``Where(v >= threshold, 0, v)`` (same values as the multiply)."""
    fired = v >= neuron.V_THRESHOLD
    return fired.to(v.dtype), torch.where(fired, 0.0, v)


@contextlib.contextmanager
def replaced(name: str, function):  # noqa: ANN001
    """``training.neuron.<name>`` replaced by ``function`` (the exporter traces the module's globals)."""
    original = getattr(neuron, name)
    setattr(neuron, name, function)
    try:
        yield
    finally:
        setattr(neuron, name, original)


def export(model: torch.nn.Module) -> bytes:
    """The model as the product exports it (``inference.export.export_onnx``: opset 17, dynamic batch)."""
    with tempfile.TemporaryDirectory() as folder:
        return export_onnx(model, Path(folder) / "model.onnx").read_bytes()


def session(onnx_bytes: bytes, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--checkpoint", help="a checkpoint's model and weights instead of a random preset")
    parser.add_argument("--iters", type=int, default=200, help="timed forwards per runner")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (torch and ORT)")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = (load_checkpoint(args.checkpoint)[0] if args.checkpoint else build_model(args.preset)).eval()
    config = model.config
    frames = (torch.rand(1, *model.input_shape) < 0.05).float()  # sparse binary event frames
    frames_np = frames.numpy()

    onnx_rearranged = export(model)
    with replaced("plif_multistep", textbook_multistep):
        onnx_textbook = export(model)
    with replaced("fire_and_reset", where_reset):
        onnx_where = export(model)
    graphs = {"onnxruntime, 1 thread": onnx_rearranged,
              "onnxruntime, 1 thread, textbook PLIF loop": onnx_textbook,
              "onnxruntime, 1 thread, reset as Where": onnx_where}
    if args.threads > 1:
        graphs = {f"onnxruntime, {args.threads} threads": onnx_rearranged, **graphs}
    sessions = {name: session(graph, 1 if name.startswith("onnxruntime, 1 thread") else args.threads)
                for name, graph in graphs.items()}
    nodes = {name: len(onnx.load_from_string(graph).graph.node) for name, graph in graphs.items()}

    with torch.inference_mode():
        reference = model(frames).numpy()
    for name, sess in sessions.items():
        difference = np.abs(sess.run(None, {"frames": frames_np})[0] - reference).max()
        if difference > 1e-4:
            raise SystemExit(f"{name} differs from PyTorch by {difference:.2e}")

    def torch_runner(threads: int):  # noqa: ANN202
        def run() -> None:
            torch.set_num_threads(threads)
            with torch.inference_mode():
                model(frames)
        return run

    runners = {"PyTorch eager, 1 thread": torch_runner(1)}
    if args.threads > 1:
        runners[f"PyTorch eager, {args.threads} threads"] = torch_runner(args.threads)
    for name, sess in sessions.items():
        runners[name] = lambda sess=sess: sess.run(None, {"frames": frames_np})
    wall: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    for runner in runners.values():  # warm up
        for _ in range(5):
            runner()
    rounds = 10
    for _ in range(rounds):
        for name, runner in runners.items():
            for _ in range(max(args.iters // rounds, 1)):
                start, start_cpu = time.perf_counter(), time.process_time()
                runner()
                wall[name].append((time.perf_counter() - start) * 1e3)
                cpu[name].append((time.process_time() - start_cpu) * 1e3)

    print(f"Spikeformer `{config.name}`: input [1, {', '.join(map(str, model.input_shape))}], "
          f"{count_parameters(model):,} parameters, {args.iters} forwards per runner, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    print("| runner | ONNX nodes | median ms | p90 ms | p99 ms | median CPU ms | "
          "median vs PyTorch 1 thread | CPU vs PyTorch 1 thread |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base_wall = float(np.median(wall["PyTorch eager, 1 thread"]))
    base_cpu = float(np.median(cpu["PyTorch eager, 1 thread"]))
    for name in runners:
        values = np.asarray(wall[name])
        median, median_cpu = float(np.median(values)), float(np.median(cpu[name]))
        print(f"| {name} | {nodes.get(name, '-')} | {median:.2f} | {np.percentile(values, 90):.2f} | "
              f"{np.percentile(values, 99):.2f} | {median_cpu:.2f} | {median / base_wall:.2f}x | "
              f"{median_cpu / base_cpu:.2f}x |")
    print("\nCPU ms = process CPU time (all threads) per forward: less sensitive to other processes on a "
          "shared machine than wall time, which is what a live pipeline sees.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
