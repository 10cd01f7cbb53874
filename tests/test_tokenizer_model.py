"""LARP tokenizer + discriminator: sizes (paper preset on the meta device), official key names, position
tables, token order, shapes, encode/decode, autocast, safe checkpoint loading."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

from dataclasses import replace

from larp.config import preset
from larp.models import Discriminator, LARPTokenizer
from larp.models.layers import PatchEmbed3D, sincos_1d, sincos_2d, sincos_3d

# the key list is project documentation; look for it in the test data first, then in the shared notes
KEY_FILE = Path(__file__).parent / "data" / "official_state_dict_keys.txt"  # names + shapes, test data


def official_keys(section: str) -> dict[str, tuple[tuple[int, ...], str]]:
    path = KEY_FILE
    rows, current = {}, ""
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            current = line
        elif line.strip() and not line.startswith("#") and current.startswith(f"## {section}"):
            key, shape, _dtype, kind = line.split("\t")
            rows[key] = (tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), kind)
    return rows


@pytest.fixture(scope="module")
def paper_models() -> tuple[LARPTokenizer, Discriminator]:
    with torch.device("meta"):
        return LARPTokenizer.from_preset("larp-l-long"), Discriminator.from_preset("larp-l-long")


@pytest.fixture()
def tiny() -> LARPTokenizer:
    torch.manual_seed(0)
    return LARPTokenizer.from_preset("tiny")


def video(b: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, 16, size, size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------
# paper-scale sizes and key names


def test_paper_parameter_counts(paper_models):
    tok, disc = paper_models
    assert abs(tok.num_params() / 1e6 - 172.18) <= 0.01
    assert abs(sum(p.numel() for p in tok.prior.parameters()) / 1e6 - 21.70) <= 0.01
    assert abs(disc.num_params() / 1e6 - 38.21) <= 0.01
    # the exact totals of the official state dicts (tokenizer incl. prior: 193,880,224; D: 38,205,953)
    assert tok.num_params(include_prior=True) == 193_880_224
    assert disc.num_params() == 38_205_953
    assert len(tok.tokenizer_parameters()) == len(list(tok.parameters())) - len(list(tok.prior.parameters()))


@pytest.mark.parametrize("section,index", [("tokenizer", 0), ("discriminator", 1)])
def test_state_dict_matches_official_names(paper_models, section, index):
    model = paper_models[index]
    official = official_keys(section)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    params = {k: s for k, (s, kind) in official.items() if kind == "param"}
    for key, shape in params.items():  # every learned tensor has the official name and shape
        assert ours.get(key) == shape, key
    assert set(ours) == set(params)  # nothing extra
    # the official fixed sin-cos buffers are ours too, but non-persistent (recomputed, not stored)
    buffers = dict(model.named_buffers())
    for key, (shape, kind) in official.items():
        if kind == "buffer":
            assert tuple(buffers[key].shape) == shape


# --------------------------------------------------------------------------------------------------
# positions and token order


def test_sincos_1d_values():
    pe = sincos_1d(8, torch.arange(3))
    assert pe.shape == (3, 8)
    assert torch.allclose(pe[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    omega = [1 / 10000 ** (i / 4) for i in range(4)]
    expected = [math.sin(2 * w) for w in omega] + [math.cos(2 * w) for w in omega]
    assert torch.allclose(pe[2], torch.tensor(expected), atol=1e-6)


def test_sincos_2d_and_3d_layout():
    h, w, d = 3, 5, 16
    pe = sincos_2d(d, h, w).reshape(h, w, d)
    assert torch.allclose(pe[:, :, : d // 2], sincos_1d(d // 2, torch.arange(w))[None].expand(h, -1, -1))
    assert torch.allclose(pe[:, :, d // 2 :], sincos_1d(d // 2, torch.arange(h))[:, None].expand(-1, w, -1))
    pe3 = sincos_3d(d, 2, h, w).reshape(2, h * w, d)
    assert torch.allclose(pe3[1], sincos_2d(d, h, w) + sincos_1d(d, torch.tensor([1.0])))


def test_patch_embed_token_order_is_t_h_w():
    embed = PatchEmbed3D(3, 8, 4, 8)
    x = torch.zeros(1, 3, 8, 32, 32)  # grid 2 x 4 x 4
    x[:, :, 4:8, 16:24, 8:16] = 1.0  # patch (t=1, h=2, w=1)
    tokens = embed(x) - embed(torch.zeros_like(x))
    changed = tokens.abs().sum(-1)[0].nonzero().flatten().tolist()
    assert changed == [1 * 16 + 2 * 4 + 1]
    bound = math.sqrt(6 / (8 + 3 * 4 * 8 * 8))  # xavier on the flattened (8, 768) weight
    assert embed.proj.weight.abs().max() <= bound and torch.all(embed.proj.bias == 0)


# --------------------------------------------------------------------------------------------------
# tiny preset behaviour


def test_tiny_forward_backward_shapes_and_speed(tiny):
    x = video()
    tiny.train()
    timings = []
    for _ in range(3):  # best of 3: the first call pays one-off overheads, the CPU is shared
        tiny.zero_grad()
        start = time.perf_counter()
        out = tiny(x, step=3, max_steps=10, generator=torch.Generator().manual_seed(0))
        loss = out.reconstruction.abs().mean() + out.vq_loss + 0.06 * out.prior_loss
        loss.backward()
        timings.append(time.perf_counter() - start)
    assert min(timings) < 2.0, timings
    cfg = tiny.config
    assert out.reconstruction.shape == x.shape
    assert out.indices.shape == (2, cfg.num_tokens) and out.indices.dtype == torch.int64
    assert 0 <= int(out.indices.min()) and int(out.indices.max()) < cfg.codebook_size
    assert out.prior_loss is not None and torch.isfinite(out.prior_loss)
    assert out.ss_ratio == pytest.approx(0.5 * 3 / 3)  # 3 / (0.3 * 10) * 0.5 = 0.5
    assert 0 <= float(out.prior_top1) <= float(out.prior_top5) <= 1
    assert tiny.encoder_latent_query_embed.grad is not None


def test_zero_initialised_head_gives_zero_reconstruction(tiny):
    out = tiny.eval()(video())
    assert torch.count_nonzero(out.reconstruction) == 0
    assert out.prior_loss is None  # the prior only runs in training


def test_encode_is_deterministic_and_decode_roundtrips(tiny):
    torch.nn.init.normal_(tiny.final_layer.linear.weight, std=0.02)  # non-trivial output
    x = video()
    tiny.train()  # encode is argmax even in training mode
    ids = tiny.encode(x)
    assert torch.equal(ids, tiny.encode(x))
    assert ids.dtype == torch.int64 and ids.shape == (2, tiny.config.num_tokens)
    tiny.eval()
    out = tiny(x)
    assert torch.equal(out.indices, ids)
    recon = tiny.decode(ids)
    assert recon.shape == x.shape
    assert torch.allclose(recon, out.reconstruction, atol=1e-5)


def test_stochastic_forward_samples_with_generator(tiny):
    tiny.train()
    x = video()
    a = tiny(x, step=0, max_steps=1, generator=torch.Generator().manual_seed(1)).indices
    b = tiny(x, step=0, max_steps=1, generator=torch.Generator().manual_seed(1)).indices
    assert torch.equal(a, b)
    assert not torch.equal(a, tiny.encode(x))  # tau = 0.03 over a random codebook: some tokens differ


def test_no_prior_when_disabled_or_not_given():
    tok = LARPTokenizer.from_preset("tiny", prior=replace(preset("tiny").prior, enabled=False))
    assert tok.prior is None and not any(k.startswith("prior") for k in tok.state_dict())
    assert LARPTokenizer.from_preset("tiny", prior=False).prior is None
    assert LARPTokenizer(preset("tiny").tokenizer).prior is None  # no prior group given: inference's tokenizer
    assert tok.num_params() == tok.num_params(include_prior=True)
    out = tok.train()(video())
    assert out.prior_loss is None and out.prior_top1 is None


def test_alpha_zero_still_builds_and_runs_the_prior():
    """prior.alpha only weights the loss (larp.losses); whether the module exists is prior.enabled."""
    tok = LARPTokenizer.from_preset("tiny", prior=replace(preset("tiny").prior, alpha=0.0)).train()
    assert tok.prior is not None
    out = tok(video(), step=0, max_steps=10)
    assert out.prior_loss is not None and out.prior_top1 is not None


def test_bad_inputs_fail_early(tiny):
    with pytest.raises(ValueError, match="video must be"):
        tiny.encode(torch.rand(1, 3, 8, 32, 32))
    with pytest.raises(ValueError, match="float"):
        tiny.encode(torch.zeros(1, 3, 16, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="token ids"):
        tiny.decode(torch.zeros(1, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        tiny.decode(torch.full((1, tiny.config.num_tokens), 256))
    with pytest.raises(ValueError, match="step and max_steps"):
        tiny.train()(video())
    with pytest.raises(ValueError, match="unknown name"):
        LARPTokenizer.from_preset("huge")
    with pytest.raises(ValueError, match="widht"):
        LARPTokenizer.from_preset("tiny", widht=3)
    with pytest.raises(ValueError, match="divisible"):
        LARPTokenizer.from_preset("tiny", heads=5)


def test_autocast_bf16_keeps_quantiser_fp32(tiny):
    tiny.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = tiny.quantize(video(), generator=torch.Generator().manual_seed(0))
        out = tiny(video(), step=1, max_steps=2, generator=torch.Generator().manual_seed(0))
    assert q.quantized_st.dtype == torch.float32 and q.commit.dtype == torch.float32
    assert out.prior_loss.dtype == torch.float32
    assert torch.allclose(q.quantized_st.norm(dim=-1), torch.ones(()), atol=1e-5)


def test_discriminator_tiny():
    disc = Discriminator.from_preset("tiny")
    x = video(3)
    logits = disc(x)
    assert logits.shape == (3,)
    logits.sum().backward()
    assert disc.cls_token.grad is not None and disc.cls_token.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="video must be"):
        disc(torch.rand(1, 3, 16, 16, 16))


# --------------------------------------------------------------------------------------------------
# checkpoints: tensors only


def test_load_weights_roundtrip_torch_and_safetensors(tiny, tmp_path):
    from safetensors.torch import save_file

    other = LARPTokenizer.from_preset("tiny")
    torch.save({"model": tiny.state_dict()}, tmp_path / "ckpt.pt")
    other.load_weights(tmp_path / "ckpt.pt")
    assert torch.equal(other.encoder_latent_query_embed, tiny.encoder_latent_query_embed)
    torch.nn.init.zeros_(other.bottleneck.regularizer.embedding.weight)
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(tmp_path / "w.safetensors"))
    other.load_weights(tmp_path / "w.safetensors")
    assert torch.equal(
        other.bottleneck.regularizer.embedding.weight, tiny.bottleneck.regularizer.embedding.weight
    )


class _Payload:
    """Unpickling this runs code (writes a marker file): a weights-only loader must refuse it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_load_weights_refuses_pickled_code(tiny, tmp_path):
    marker = tmp_path / "executed"
    bad = tmp_path / "bad.pt"
    state = tiny.state_dict()
    state["payload"] = _Payload(str(marker))
    torch.save(state, bad)
    with pytest.raises(ValueError, match="tensors-only"):
        tiny.load_weights(bad)
    assert not marker.exists()
    with pytest.raises(FileNotFoundError):
        tiny.load_weights(tmp_path / "missing.pt")


def test_load_weights_accepts_official_layout(tiny, tmp_path):
    """Official-style state dict (persistent sin-cos buffers + prior weights) into a prior-less model."""
    state = dict(tiny.state_dict())
    for name in ("encoder_patch_pe", "decoder_latent_pe", "decoder_patch_query_embed"):
        state[name] = getattr(tiny, name).clone()
    torch.save(state, tmp_path / "official.pth")
    plain = LARPTokenizer.from_preset("tiny", prior=False)
    plain.load_weights(tmp_path / "official.pth")
    x = video()
    assert torch.equal(plain.encode(x), tiny.encode(x))
    state["encoder.blocks.0.attn.qkv.bias"] = torch.zeros(3)  # a real mismatch still fails loudly
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match="qkv.bias"):
        plain.load_weights(tmp_path / "bad.pth")
    # the prior's weights are skipped only by a tokenizer without a prior: one with a prior needs them
    plain.load_state_dict(tiny.state_dict())
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*prior_model\."):
        tiny.load_state_dict(plain.state_dict())


@pytest.mark.parametrize("eps", [1e-5, 1e-6])
def test_vit_block_layernorm_eps_is_a_parameter(eps):
    # timm's Block default norm: nn.LayerNorm (1e-5) up to timm 1.0.15, timm's LayerNorm (1e-6) from 1.0.16
    tok = LARPTokenizer.from_preset("tiny", norm_eps=eps)
    disc = Discriminator.from_preset("tiny", norm_eps=eps)
    blocks = [*tok.encoder.blocks, *tok.decoder.blocks, *disc.transformer_encoder.blocks]
    assert {n.eps for b in blocks for n in (b.norm1, b.norm2)} == {eps}
    # the final norms are explicit 1e-6 officially, the prior's plain nn.LayerNorm 1e-5: neither follows
    assert tok.final_layer.norm_final.eps == disc.norm_final.eps == 1e-6
    assert {m.eps for m in tok.prior.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-5}
    assert LARPTokenizer.from_preset("tiny").encoder.blocks[0].norm1.eps == 1e-5  # the default


def test_vit_block_layernorm_eps_changes_the_output():
    torch.manual_seed(0)
    a = LARPTokenizer.from_preset("tiny").eval()
    b = LARPTokenizer.from_preset("tiny", norm_eps=1e-6).eval()
    b.load_state_dict(a.state_dict())
    x = video(1)
    za, zb = a.encoder(a.x_embedder(x)), b.encoder(b.x_embedder(x))
    assert not torch.equal(za, zb) and torch.allclose(za, zb, atol=1e-3)
    with pytest.raises(ValueError, match="tokenizer.norm_eps"):
        LARPTokenizer.from_preset("tiny", norm_eps=0.0)
