"""Tokenizer training step time, peak memory and model-FLOPs utilisation, with the AR prior and without it.

Usage: python benchmarks/bench_tokenizer_step.py [--presets tiny mid paper] [--steps 10] [--warmup 2]
       [--amp none bf16 fp16] [--compile] [--threads 1] [--device cpu|cuda] [--out results.json]

A "step" is one optimizer step of the real training loop (``larp.train.loop``'s ``run_phases``) on one
micro-batch: every phase of ``TokenizerTask.phases(step, epoch)`` (the discriminator phase on every
``loss.d_update_every``-th step, then the generator phase: tokenizer forward with stochastic SVQ, prior loss
with scheduled sampling, L1 + LPIPS + VQ + GAN (+ prior) loss, backward, Adam step) under the loop's autocast,
GradScalers and (``--compile``, CUDA only) ``torch.compile``, timed one by one over ``--steps`` steps after
``--warmup`` untimed ones (mean, which includes the D steps, and median, robust to a noisy shared machine).
The reference is the same task with ``prior.enabled = false``: the same tokenizer and discriminator, no prior.

FLOPs: counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention) over
``d_update_every`` consecutive eager steps (forward + backward of every phase), divided by that count: the
mean FLOPs of one step. MFU = FLOPs per step / mean step time / peak, against two peaks: the chip's dense
datasheet rate for the autocast dtype (``--peak-tflops``; known for H100/H200) and a bf16/fp16/fp32 matmul
of 8192^3 timed in the same run (what this machine really reaches).

Each measurement runs in its own spawned process, so that peak RSS (``ru_maxrss``) belongs to it alone;
"step peak" is that peak minus the RSS before the first step (activations, gradients, optimizer state).
On CUDA the peak is ``torch.cuda.max_memory_allocated`` instead.

Presets: ``tiny`` is the tiny preset (16x32x32 clips, width 64, depth 2, 64 tokens, batch 8); ``mid`` is
16x64x64 clips, width 256, depth 4, 256 tokens, codebook 8192, prior width 256 / depth 4, batch 2; ``paper``
is LARP-L-Long (16x128x128 clips, 172M + 21.7M prior + 38.2M discriminator) at micro-batch 16, with an
untrained LPIPS network of the real architecture (same FLOPs; the benchmark needs no weight download).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

MID = {
    "data": {"size": 64, "frames": 16},
    "tokenizer": {"size": 64, "frames": 16, "width": 256, "depth": 4, "heads": 4, "num_tokens": 256,
                  "code_dim": 16, "codebook_size": 8192},
    "prior": {"depth": 4, "width": 256, "heads": 4},
    "discriminator": {"size": 64, "frames": 16, "width": 128, "depth": 2, "heads": 4},
    "generator": {"seq_len": 256, "vocab_size": 8192},
}
# preset name -> (base preset, overrides, micro-batch)
PRESETS = {"tiny": ("tiny", {}, 8), "mid": ("tiny", MID, 2), "paper": ("paper", {}, 16)}
# dense (no sparsity) datasheet TFLOP/s per autocast dtype; "none" runs fp32 matmuls as TF32 on CUDA
DATASHEET_TFLOPS = {"H100": {"bf16": 989.4, "fp16": 989.4, "none": 494.7},
                    "H200": {"bf16": 989.4, "fp16": 989.4, "none": 494.7}}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def matmul_tflops(device: str, amp: str, n: int = 8192, reps: int = 10) -> float:
    """TFLOP/s of an n^3 matmul in the autocast dtype (TF32 for "none" on CUDA), timed here and now."""
    import torch

    dev = torch.device(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": torch.float32}[amp]
    if dev.type != "cuda":
        n, reps = 1024, 3
    torch.backends.cuda.matmul.allow_tf32 = True
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(3):
        a @ b
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def measure(preset_name: str, prior: bool, steps: int, warmup: int, threads: int, device: str, amp: str,
            compile_: bool) -> dict:
    """One measurement (runs in a fresh process): step times, peak memory, FLOPs per step."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from larp.config import apply_overrides, preset
    from larp.losses import LPIPS
    from larp.train.distributed import setup_distributed, teardown_distributed
    from larp.train.loop import _Trainer
    from larp.train.tokenizer import TokenizerTask

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    base, overrides, batch = PRESETS[preset_name]
    params = apply_overrides(preset(base), {
        **overrides, "prior": {**overrides.get("prior", {}), "enabled": prior},
        "train_tokenizer": {"global_batch": batch, "micro_batch": batch, "max_steps": steps + warmup + 100,
                            "amp": amp, "compile": compile_}})
    p, t = params.tokenizer, params.train_tokenizer
    env = setup_distributed(device)
    dev = env.device

    def make_task(_dev: torch.device) -> TokenizerTask:
        lpips = LPIPS() if params.loss.perceptual_weight > 0 else None  # untrained: same cost, no download
        return TokenizerTask(params, total_steps=steps + warmup + 100, preview=None, lpips=lpips)

    with tempfile.TemporaryDirectory() as run_dir:
        trainer = _Trainer(make_task, range(batch), t, Path(run_dir), env)  # run dir unused
    video = torch.rand(batch, 3, p.frames, p.size, p.size, generator=torch.Generator().manual_seed(0)).to(dev)
    batches = [(video, torch.zeros(batch, dtype=torch.long, device=dev))]
    task = trainer.task

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    # FLOPs of the mean step: the loop's own run_phases over d_update_every steps, on the eager modules
    # (the counter cannot see inside compiled graphs); the timed steps below use the compiled views
    period = params.loss.d_update_every
    views = trainer.compiled, trainer.wrapped
    trainer.compiled = trainer.wrapped = trainer.modules
    counter = FlopCounterMode(display=False)
    with counter:
        for s in range(period):
            trainer.run_phases(s, batches)
    trainer.compiled, trainer.wrapped = views
    flops_per_step = counter.get_total_flops() / period
    sync()

    rss0 = _rss_mb()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    for s in range(period, period + warmup):
        trainer.run_phases(s, batches)
    sync()
    times = []
    for s in range(period + warmup, period + warmup + steps):
        t0 = time.perf_counter()
        trainer.run_phases(s, batches)
        sync()
        times.append(time.perf_counter() - t0)
    teardown_distributed(env)
    ms = sum(times) / steps * 1e3
    median_ms = sorted(times)[steps // 2] * 1e3
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    tok = task.model
    return {
        "preset": preset_name, "prior": prior, "batch": batch, "amp": amp if dev.type == "cuda" else "none",
        "compile": compile_ and dev.type == "cuda", "ms_per_step": ms, "median_ms": median_ms,
        "peak_rss_mb": peak_rss, "step_peak_mb": peak_rss - rss0,
        "cuda_peak_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
        "flops_per_step": flops_per_step, "achieved_tflops": flops_per_step / (ms / 1e3) / 1e12,
        "tokenizer_params_m": tok.num_params() / 1e6,
        "prior_params_m": (tok.num_params(include_prior=True) - tok.num_params()) / 1e6,
        "d_update_every": period,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
    }


def _child(queue: mp.Queue, fn, *args) -> None:
    queue.put(fn(*args))


def _in_process(fn, *args):
    """``fn(*args)`` in a fresh spawned process (its own peak RSS and CUDA memory)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_child, args=(q, fn, *args))
    proc.start()
    result = q.get()
    proc.join()
    if proc.exitcode:
        raise SystemExit(f"measurement {fn.__name__}{args} failed with exit code {proc.exitcode}")
    return result


def _peak_tflops(device_name: str, amp: str, override: float | None) -> float | None:
    if override:
        return override
    return next((v[amp] for k, v in DATASHEET_TFLOPS.items() if k in device_name), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "mid"], choices=sorted(PRESETS))
    ap.add_argument("--steps", type=int, default=10,
                    help="timed steps (a multiple of d_update_every = 5 weighs the D phase fairly)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--amp", nargs="+", default=["none"], choices=["none", "bf16", "fp16"],
                    help="autocast dtypes to measure (CUDA only; CPU runs stay fp32)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the modules (CUDA only)")
    ap.add_argument("--no-reference", action="store_true", help="skip the prior.enabled = false reference runs")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="datasheet peak for MFU (default: known for H100/H200, else only the measured matmul)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    amps = args.amp if args.device.startswith("cuda") else ["none"]

    matmul = {amp: _in_process(matmul_tflops, args.device, amp) for amp in amps}
    results = []
    for name in args.presets:
        for amp in amps:
            for prior in (True, False)[: 1 if args.no_reference else 2]:
                r = _in_process(measure, name, prior, args.steps, args.warmup, args.threads, args.device, amp,
                                args.compile)
                peak = _peak_tflops(r["device_name"], amp, args.peak_tflops)
                r["matmul_tflops"] = matmul[amp]
                r["mfu_vs_matmul"] = r["achieved_tflops"] / matmul[amp]
                r["datasheet_tflops"] = peak
                r["mfu_vs_datasheet"] = r["achieved_tflops"] / peak if peak else None
                results.append(r)
                print(f"done: {name} amp={amp} prior={prior}: {r['median_ms']:.1f} ms median", flush=True)

    print(f"device {args.device} ({results[0]['device_name']}), threads {args.threads}, {args.steps} timed steps "
          f"after {args.warmup} warm-up; D phase every {results[0]['d_update_every']} steps; "
          f"compile {args.compile and args.device.startswith('cuda')}")
    print("matmul reference (same run): " + ", ".join(f"{a} {v:.1f} TFLOP/s" for a, v in matmul.items()))
    mem_col = "cuda_peak_MB" if args.device.startswith("cuda") else "step_peak_MB"
    print(f"{'preset':>6} {'amp':>4} {'prior':>5} {'batch':>5} {'params_M':>9} {'ms/step':>9} {'median_ms':>9} "
          f"{'peak_RSS_MB':>11} {mem_col:>12} {'GFLOP/step':>10} {'TFLOP/s':>8} {'MFU_mm':>7} {'MFU_ds':>7}")
    for r in results:
        params_m = r["tokenizer_params_m"] + (r["prior_params_m"] if r["prior"] else 0)
        mem = r["cuda_peak_mb"] if r["cuda_peak_mb"] is not None else r["step_peak_mb"]
        ds = f"{r['mfu_vs_datasheet']:.3f}" if r["mfu_vs_datasheet"] is not None else "-"
        print(f"{r['preset']:>6} {r['amp']:>4} {r['prior']!s:>5} {r['batch']:>5} {params_m:>9.2f} "
              f"{r['ms_per_step']:>9.1f} {r['median_ms']:>9.1f} {r['peak_rss_mb']:>11.0f} {mem:>12.0f} "
              f"{r['flops_per_step'] / 1e9:>10.1f} {r['achieved_tflops']:>8.2f} {r['mfu_vs_matmul']:>7.3f} {ds:>7}")
    if not args.no_reference:
        print("ratio prior / no prior:")
        for name in args.presets:
            for amp in amps:
                a, b = (next(r for r in results if (r["preset"], r["amp"], r["prior"]) == (name, amp, v))
                        for v in (True, False))
                mem_a = a["cuda_peak_mb"] if a["cuda_peak_mb"] is not None else a["step_peak_mb"]
                mem_b = b["cuda_peak_mb"] if b["cuda_peak_mb"] is not None else b["step_peak_mb"]
                print(f"{name:>6} {amp:>4}: time x{a['ms_per_step'] / b['ms_per_step']:.2f} "
                      f"(median x{a['median_ms'] / b['median_ms']:.2f}), "
                      f"step peak memory x{mem_a / max(mem_b, 1e-9):.2f}, "
                      f"peak RSS x{a['peak_rss_mb'] / b['peak_rss_mb']:.2f}")
    if args.out:
        from larp.files import atomic_write_json
        from larp.provenance import provenance

        atomic_write_json(args.out, provenance(vars(args), results=results, matmul_tflops=matmul))


if __name__ == "__main__":
    main()
