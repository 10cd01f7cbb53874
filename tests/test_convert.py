"""Import of the released LARP checkpoints (larp.convert).

Key names and shapes come from tests/data/official_state_dict_keys.txt (read from the official
model definitions). Map completeness, shapes and the fixed sin-cos tables are checked at the paper size
(state dicts of zero-memory expanded tensors; the paper tokenizer is built on the CPU once, ~3 s); the
numeric round trips (outputs equal after conversion) use the ``tiny`` preset so the forward passes stay fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from larp.config import frame_prediction_params, preset
from larp.convert import (
    FIXED_TABLES,
    ConversionError,
    convert_state_dict,
    expected_shapes,
    fixed_tables,
    import_weights,
    official_key_map,
    read_checkpoint,
    resolve_source,
    to_official,
)
from larp.models.generator import LARPGenerator
from larp.models.tokenizer import LARPTokenizer
from larp.train.checkpoint import UnsafeCheckpointError
from larp.train.generator import load_generator
from larp.train.tokenizer import load_tokenizer

KEYS_FILE = Path(__file__).parent / "data" / "official_state_dict_keys.txt"
PAPER = preset("paper")
TINY = preset("tiny")


def official_entries(section: str) -> dict[str, tuple[tuple[int, ...], str, str]]:
    """key -> (shape, dtype, param|buffer) of one section of the official key list."""
    out, current = {}, None
    for line in KEYS_FILE.read_text().splitlines():
        if line.startswith("## "):
            current = line[3:].split()[0]
        elif line and not line.startswith("#") and current == section:
            key, shape, dtype, kind = line.split("\t")
            out[key] = (tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype, kind)
    assert out, f"no section {section!r} in {KEYS_FILE}"
    return out


def official_state(section: str, tables: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """A paper-size state dict with the official names and shapes; values are one zero expanded to the shape
    (no memory), the fixed tables are ``tables``."""
    tables = tables or {}
    entries = official_entries(section)
    return {k: tables.get(k, torch.zeros(()).expand(shape)) for k, (shape, _, _) in entries.items()}


def random_official(kind: str, params, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Random tensors under every official key (tiny shapes), fixed tables = our computed ones."""
    g = torch.Generator().manual_seed(seed)
    tables = fixed_tables(params.tokenizer) if kind == "tokenizer" else {}
    return {
        k: (tables[k] if k in tables else torch.randn(shape, generator=g) * 0.05).to(dtype)
        for k, shape in expected_shapes(kind, params).items()
    }


# ---- the map against the official list (paper size) ------------------------------------------------


KINDS = [("tokenizer", "tokenizer"), ("ar", "ar"), ("ar-fp", "ar-fp")]


@pytest.mark.parametrize("kind,section", KINDS)
def test_key_map_is_complete_against_the_official_list(kind, section):
    official = official_entries(section)
    mapping = official_key_map(kind)  # paper preset
    assert set(mapping) == set(official)
    shapes = expected_shapes(kind, PAPER)
    assert {k: shapes[k] for k in official} == {k: v[0] for k, v in official.items()}
    dropped = sorted(k for k, v in mapping.items() if v is None)
    # exactly the official buffers are dropped (after checking), every parameter maps one-to-one
    assert dropped == sorted(k for k, v in official.items() if v[2] == "buffer")
    assert dropped == (sorted(FIXED_TABLES) if kind == "tokenizer" else [])
    assert all(mapping[k] == k for k, v in official.items() if v[2] == "param")
    assert len({v for v in mapping.values() if v is not None}) == len(mapping) - len(dropped)
    if kind == "tokenizer":  # the prior's weights are part of the map, whether or not our training builds a prior
        n_prior = sum(k.startswith("prior_model.") for k in mapping)
        assert n_prior == sum(k.startswith("prior_model.") for k in official) > 100
        import dataclasses

        no_prior = dataclasses.replace(PAPER, prior=dataclasses.replace(PAPER.prior, enabled=False))
        assert official_key_map(kind, no_prior) == mapping


def test_paper_tables_equal_the_model_buffers():
    """fixed_tables() is what LARPTokenizer registers (paper size, CPU build ~2 s)."""
    model = LARPTokenizer(PAPER.tokenizer, PAPER.prior)
    buffers = dict(model.named_buffers())
    for name, table in fixed_tables(PAPER.tokenizer).items():
        assert torch.equal(buffers[name], table), name


@pytest.mark.parametrize("kind,section", KINDS)
def test_paper_size_official_state_converts_strictly(kind, section):
    tables = fixed_tables(PAPER.tokenizer) if kind == "tokenizer" else None
    state = official_state(section, tables)
    out = convert_state_dict(state, kind, PAPER)
    assert len(out) == len(state) - (len(FIXED_TABLES) if kind == "tokenizer" else 0)
    assert not set(FIXED_TABLES) & set(out)
    # the result loads strictly into our paper-size model (meta: keys and shapes)
    with torch.device("meta"):
        if kind == "tokenizer":
            model = LARPTokenizer(PAPER.tokenizer, PAPER.prior)
        else:
            model = LARPGenerator(frame_prediction_params(PAPER).generator if kind == "ar-fp" else PAPER.generator)
    model.load_state_dict(out, strict=True, assign=True)
    if kind == "ar-fp":  # the released FP generator's layout: SEP row, 1025-position condition, 2048 positions
        assert out["tok_embeddings.weight"].shape[0] == 8193 and model.sep_id == 8192
        assert model.cond_len == 1025 and out["abs_pe"].shape[1] == model.max_len == 2048


def test_paper_tables_in_half_precision_pass_and_wrong_tables_fail():
    bf16 = {k: v.to(torch.bfloat16) for k, v in fixed_tables(PAPER.tokenizer).items()}
    out = convert_state_dict(official_state("tokenizer", bf16), "tokenizer", PAPER)
    assert "encoder_patch_pe" not in out
    # a swapped convention (cos half first) is caught: this is a real check of our PE code
    wrong = dict(fixed_tables(PAPER.tokenizer))
    wrong["decoder_latent_pe"] = torch.cat(wrong["decoder_latent_pe"].chunk(2, dim=-1)[::-1], dim=-1)
    with pytest.raises(ConversionError, match="decoder_latent_pe"):
        convert_state_dict(official_state("tokenizer", wrong), "tokenizer", PAPER)


def test_official_tokenizer_at_another_token_count_imports():
    """Official GPTC keeps its 1024-row position table whatever the token count (our prior.max_len)."""
    import dataclasses

    n = 256
    params = dataclasses.replace(PAPER, tokenizer=dataclasses.replace(PAPER.tokenizer, num_tokens=n),
                                 generator=dataclasses.replace(PAPER.generator, seq_len=n))
    shapes = {k: v[0] for k, v in official_entries("tokenizer").items()}
    shapes["encoder_latent_query_embed"] = (n, 768)
    shapes["decoder_latent_pe"] = (1, n, 768)
    assert shapes["prior_model.pos_emb"] == (1, 1024, 384)  # unchanged: the official table size
    tables = fixed_tables(params.tokenizer)
    state = {k: tables.get(k, torch.zeros(()).expand(shape)) for k, shape in shapes.items()}
    out = convert_state_dict(state, "tokenizer", params)
    assert out["prior_model.pos_emb"].shape == (1, 1024, 384)
    # a table cut to the token count (what this code built before prior.max_len) is named, not loaded
    state["prior_model.pos_emb"] = torch.zeros(()).expand(1, n, 384)
    with pytest.raises(ConversionError, match=r"prior_model\.pos_emb: shape \(1, 256, 384\)"):
        convert_state_dict(state, "tokenizer", params)


# ---- strictness --------------------------------------------------------------------------------------


def test_extra_missing_and_wrong_shape_are_all_listed():
    state = random_official("ar", TINY)
    state["layers.0.attention.extra_bias"] = torch.zeros(3)
    del state["layers.1.ffn_norm.weight"]
    state["output.weight"] = torch.zeros(5, 5)
    with pytest.raises(ConversionError) as e:
        convert_state_dict(state, "ar", TINY)
    msg = str(e.value)
    assert "layers.0.attention.extra_bias" in msg and "unmapped" in msg
    assert "layers.1.ffn_norm.weight" in msg and "missing" in msg
    assert "output.weight" in msg and "(5, 5)" in msg


@pytest.mark.parametrize("change", ["extra", "missing", "shape"])
def test_each_problem_alone_is_an_error_naming_the_key(change):
    state = random_official("tokenizer", TINY)
    key = "prior_model.head.weight"
    if change == "extra":
        key = "discriminator.fc.weight"
        state[key] = torch.zeros(1)
    elif change == "missing":
        del state[key]
    else:
        state[key] = torch.zeros(state[key].shape[0] + 1, state[key].shape[1])
    with pytest.raises(ConversionError, match=key.replace(".", r"\.")):
        convert_state_dict(state, "tokenizer", TINY)


def test_swapped_kind_is_named():
    with pytest.raises(ConversionError, match="is it the tokenizer"):
        convert_state_dict(random_official("tokenizer", TINY), "ar", TINY)
    # the two generators share most names: the class table tells them apart
    with pytest.raises(ConversionError, match="is it --kind ar-fp"):
        convert_state_dict(random_official("ar-fp", TINY), "ar", TINY)
    with pytest.raises(ConversionError, match=r"is it --kind ar \(class-conditional\)"):
        convert_state_dict(random_official("ar", TINY), "ar-fp", TINY)


def test_missing_fixed_table_is_an_error():
    state = random_official("tokenizer", TINY)
    del state["decoder_patch_query_embed"]
    with pytest.raises(ConversionError, match="decoder_patch_query_embed"):
        convert_state_dict(state, "tokenizer", TINY)


def test_unknown_kinds_are_refused():
    with pytest.raises(ConversionError, match="one of"):
        official_key_map("vae")


# ---- numeric round trips (tiny preset) -----------------------------------------------------------------


def test_tokenizer_round_trip_gives_identical_outputs():
    torch.manual_seed(0)
    a = LARPTokenizer(TINY.tokenizer, TINY.prior).eval()
    for p in a.parameters():  # away from the zero-initialised head, so outputs are not trivially equal
        p.data.normal_(0, 0.05)
    official = to_official(a.state_dict(), "tokenizer", TINY)
    assert set(official) == set(official_key_map("tokenizer", TINY))
    ours = convert_state_dict(official, "tokenizer", TINY)
    assert ours.keys() == a.state_dict().keys()
    assert all(torch.equal(ours[k], v) for k, v in a.state_dict().items())
    b = LARPTokenizer(TINY.tokenizer, TINY.prior).eval()
    b.load_state_dict(ours, strict=True)
    video = torch.rand(2, 3, 16, 32, 32, generator=torch.Generator().manual_seed(1))
    ids = a.encode(video)
    assert torch.equal(ids, b.encode(video))
    assert torch.equal(a.decode(ids), b.decode(ids))
    x = a.bottleneck.regularizer.lookup(ids)
    # the prior keeps its attention dropout in eval mode (official quirk): same seed for both
    outs = []
    for m in (a, b):
        torch.manual_seed(4)
        outs.append(m.prior(x[:, :-1]))
    assert torch.equal(*outs)


def test_official_to_ours_to_official_is_identical():
    for kind in ("tokenizer", "ar", "ar-fp"):
        state = random_official(kind, TINY, seed=3)
        back = to_official(convert_state_dict(state, kind, TINY), kind, TINY)
        assert back.keys() == state.keys()
        assert all(torch.equal(back[k], v) for k, v in state.items()), kind


@pytest.mark.parametrize("kind", ["ar", "ar-fp"])
def test_generator_round_trip_gives_identical_logits(kind):
    cfg = frame_prediction_params(TINY).generator if kind == "ar-fp" else TINY.generator
    torch.manual_seed(0)
    a = LARPGenerator(cfg).eval()
    for p in a.parameters():
        p.data.normal_(0, 0.05)
    b = LARPGenerator(cfg).eval()
    b.load_state_dict(convert_state_dict(to_official(a.state_dict(), kind, TINY), kind, TINY), strict=True)
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len), generator=g)
    # class ids, or the condition clip's tokens (frame prediction)
    condition = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len), generator=g) if kind == "ar-fp" else torch.tensor([0, 3])
    with torch.no_grad():
        assert torch.equal(a(condition, tokens[:, :-1]), b(condition, tokens[:, :-1]))


# ---- files ---------------------------------------------------------------------------------------------


class NotATensor:  # pickled by reference: a weights_only load must refuse it
    def __init__(self) -> None:
        self.payload = "code"


def test_pickled_objects_are_refused(tmp_path):
    bad = tmp_path / "pytorch_model.bin"
    torch.save({"output.weight": torch.zeros(2), "evil": NotATensor()}, bad)
    with pytest.raises(UnsafeCheckpointError, match="refusing"):
        read_checkpoint(bad)
    with pytest.raises(UnsafeCheckpointError):
        read_checkpoint(tmp_path)  # the directory form finds pytorch_model.bin


def test_read_checkpoint_forms(tmp_path):
    state = {"a": torch.arange(3.0)}
    torch.save({"model": state}, tmp_path / "wrapped.pt")
    assert torch.equal(read_checkpoint(tmp_path / "wrapped.pt")["a"], state["a"])
    with pytest.raises(ConversionError, match="model.safetensors"):
        read_checkpoint(tmp_path)  # no model.safetensors / pytorch_model.bin in it
    with pytest.raises(ConversionError, match="hf download hywang66/LARP-L-long-AR"):
        resolve_source(tmp_path / "nowhere", "ar")


def test_hf_source_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("LARP_OFFLINE", "1")
    with pytest.raises(ConversionError, match="data/released/tokenizer"):
        resolve_source("hf:hywang66/LARP-L-long-tokenizer", "tokenizer")


@pytest.mark.parametrize("kind", ["tokenizer", "ar", "ar-fp"])
def test_import_weights_writes_a_loadable_file_and_keeps_dtype(tmp_path, kind):
    repo = tmp_path / "released"
    repo.mkdir()
    state = random_official(kind, TINY, seed=5, dtype=torch.bfloat16)
    save_file(state, str(repo / "model.safetensors"))
    (repo / "config.json").write_text(json.dumps({"bottleneck_token_num": TINY.tokenizer.num_tokens}))
    out = tmp_path / "ckpt" / f"{kind}.safetensors"
    info = import_weights(repo, kind, out, TINY)

    stored = load_file(str(out))
    module = "tokenizer" if kind == "tokenizer" else "generator"
    assert all(k.startswith(module + ".") for k in stored)
    assert {v.dtype for v in stored.values()} == {torch.bfloat16}
    for k, v in state.items():
        if k not in FIXED_TABLES:
            assert torch.equal(stored[f"{module}.{k}"], v), k
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar == json.loads(json.dumps(info))
    assert sidecar["keys"] == len(stored) and sidecar["kind"] == kind
    from larp.files import sha256_file

    assert sidecar["source_sha256"] == sha256_file(repo / "model.safetensors")
    assert sidecar["source_config"]["bottleneck_token_num"] == TINY.tokenizer.num_tokens
    if kind == "tokenizer":
        checked = sidecar["verification"]["fixed_tables_checked_and_dropped"]
        assert set(checked) == set(FIXED_TABLES)
        assert all(c["max_abs_diff"] <= c["tolerance"] for c in checked.values())
        model = load_tokenizer(out, TINY)  # the pipeline's own loader, strict
        assert torch.equal(model.encoder_latent_query_embed, state["encoder_latent_query_embed"].float())
    elif kind == "ar":
        model = load_generator(out, TINY)
        assert torch.equal(model.abs_pe, state["abs_pe"].float())
    else:  # the frame-prediction stages load it with the frame-prediction parameters
        model = load_generator(out, frame_prediction_params(TINY))
        assert model.cfg.frame_prediction and model.cls_embedding is None
        assert torch.equal(model.tok_embeddings.weight, state["tok_embeddings.weight"].float())
        assert sidecar["hub_repo"] == "hywang66/LARP-L-long-AR-FP"


def test_cli_imports_the_fp_generator_and_names_a_wrong_kind(tmp_path, capsys):
    from larp.cli import main

    params = tmp_path / "params.yaml"
    params.write_text("dataset: embedded\npresets: {embedded: tiny}\n")
    repo = tmp_path / "ar-fp"
    repo.mkdir()
    save_file(random_official("ar-fp", TINY, seed=7), str(repo / "model.safetensors"))
    out = tmp_path / "released" / "ar-fp.safetensors"
    argv = ["import-weights", "--params", str(params), "--dataset", "embedded", "--src", str(repo), "--out", str(out)]
    assert main([*argv, "--kind", "ar-fp"]) == 0
    assert "loaded strictly into our ar-fp model" in capsys.readouterr().out
    assert load_generator(out, frame_prediction_params(TINY)).cfg.frame_prediction
    assert main([*argv, "--kind", "ar"]) == 2  # a bad input: one line, exit 2
    assert "is it --kind ar-fp" in capsys.readouterr().err
