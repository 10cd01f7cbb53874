"""Sampling precision: the official cast weights (AR bf16, tokenizer fp16) vs fp32 weights under autocast.

Usage: python benchmarks/bench_sampling_precision.py [--preset tiny] [--samples 32] [--device cpu] [--threads 1]
       [--out results.json]

Both paths sample the same (index, label) pairs (CFG 1.25) from the same random-weight models (the output heads
drawn at random: the zero-initialised ones would give uniform logits and blank videos) and are compared with the
fp32 models: teacher-forced logits (max |difference| / logit std), each path's NLL of its own samples against
the fp32 model's NLL of the same tokens, the decoded videos against the fp32 decoder's, wall time, and the
weights' bytes of the paper-size models in each precision.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from larp.config import preset
from larp.files import atomic_write_json
from larp.models.generator import LARPGenerator
from larp.models.tokenizer import LARPTokenizer
from larp.provenance import provenance
from larp.sample import sample_tokens, sampling_precision, sequence_nll


def weight_bytes(module: torch.nn.Module, bytes_per_value: int) -> int:
    return sum(p.numel() for p in module.parameters()) * bytes_per_value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", choices=["tiny", "llama-abs-LP"])
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    gen32 = LARPGenerator.from_preset(args.preset).eval()
    torch.nn.init.normal_(gen32.output.weight, std=0.3 if args.preset == "tiny" else 0.02)
    tok32 = LARPTokenizer.from_preset("tiny" if args.preset == "tiny" else "larp-l-long").eval()
    torch.nn.init.normal_(tok32.final_layer.linear.weight, std=0.2)
    gen32, tok32 = gen32.to(device), tok32.to(device)
    labels = [i % gen32.cfg.num_classes for i in range(args.samples)]
    pairs = list(enumerate(labels))
    cond = torch.tensor(labels, device=device)
    kw = dict(cfg_scale=1.25, seed=3, batch_size=args.samples, device=device, progress=False)
    result = {"preset": args.preset, "samples": args.samples, "device": str(device), "paths": {}}
    for cast in (True, False):
        gen, tok = copy.deepcopy(gen32), copy.deepcopy(tok32)
        decode = sampling_precision(gen, tok, torch.bfloat16, torch.float16, cast_weights=cast)
        t0 = time.perf_counter()
        out = sample_tokens(gen, pairs, dtype=torch.bfloat16, **kw)
        seconds = time.perf_counter() - t0
        tokens = out.tokens.to(device)
        with torch.no_grad():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=not cast):
                logits = gen(cond, tokens[:, :-1]).float()
            ref = gen32(cond, tokens[:, :-1])
            video, video32 = decode(tokens), tok32.decode(tokens)
        nll32 = sequence_nll(gen32, cond, tokens).cpu()
        result["paths"]["cast_weights" if cast else "autocast"] = {
            "seconds": round(seconds, 3),
            "logits_max_abs_diff_over_std": float((logits - ref).abs().max() / ref.std()),
            "nll_own": float(out.nll.mean()), "nll_fp32_model_same_tokens": float(nll32.mean()),
            "nll_max_abs_diff": float((out.nll.cpu() - nll32).abs().max()),
            "decode_max_abs_diff": float((video - video32).abs().max()),
            "decode_mean_abs_diff": float((video - video32).abs().mean()), "decode_std": float(video32.std())}
    paper = preset("paper")
    ar, tk = LARPGenerator(paper.generator), LARPTokenizer(paper.tokenizer, None)
    result["paper_weights_gb"] = {"ar_fp32": weight_bytes(ar, 4) / 1e9, "ar_bf16": weight_bytes(ar, 2) / 1e9,
                                  "tokenizer_fp32": weight_bytes(tk, 4) / 1e9, "tokenizer_fp16": weight_bytes(tk, 2) / 1e9}
    for name, r in result["paths"].items():
        print(name, r)
    print("paper weights (GB):", result["paper_weights_gb"])
    if args.out:
        atomic_write_json(args.out, provenance({"bench": vars(args)}, **result))


if __name__ == "__main__":
    main()
