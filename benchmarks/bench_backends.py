"""Per-window (batch 1) compute latency of the inference backends, side by side.

    python benchmarks/bench_backends.py [--runs 200] [--big-runs 8] [--presets small dvsgesture]

Randomly initialised models (latency does not depend on the weights), Poisson spike-count windows.
Rows: PyTorch eager CPU (peer), ONNX Runtime CPU with 1 and 2 intra-op threads; on a machine with
a CUDA GPU also PyTorch CUDA (eager and CUDA graph) and TensorRT (FP16 and FP32 engines).
Ratios are the peer's latency divided by the row's (> 1: faster than PyTorch eager CPU), measured
in the same run. Target: ``small`` + ONNX Runtime CPU p99 <= 15 ms.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.backends import OnnxRuntimeBackend, TensorRTBackend, TorchBackend  # noqa: E402
from inference.export import export_onnx, poisson_windows  # noqa: E402
from inference.tensorrt_engine import TensorRTUnavailable, build_engine, require_tensorrt  # noqa: E402
from training.spikeformer import build_model  # noqa: E402

TARGET_P99_MS = 15.0
NO_GPU = "not available here (no GPU)"


def measure(predict, windows: np.ndarray, runs: int, warmup: int) -> np.ndarray:
    """Latencies in ms of ``runs`` calls (after ``warmup`` calls), cycling through ``windows``."""
    for i in range(warmup):
        predict(windows[i % len(windows)])
    times = np.empty(runs)
    for i in range(runs):
        window = windows[i % len(windows)]
        start = time.perf_counter()
        predict(window)
        times[i] = (time.perf_counter() - start) * 1e3
    return times


def bench_preset(preset: str, runs: int, workdir: Path) -> list[tuple]:
    """Rows ``(preset, backend, runs, p50, p90, p99 | message)`` for one preset."""
    torch.manual_seed(0)
    model = build_model(preset).eval()
    windows = poisson_windows(8, model.input_shape, seed=1)
    warmup = max(2, runs // 10)
    rows: list[tuple] = []

    def add(name: str, predict) -> None:
        times = measure(predict, windows, runs, warmup)
        rows.append((preset, name, runs, *np.percentile(times, [50, 90, 99])))

    add(f"PyTorch eager CPU ({torch.get_num_threads()} threads)", TorchBackend(model, "cpu").predict)
    onnx_path = export_onnx(model, workdir / f"{preset}.onnx", dynamic_batch=False)  # batch 1 is timed
    for threads in (1, 2):
        add(f"ONNX Runtime CPU, {threads} thread{'s' if threads > 1 else ''}",
            OnnxRuntimeBackend(onnx_path, "cpu", threads=threads).predict)

    if torch.cuda.is_available():
        add("PyTorch CUDA eager", TorchBackend(build_model(preset).eval(), "cuda").predict)
        graphed = TorchBackend(build_model(preset).eval(), "cuda", cuda_graph=True)
        graphed.warmup(3)
        add("PyTorch CUDA graph", graphed.predict)
    else:
        rows += [(preset, "PyTorch CUDA eager", NO_GPU), (preset, "PyTorch CUDA graph", NO_GPU)]

    try:
        require_tensorrt()
    except TensorRTUnavailable as error:
        message = NO_GPU if not torch.cuda.is_available() else f"not available here ({error})"
        rows += [(preset, "TensorRT FP16", message), (preset, "TensorRT FP32", message)]
    else:
        for fp16 in (True, False):
            path = export_onnx(model, workdir / f"{preset}-{'fp16' if fp16 else 'fp32'}.onnx", fp16=fp16)
            engine = build_engine(path, workdir / f"{preset}-{fp16}.engine", max_batch=1, fp16=fp16)
            add(f"TensorRT {'FP16' if fp16 else 'FP32'}", TensorRTBackend(engine).predict)
    return rows


def print_table(rows: list[tuple]) -> None:
    print("| preset | backend | runs | p50 ms | p90 ms | p99 ms | p50 ratio | p99 ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    peers = {row[0]: row for row in rows if row[1].startswith("PyTorch eager CPU")}
    for row in rows:
        if len(row) == 3:
            print(f"| {row[0]} | {row[1]} | - | {row[2]} | | | | |")
            continue
        preset, name, runs, p50, p90, p99 = row
        peer = peers[preset]
        print(f"| {preset} | {name} | {runs} | {p50:.2f} | {p90:.2f} | {p99:.2f} | "
              f"{peer[3] / p50:.2f}x | {peer[5] / p99:.2f}x |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="timed runs for the small preset")
    parser.add_argument("--big-runs", type=int, default=8, help="timed runs for the paper-size presets")
    parser.add_argument("--presets", nargs="+", default=["small", "dvsgesture"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            rows += bench_preset(preset, args.runs if preset == "small" else args.big_runs, Path(tmp))
    print(f"Batch-1 compute latency per window; torch {torch.__version__}, CPU threads available: "
          f"{torch.get_num_threads()}\n")
    print_table(rows)
    small_ort = [row for row in rows if row[0] == "small" and row[1].startswith("ONNX Runtime") and len(row) == 6]
    if small_ort:
        best = min(row[5] for row in small_ort)
        verdict = "met" if best <= TARGET_P99_MS else "NOT met"
        print(f"\nTarget small + ONNX Runtime CPU p99 <= {TARGET_P99_MS:.0f} ms: {verdict} (best p99 {best:.2f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
