"""Sampling: guidance arithmetic, filters, inverse-CDF draw, cached vs reference loop, sharding, videos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from larp.models.generator import LARPGenerator
from larp.sample import (
    DTYPES,
    cfg_mix,
    choose_tokens,
    generate,
    generate_reference,
    inverse_cdf,
    sample_generators,
    sample_tokens,
    sample_videos,
    sampling_precision,
    sequence_nll,
    top_k_filter,
    top_p_filter,
)

INF = float("inf")


def tiny(seq_len: int = 32, head_std: float = 0.3) -> LARPGenerator:
    torch.manual_seed(0)
    model = LARPGenerator.from_preset("tiny", seq_len=seq_len)
    torch.nn.init.normal_(model.output.weight, std=head_std)  # the zero-init head would give uniform logits
    return model.eval()


def kwargs(**over):
    base = dict(cfg_scale=1.25, temperature=1.0, top_k=None, top_p=None, seed=7, batch_size=4, device="cpu",
                progress=False)
    return base | over


def test_cfg_mix_hand_case():
    cond, uncond = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 1.0, 1.0])
    assert torch.equal(cfg_mix(cond, uncond, 1.25), torch.tensor([1.25, 2.25, 3.5]))
    assert torch.equal(cfg_mix(cond, uncond, 1.0), cond)
    assert torch.equal(cfg_mix(cond, uncond, 0.0), uncond)


def test_guidance_is_applied_at_every_step_including_the_first():
    m, s, b = tiny(seq_len=16), 3.0, 8
    c = torch.arange(b) % m.cfg.num_classes
    null = torch.full_like(c, m.null_class)
    out = generate(m, c, cfg_scale=s, top_k=1, generator=torch.Generator().manual_seed(0))  # greedy
    # by hand, from full forward passes: argmax(uncond + s (cond - uncond)) at every position
    toks = torch.empty(b, 0, dtype=torch.long)
    first_cond_argmax = None
    with torch.no_grad():
        for _ in range(m.cfg.seq_len):
            lc, lu = m(c, toks)[:, -1], m(null, toks)[:, -1]
            first_cond_argmax = lc.argmax(-1) if first_cond_argmax is None else first_cond_argmax
            toks = torch.cat([toks, (lu + s * (lc - lu)).argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, toks)
    # guidance changes the result, already for the first token of some rows
    assert not torch.equal(first_cond_argmax, out[:, 0])
    assert not torch.equal(generate(m, c, cfg_scale=1.0, top_k=1, generator=torch.Generator()), out)


def test_top_k_and_top_p_filters():
    x = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    assert torch.equal(top_k_filter(x, 2), torch.tensor([[-INF, 4.0, 3.0, -INF]]))
    assert torch.equal(top_k_filter(x, 10), x)
    p = torch.tensor([[0.05, 0.5, 0.3, 0.15]])
    lp = p.log()
    # sorted masses 0.5, 0.3, 0.15, 0.05: the smallest top set reaching 0.5 is {1}; 0.6 -> {1, 2};
    # 0.85 -> {1, 2, 3} (0.95); 0.96 needs every token
    assert torch.isfinite(top_p_filter(lp, 0.5)).tolist() == [[False, True, False, False]]
    assert torch.isfinite(top_p_filter(lp, 0.6)).tolist() == [[False, True, True, False]]
    assert torch.isfinite(top_p_filter(lp, 0.85)).tolist() == [[False, True, True, True]]
    assert torch.isfinite(top_p_filter(lp, 0.96)).all()
    assert torch.equal(top_p_filter(lp, 1.0), lp)
    with pytest.raises(ValueError, match="top_k"):
        top_k_filter(x, 0)
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(x, 0.0)


def test_inverse_cdf_draw():
    probs = torch.tensor([[0.25, 0.0, 0.5, 0.25]])
    # cdf = [.25, .25, .75, 1] (exact in binary): [0, .25) -> 0, [.25, .75) -> 2, [.75, 1) -> 3; never 1
    for u, want in [(0.0, 0), (0.2499, 0), (0.25, 2), (0.7499, 2), (0.75, 3), (0.999999, 3)]:
        assert inverse_cdf(probs, torch.tensor([u])).item() == want
    u = torch.rand(40_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ids = inverse_cdf(probs.expand(len(u), -1), u)
    freq = torch.bincount(ids, minlength=4).double() / len(u)
    assert torch.allclose(freq, probs[0].double(), atol=0.01) and freq[1] == 0
    # temperature and filters feed the same draw: top_k=1 is greedy whatever u is
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    assert choose_tokens(logits, torch.tensor([0.99, 0.0]), top_k=1).tolist() == [1, 0]
    with pytest.raises(ValueError, match="temperature"):
        choose_tokens(logits, torch.tensor([0.5, 0.5]), temperature=0.0)


@pytest.mark.parametrize("filters", [dict(), dict(temperature=0.8, top_k=50, top_p=0.9)])
def test_cached_and_reference_loops_draw_the_same_tokens(filters):
    m = tiny(seq_len=48)
    c = torch.tensor([0, 3, 5, 7, 2])
    for gen in (lambda: torch.Generator().manual_seed(3), lambda: sample_generators(3, range(5))):
        fast = generate(m, c, cfg_scale=1.25, generator=gen(), **filters)
        slow = generate_reference(m, c, cfg_scale=1.25, generator=gen(), **filters)
        assert fast.shape == (5, 48) and torch.equal(fast, slow)
    other = generate(m, c, cfg_scale=1.25, generator=torch.Generator().manual_seed(4), **filters)
    assert not torch.equal(other, fast)  # the seed matters


def test_samples_do_not_depend_on_shard_or_batch_size():
    m = tiny(seq_len=32)
    pairs = [(i, (3 * i) % 8) for i in range(8)]
    runs = {bs: sample_tokens(m, pairs, **kwargs(batch_size=bs)) for bs in (1, 3, 8)}
    for bs in (3, 8):  # same tokens for every index (exactly), same NLL
        assert torch.equal(runs[bs].tokens, runs[1].tokens)
        assert torch.allclose(runs[bs].nll, runs[1].nll, rtol=0, atol=1e-5)
    shard = sample_tokens(m, pairs[2:7][::-1], **kwargs(batch_size=2))  # another shard, another order
    assert torch.equal(shard.tokens, runs[8].tokens[2:7].flip(0))
    assert len({tuple(t.tolist()) for t in runs[8].tokens}) == 8  # every index gets its own sample
    assert not torch.equal(sample_tokens(m, pairs, **kwargs(seed=8)).tokens, runs[8].tokens)


def test_nll_is_teacher_forced_ce_without_guidance():
    m = tiny(seq_len=32)
    c = torch.tensor([1, 4])
    z = generate(m, c, cfg_scale=1.25, generator=torch.Generator().manual_seed(0))
    nll = sequence_nll(m, c, z)
    assert nll.shape == (2,)
    for i in range(2):
        assert nll[i].item() == pytest.approx(m.loss(c[i : i + 1], z[i : i + 1]).item(), rel=1e-5)


def test_sample_videos_with_a_fake_decoder():
    m = tiny(seq_len=32)
    t, h, w = 4, 2, 4  # 32 tokens -> 4 x 2 x 4 "pixels", values spread beyond [0, 1] to exercise the clamp

    def decode(ids: torch.Tensor) -> torch.Tensor:
        x = ids.float().reshape(-1, 1, t, h, w) / 128.0 - 0.5
        return torch.cat([x, 1 - x, x * 0 + 0.5], dim=1)  # (b, 3, t, h, w)

    pairs = [(10, 0), (11, 1), (12, 2)]
    out = sample_videos(m, decode, pairs, cfg_scale=1.25, seed=0, batch_size=2, device="cpu", progress=False)
    tokens = sample_tokens(m, pairs, **kwargs(seed=0)).tokens
    assert out.videos.shape == (3, t, h, w, 3) and out.videos.dtype == np.uint8
    assert out.nll.shape == (3,) and np.isfinite(out.nll).all() and (out.nll > 0).all()
    want = (decode(tokens).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
    assert np.array_equal(out.videos, want)
    assert out.videos[..., 2].min() == out.videos[..., 2].max() == 128  # 0.5 -> 127.5 rounds to 128
    assert out.videos.min() == 0 and out.videos.max() == 255  # clamped, not wrapped


def test_bad_inputs_are_rejected():
    m = tiny(seq_len=16)
    with pytest.raises(ValueError, match="pairs: expected at least one"):
        sample_tokens(m, [], **kwargs())
    with pytest.raises(ValueError, match=r"pairs\[1\]: sample index 3 appears twice"):
        sample_tokens(m, [(3, 0), (3, 1)], **kwargs())
    with pytest.raises(ValueError, match=r"pairs\[0\]: label must be in \[0, 8\)"):
        sample_tokens(m, [(0, 8)], **kwargs())
    with pytest.raises(ValueError, match="class_ids: must be in"):
        generate(m, torch.tensor([9]), generator=torch.Generator())
    with pytest.raises(ValueError, match="one generator per row"):
        generate(m, torch.tensor([1, 2]), generator=sample_generators(0, [0]))
    with pytest.raises(ValueError, match=r"video: expected float \(b, 3, t, h, w\)"):
        sample_videos(m, lambda ids: torch.zeros(len(ids), 3, 16), [(0, 0)], cfg_scale=1.0, seed=0,
                      batch_size=1, device="cpu", progress=False)


def test_bf16_autocast_path_runs_on_cpu():
    """The GPU configuration (autocast + a bf16 KV cache), exercised on the CPU for dtype plumbing only."""
    m = tiny(seq_len=16)
    out = sample_tokens(m, [(0, 1), (1, 2), (2, 3)], **kwargs(dtype=DTYPES["bf16"], batch_size=2))
    assert out.tokens.shape == (3, 16) and out.tokens.dtype == torch.long
    assert out.nll.dtype == torch.float32 and torch.isfinite(out.nll).all()


def test_cast_weights_and_autocast_precisions_both_draw_valid_samples():
    """The official precision (AR weights cast to bf16: residual stream, cache, logits and guidance mix in bf16;
    tokenizer weights in fp16) and fp32 weights under autocast, both run on the CPU: valid videos, NLLs close to
    the fp32 model's own NLL of the same tokens, and teacher-forced logits close to fp32's."""
    from larp.models.tokenizer import LARPTokenizer

    torch.manual_seed(0)
    tok32 = LARPTokenizer.from_preset("tiny").eval()
    torch.nn.init.normal_(tok32.final_layer.linear.weight, std=0.2)  # the zero-init output would decode to 0
    pairs = [(i, i % 8) for i in range(4)]
    out = {}
    for cast in (True, False):
        m, tok = tiny(seq_len=64), LARPTokenizer.from_preset("tiny").eval()
        tok.load_state_dict(tok32.state_dict())
        decode = sampling_precision(m, tok, torch.bfloat16, torch.float16, cast_weights=cast)
        want = (torch.bfloat16, torch.float16) if cast else (torch.float32, torch.float32)
        assert (m.abs_pe.dtype, next(tok.parameters()).dtype) == want
        res = sample_videos(m, decode, pairs, **kwargs(dtype=torch.bfloat16, seed=3))
        assert res.videos.shape == (4, 16, 32, 32, 3) and res.videos.dtype == np.uint8
        assert np.isfinite(res.nll).all() and (res.nll > 0).all()
        tokens = sample_tokens(m, pairs, **kwargs(dtype=torch.bfloat16, seed=3)).tokens
        assert 0 <= int(tokens.min()) and int(tokens.max()) < m.cfg.vocab_size
        ref = tiny(seq_len=64)  # fp32: its NLL of the same tokens
        assert np.allclose(res.nll, sequence_nll(ref, torch.tensor([c for _, c in pairs]), tokens).numpy(),
                           atol=0.05)
        video = decode(tokens)  # the decoder in its precision vs fp32
        assert video.dtype == torch.float32 and (video - tok32.decode(tokens)).abs().max() < 0.02
        with torch.no_grad():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not cast):
                logits = m(torch.tensor([1, 2]), tokens[:2, :-1])
            full = ref(torch.tensor([1, 2]), tokens[:2, :-1])
        assert logits.dtype == (torch.bfloat16 if cast else torch.float32)  # the guidance mix runs in this dtype
        out[cast] = float((logits.float() - full).abs().max() / full.std())
    assert out[True] < 0.1 and out[False] < 0.1, out


def test_static_shape_decoding_draws_the_same_tokens():
    # the fixed-shape step (whole cache under a mask, for torch.compile / CUDA graphs) against the eager one,
    # class-conditional with guidance and frame prediction
    m = tiny(seq_len=48)
    c = torch.tensor([0, 3, 5, 7, 2])
    eager = generate(m, c, cfg_scale=1.25, generator=sample_generators(3, range(5)))
    static = generate(m, c, cfg_scale=1.25, generator=sample_generators(3, range(5)), decode="static")
    assert torch.equal(static, eager)
    torch.manual_seed(0)
    fp = LARPGenerator.from_preset("tiny", seq_len=16, frame_prediction=True).eval()
    torch.nn.init.normal_(fp.output.weight, std=0.3)
    cond = torch.randint(0, fp.cfg.vocab_size, (3, 16), generator=torch.Generator().manual_seed(1))
    assert torch.equal(generate(fp, cond, generator=sample_generators(0, range(3)), decode="static"),
                       generate(fp, cond, generator=sample_generators(0, range(3))))
    with pytest.raises(ValueError, match="decode: must be one of"):
        generate(m, c, generator=sample_generators(3, range(5)), decode="graphs")


@pytest.mark.slow
def test_compiled_decoding_draws_the_same_tokens_and_reuses_its_graph():
    # torch.compile(fullgraph=True) of the static step: no graph break, one compilation for every step and
    # for a second batch of the same size (the cache storage is kept on the model at fixed addresses)
    import torch._dynamo.utils as dynamo_utils

    m = tiny(seq_len=24)
    c = torch.tensor([1, 4, 6])
    eager = generate(m, c, cfg_scale=1.25, generator=sample_generators(5, range(3)))
    dynamo_utils.counters.clear()
    compiled = generate(m, c, cfg_scale=1.25, generator=sample_generators(5, range(3)), decode="compiled")
    assert torch.equal(compiled, eager)
    frames_compiled = dynamo_utils.counters["stats"]["unique_graphs"]
    again = generate(m, c, cfg_scale=1.25, generator=sample_generators(5, range(3)), decode="compiled")
    assert torch.equal(again, eager)
    assert dynamo_utils.counters["stats"]["unique_graphs"] == frames_compiled == 1
