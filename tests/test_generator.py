"""AR generator (llama-abs-LP): size, official names, init, teacher forcing, KV cache, overfitting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from larp.config import preset
from larp.models.generator import ClassEmbedder, LARPGenerator, preset_config


def tiny(**overrides) -> LARPGenerator:
    """Tiny model with a random (not zero) output head, so logits carry information."""
    torch.manual_seed(0)
    model = LARPGenerator.from_preset("tiny", **overrides)
    torch.nn.init.normal_(model.output.weight, std=0.3)
    return model


def official_ar_shapes(depth: int = 30, w: int = 1280, hidden: int = 3584) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official llama-abs-LP state dict (official_state_dict_keys.txt, section `ar`)."""
    shapes = {
        "abs_pe": (1, 1024, w),
        "cls_embedding.embedding_table.weight": (102, w),
        "tok_embeddings.weight": (8192, w),
        "norm.weight": (w,),
        "output.weight": (8192, w),
    }
    for i in range(depth):
        shapes |= {
            f"layers.{i}.attention.wqkv.weight": (3 * w, w),
            f"layers.{i}.attention.wo.weight": (w, w),
            f"layers.{i}.feed_forward.w1.weight": (hidden, w),
            f"layers.{i}.feed_forward.w3.weight": (hidden, w),
            f"layers.{i}.feed_forward.w2.weight": (w, hidden),
            f"layers.{i}.attention_norm.weight": (w,),
            f"layers.{i}.ffn_norm.weight": (w,),
        }
    return shapes


def test_paper_preset_parameter_count_and_official_state_dict():
    with torch.device("meta"):  # 632M parameters without allocating them
        model = LARPGenerator.from_preset("llama-abs-LP")
    assert model.cfg == preset("paper").generator and model.cfg.ffn_hidden == 3584
    n = model.num_params()
    assert abs(n / 1e6 - 631.98) <= 0.01
    assert n == 631_975_680  # the official count of the `ar` section
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == official_ar_shapes()  # 215 entries, names and shapes as released


def test_public_api():
    import larp

    assert larp.LARPGenerator is LARPGenerator
    m = larp.LARPGenerator.from_preset("tiny", seq_len=24)
    out = m.generate(torch.tensor([0, 7]), cfg_scale=1.25, temperature=1.0, top_k=None, top_p=0.95,
                     generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 24) and out.dtype == torch.long and 0 <= out.min() and out.max() < 256


def test_from_preset_overrides_are_strict():
    m = LARPGenerator.from_preset("tiny", seq_len=1024, token_dropout=0)  # int accepted for a float field
    assert m.cfg.seq_len == 1024 and m.abs_pe.shape == (1, 1024, 64) and m.cfg.token_dropout == 0.0
    with pytest.raises(ValueError, match="generator.seq_length: unknown key"):
        preset_config("tiny", seq_length=10)
    with pytest.raises(ValueError, match="generator.depth: must be an integer"):
        preset_config("tiny", depth=2.5)
    with pytest.raises(ValueError, match="unknown name 'huge'"):
        LARPGenerator.from_preset("huge")
    with pytest.raises(ValueError, match="generator.width"):  # GeneratorConfig.validate: width % heads
        LARPGenerator.from_preset("tiny", heads=5)
    with pytest.raises(ValueError, match="generator.seq_len"):
        LARPGenerator.from_preset("tiny", seq_len=1)


def test_initialisation():
    torch.manual_seed(0)
    m = LARPGenerator.from_preset("tiny", width=128, heads=4, seq_len=1024)
    assert torch.count_nonzero(m.output.weight) == 0  # zero-initialised head
    block = m.layers[1]
    for p in (m.abs_pe, m.tok_embeddings.weight, block.attention.wqkv.weight, block.feed_forward.w2.weight):
        assert p.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.equal(m.norm.weight, torch.ones(128)) and torch.equal(block.ffn_norm.weight, torch.ones(128))
    assert all(mod.bias is None for mod in m.modules() if isinstance(mod, torch.nn.Linear))


def test_optimizer_groups_decay_only_linear_weights():
    m = LARPGenerator.from_preset("tiny")
    decay, rest = m.optim_groups(0.05)
    assert decay["weight_decay"] == 0.05 and rest["weight_decay"] == 0.0
    name = {id(p): n for n, p in m.named_parameters()}
    decayed = {name[id(p)] for p in decay["params"]}
    kept = {name[id(p)] for p in rest["params"]}
    assert decayed.isdisjoint(kept) and decayed | kept == set(name.values())
    linear = ("wqkv.weight", "wo.weight", "w1.weight", "w2.weight", "w3.weight")
    assert decayed == {n for n in name.values() if n.endswith(linear) or n == "output.weight"}
    assert {"abs_pe", "tok_embeddings.weight", "cls_embedding.embedding_table.weight", "norm.weight"} <= kept
    torch.optim.AdamW([decay, rest], lr=1e-3)  # the groups are valid AdamW input


def test_forward_layout_and_loss():
    m = tiny().eval()
    b, n, v = 3, m.cfg.seq_len, m.cfg.vocab_size
    c, z = torch.tensor([0, 5, m.null_class]), torch.randint(0, v, (b, n))
    logits = m(c, z[:, :-1])
    assert logits.shape == (b, n, v) and logits.dtype == torch.float32
    assert torch.allclose(m.loss(c, z), F.cross_entropy(logits.reshape(-1, v), z.reshape(-1)))
    # causality: changing token j changes no logit at positions <= j (position j + 1 is the first to see it)
    z2 = z.clone()
    z2[:, 10] = (z2[:, 10] + 1) % v
    logits2 = m(c, z2[:, :-1])
    assert torch.equal(logits[:, :11], logits2[:, :11]) and not torch.allclose(logits[:, 11], logits2[:, 11])
    with pytest.raises(ValueError, match="at most 63 tokens"):
        m(c, z)  # full sequences are fed without their last token
    with pytest.raises(ValueError, match="class_ids"):
        m(c.float(), z[:, :-1])


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 2e-5), (torch.float64, 1e-11)])
def test_kv_cache_logits_equal_full_forward(dtype, atol):
    """Tolerance: |cached - full| <= 2e-5 in fp32 (logits have std ~3 here), <= 1e-11 in float64."""
    m = tiny().to(dtype).eval()
    b, n = 4, m.cfg.seq_len
    c, z = torch.tensor([1, 2, 3, m.null_class]), torch.randint(0, m.cfg.vocab_size, (b, n))
    with torch.inference_mode():
        full = m(c, z[:, :-1])
        assert full.std() > 1.0  # a non-trivial comparison
        m.setup_cache(b)
        cached = [m.prefill(c)] + [m.decode_step(z[:, p - 1], p) for p in range(1, n)]
        assert torch.allclose(torch.stack(cached, 1), full, rtol=0, atol=atol)
        # a prefix prefill (queries after position 0 use the explicit causal mask) continues identically
        m.setup_cache(b + 2)  # a larger cache than the batch is fine
        first = m.prefill(c, z[:, :20])
        rest = [m.decode_step(z[:, p - 1], p) for p in range(21, n)]
        assert torch.allclose(torch.stack([first] + rest, 1), full[:, 20:], rtol=0, atol=atol)


def test_cache_misuse_is_reported():
    m = tiny().eval()
    c = torch.tensor([0, 1])
    with pytest.raises(RuntimeError, match="setup_cache"):
        m.prefill(c)
    m.setup_cache(2)
    with pytest.raises(ValueError, match="cache capacity"):
        m.prefill(torch.tensor([0, 1, 2]))
    m.prefill(c)
    with pytest.raises(ValueError, match="next free position 1"):
        m.decode_step(torch.tensor([3, 4]), 2)
    with pytest.raises(ValueError, match=r"expected shape \(2,\)"):
        m.decode_step(torch.tensor([3]), 1)
    m.remove_cache()
    with pytest.raises(RuntimeError, match="no KV cache"):
        m.decode_step(torch.tensor([3, 4]), 1)


def test_class_dropout_uses_the_null_class():
    torch.manual_seed(0)
    emb = ClassEmbedder(num_classes=5, dim=8, dropout=0.3)
    labels = torch.randint(0, 5, (4000,))
    null = emb.embedding_table.weight[5]
    dropped = (emb(labels) == null).all(-1).float().mean().item()
    assert dropped == pytest.approx(0.3, abs=0.03)
    emb.eval()
    assert not (emb(labels) == null).all(-1).any()


def test_tiny_model_overfits_a_handful_of_sequences():
    torch.manual_seed(0)
    no_dropout = dict(token_dropout=0.0, class_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0)
    m = LARPGenerator.from_preset("tiny", **no_dropout)
    classes = torch.tensor([0, 1, 2, 3])
    seqs = torch.randint(0, m.cfg.vocab_size, (4, m.cfg.seq_len))
    opt = torch.optim.AdamW(m.optim_groups(0.0), lr=3e-3, betas=(0.9, 0.95))
    first = None
    for _ in range(200):
        loss = m.loss(classes, seqs)
        first = loss.item() if first is None else first
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert first == pytest.approx(torch.log(torch.tensor(256.0)).item(), rel=1e-3)  # zero head: uniform
    assert loss.item() < 0.05
    # the model now reproduces each class's sequence token for token with the KV-cache sampler (greedy)
    out = m.generate(classes, cfg_scale=1.0, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, seqs)
    assert m.training  # generation restores the training mode
