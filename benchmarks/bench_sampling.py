"""AR sampling throughput: static KV cache vs the cache-free reference loop, same model, same run.

Usage: python benchmarks/bench_sampling.py [--preset tiny] [--seq-len 1024] [--batch-sizes 1 4 16 64]
       [--reference-batch-sizes 1 4] [--cfg-scale 1.25] [--device cpu] [--dtype fp32] [--threads N]
       [--decode eager|static|compiled] [--out results.json]

Every run samples full ``seq-len``-token sequences (CFG doubles the batch, as in the UCF-101 protocol).
Prints, per batch size, samples/s (full token sequences, before decoding to pixels), generated tokens/s (conditional rows only) with the cache, without it where measured,
and their ratio; the cached path is also checked to give the same tokens as the reference path.
Goal (issue): cache/no-cache >= 10x at the tiny preset for 1024-token sequences.
"""

from __future__ import annotations

import argparse
import time

import torch

from larp.files import atomic_write_json
from larp.models.generator import LARPGenerator
from larp.provenance import provenance
from larp.sample import DECODE_MODES, generate, generate_reference, sample_generators

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def timed(fn, device: torch.device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", choices=["tiny", "llama-abs-LP"])
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--reference-batch-sizes", type=int, nargs="*", default=[1, 4],
                    help="batch sizes also run without the cache (quadratic: keep them few)")
    ap.add_argument("--cfg-scale", type=float, default=1.25)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="autocast dtype (fp32: none)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--decode", default="eager", choices=DECODE_MODES,
                    help="cached decode step: eager, static shapes, or static under torch.compile (CUDA graphs)")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]

    torch.manual_seed(0)
    model = LARPGenerator.from_preset(args.preset, seq_len=args.seq_len).to(device).eval()
    torch.nn.init.normal_(model.output.weight, std=0.3)  # an untrained zero head would sample uniformly
    print(f"preset {args.preset} ({model.num_params() / 1e6:.2f}M params), seq_len {args.seq_len}, "
          f"cfg {args.cfg_scale}, device {device}, dtype {args.dtype}, threads {torch.get_num_threads()}, "
          f"decode {args.decode}")
    print(f"{'batch':>5} {'cache_s':>9} {'samples/s':>9} {'cache_tok/s':>12} {'nocache_s':>10} {'nocache_tok/s':>14} "
          f"{'speedup':>8} {'same_tokens':>11}")

    def run(cached: bool, labels: torch.Tensor) -> torch.Tensor:
        """One batch of full sequences; per-sample generators as in sharded sampling."""
        gens = sample_generators(0, range(len(labels)))
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            if cached:
                return generate(model, labels, cfg_scale=args.cfg_scale, generator=gens, cache_dtype=dtype,
                                decode=args.decode)
            return generate_reference(model, labels, cfg_scale=args.cfg_scale, generator=gens)

    rows = []
    for b in args.batch_sizes:
        labels = torch.arange(b, device=device) % model.cfg.num_classes

        run(True, labels)  # warm-up (allocator, kernels)
        t_cache, toks = timed(lambda: run(True, labels), device)
        row = {"batch": b, "cache_s": t_cache, "samples_per_s": b / t_cache,
               "cache_tokens_per_s": b * args.seq_len / t_cache}
        line = f"{b:>5} {t_cache:>9.2f} {row['samples_per_s']:>9.2f} {row['cache_tokens_per_s']:>12.0f}"
        if b in args.reference_batch_sizes:
            t_ref, ref = timed(lambda: run(False, labels), device)
            row |= {"nocache_s": t_ref, "nocache_tokens_per_s": b * args.seq_len / t_ref,
                    "speedup": t_ref / t_cache, "same_tokens": bool(torch.equal(toks, ref))}
            line += (f" {t_ref:>10.2f} {row['nocache_tokens_per_s']:>14.0f} {row['speedup']:>7.1f}x "
                     f"{str(row['same_tokens']):>11}")
        print(line, flush=True)
        rows.append(row)
    if args.out:
        record = provenance(None, None, benchmark="bench_sampling", args=vars(args), rows=rows)
        atomic_write_json(args.out, record)


if __name__ == "__main__":
    main()
