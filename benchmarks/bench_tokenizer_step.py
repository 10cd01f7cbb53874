"""Tokenizer training step time and peak memory, with the AR prior and without it (same run, same modules).

Usage: python benchmarks/bench_tokenizer_step.py [--presets tiny mid] [--steps 10] [--warmup 2]
       [--threads 1] [--device cpu] [--out results.json]

A "step" is what the training loop does per optimizer step for one micro-batch: every phase of
``TokenizerTask.phases(step)`` (the discriminator phase on every ``loss.d_update_every``-th step, then the
generator phase: tokenizer forward with stochastic SVQ, prior loss with scheduled sampling, L1 + VQ + GAN
(+ prior) loss, backward, Adam step), timed one by one over ``--steps`` steps after ``--warmup`` untimed
ones (mean, which includes the D steps, and median, which is robust to a noisy shared machine). The
reference is the same task with ``prior.alpha = 0``: the same tokenizer and discriminator, no prior module.

Each measurement runs in its own spawned process, so that peak RSS (``ru_maxrss``) belongs to it alone;
"step peak" is that peak minus the RSS before the first step (activations, gradients, optimizer state).
On CUDA the peak is ``torch.cuda.max_memory_allocated`` instead.

Presets: ``tiny`` is the tiny preset (16x32x32 clips, width 64, depth 2, 64 tokens, batch 8); ``mid`` is
16x64x64 clips, width 256, depth 4, 256 tokens, codebook 8192, prior width 256 / depth 4, batch 2.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

MID = {
    "data": {"size": 64, "frames": 16},
    "tokenizer": {"size": 64, "frames": 16, "width": 256, "depth": 4, "heads": 4, "num_tokens": 256,
                  "code_dim": 16, "codebook_size": 8192,
                  "prior_depth": 4, "prior_width": 256, "prior_heads": 4},
    "discriminator": {"size": 64, "frames": 16, "width": 128, "depth": 2, "heads": 4},
    "generator": {"seq_len": 256, "vocab_size": 8192},
}
PRESETS = {"tiny": ({}, 8), "mid": (MID, 2)}  # overrides on the tiny preset, micro-batch


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(preset_name: str, prior: bool, steps: int, warmup: int, threads: int, device: str) -> dict:
    """One measurement (runs in a fresh process): mean ms per step and peak memory."""
    import torch

    from larp.config import apply_overrides, preset
    from larp.train.loop import StepContext
    from larp.train.tokenizer import TokenizerTask

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    overrides, batch = PRESETS[preset_name]
    params = apply_overrides(preset("tiny"), {**overrides, "prior": {"alpha": 0.06 if prior else 0.0}})
    dev = torch.device(device)
    task = TokenizerTask(params, total_steps=steps + warmup, preview=None)
    for m in task.modules.values():
        m.to(dev).train()
    opts = task.configure_optimizers()
    p = params.tokenizer
    video = torch.rand(batch, 3, p.frames, p.size, p.size, generator=torch.Generator().manual_seed(0)).to(dev)
    batch_ = (video, torch.zeros(batch, dtype=torch.long, device=dev))

    def one_step(step: int) -> None:
        ctx = StepContext(step=step, epoch=0, micro=0, accum=1, modules=task.modules, device=dev)
        for phase in task.phases(step):
            out = phase.loss(batch_, ctx)
            out.loss.backward()
            opts[phase.optimizer].step()
            opts[phase.optimizer].zero_grad(set_to_none=True)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    rss0 = _rss_mb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for s in range(warmup):
        one_step(s)
    sync()
    times = []
    for s in range(warmup, warmup + steps):
        t0 = time.perf_counter()
        one_step(s)
        sync()
        times.append(time.perf_counter() - t0)
    ms = sum(times) / steps * 1e3
    median_ms = sorted(times)[steps // 2] * 1e3
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    tok = task.model
    return {
        "preset": preset_name, "prior": prior, "batch": batch, "ms_per_step": ms, "median_ms": median_ms,
        "peak_rss_mb": peak_rss, "step_peak_mb": peak_rss - rss0,
        "cuda_peak_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
        "tokenizer_params_m": tok.num_params() / 1e6,
        "prior_params_m": (tok.num_params(include_prior=True) - tok.num_params()) / 1e6,
        "d_update_every": params.loss.d_update_every,
    }


def _child(queue: mp.Queue, *args) -> None:
    queue.put(measure(*args))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "mid"], choices=sorted(PRESETS))
    ap.add_argument("--steps", type=int, default=10,
                    help="timed steps (a multiple of d_update_every = 5 weighs the D phase fairly)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args()

    ctx = mp.get_context("spawn")
    results = []
    for name in args.presets:
        for prior in (True, False):
            q = ctx.Queue()
            proc = ctx.Process(target=_child, args=(q, name, prior, args.steps, args.warmup, args.threads,
                                                    args.device))
            proc.start()
            results.append(q.get())
            proc.join()
            if proc.exitcode:
                raise SystemExit(f"measurement {name} prior={prior} failed with exit code {proc.exitcode}")

    print(f"device {args.device}, threads {args.threads}, {args.steps} timed steps after {args.warmup} "
          f"warm-up; "
          f"D phase every {results[0]['d_update_every']} steps")
    print(f"{'preset':>6} {'prior':>5} {'batch':>5} {'params_M':>9} {'ms/step':>9} {'median_ms':>9} "
          f"{'peak_RSS_MB':>11} {'step_peak_MB':>12}")
    for r in results:
        params_m = r["tokenizer_params_m"] + (r["prior_params_m"] if r["prior"] else 0)
        print(f"{r['preset']:>6} {r['prior']!s:>5} {r['batch']:>5} {params_m:>9.2f} {r['ms_per_step']:>9.1f} "
              f"{r['median_ms']:>9.1f} {r['peak_rss_mb']:>11.0f} {r['step_peak_mb']:>12.0f}")
    print("ratio prior / no prior:")
    for name in args.presets:
        a, b = (next(r for r in results if r["preset"] == name and r["prior"] is v) for v in (True, False))
        print(f"{name:>6}: time x{a['ms_per_step'] / b['ms_per_step']:.2f} "
              f"(median x{a['median_ms'] / b['median_ms']:.2f}), "
              f"step peak memory x{a['step_peak_mb'] / max(b['step_peak_mb'], 1e-9):.2f}, "
              f"peak RSS x{a['peak_rss_mb'] / b['peak_rss_mb']:.2f}")
    if args.out:
        from larp.files import atomic_write_json
        from larp.provenance import provenance

        atomic_write_json(args.out, provenance(vars(args), results=results))


if __name__ == "__main__":
    main()
