"""Parameters: presets, params.yaml overrides and strict validation."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml

from larp import config
from larp.config import ParamsError, load_params, preset, read_params_file

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, doc: dict) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_repo_params_file_is_valid_for_every_dataset():
    pf = read_params_file(ROOT / "params.yaml")
    assert pf.dataset == "embedded"
    tiny, paper = pf.resolve("embedded"), pf.resolve("ucf101")
    assert tiny.tokenizer.width < paper.tokenizer.width
    assert paper.prior.alpha == pytest.approx(0.06)


def test_paper_preset_matches_spec():
    p = preset("paper")
    t = p.tokenizer
    assert (t.patch_t, t.patch_hw, t.width, t.depth, t.heads, t.num_tokens) == (4, 8, 768, 12, 12, 1024)
    assert (t.code_dim, t.codebook_size, t.svq_temperature) == (16, 8192, 0.03)
    assert (p.prior.depth, p.prior.width, p.prior.heads, p.prior.max_len) == (12, 384, 6, 1024)
    d = p.discriminator
    assert (d.width, d.heads, d.depth) == (512, 8, 12)
    g = p.generator
    assert (g.depth, g.width, g.heads, g.ffn_hidden, g.seq_len, g.num_classes) == (30, 1280, 20, 3584, 1024, 101)
    assert (p.train_tokenizer.lr, p.train_tokenizer.d_lr, p.train_tokenizer.betas) == (1e-4, 3e-5, (0.5, 0.9))
    assert (p.train_tokenizer.global_batch, p.train_tokenizer.amp, p.train_tokenizer.warmup_epochs) == (128, "fp16", 8)
    a = p.train_ar
    assert (a.lr, a.betas, a.weight_decay, a.global_batch, a.amp, a.epochs) == (6e-4, (0.9, 0.95), 0.05, 64, "bf16", 3000)
    assert (p.sample.cfg_scale, p.fvd.num_clips, p.fvd.clip_seed, p.fvd.frames) == (1.25, 10000, 42, 16)
    assert p.prior.alpha == 0.06 and p.loss.gan_weight == 0.3 and p.loss.vq_weight == 0.1


def test_override_applies_to_every_dataset(tmp_path):
    p = write(tmp_path, {"prior": {"alpha": 0.1}, "sample": {"top_k": 50}})
    assert load_params(p, "embedded").prior.alpha == 0.1
    assert load_params(p, "ucf101").prior.alpha == 0.1
    assert load_params(p, "ucf101").sample.top_k == 50


@pytest.mark.parametrize("doc, key", [
    ({"prior": {"alpah": 0.1}}, "prior.alpah"),                       # typo
    ({"prior": {"alpha": -0.1}}, "prior.alpha"),                      # out of range
    ({"prior": {"alpha": "high"}}, "prior.alpha"),                    # wrong type
    ({"tokenizer": {"depth": 2.5}}, "tokenizer.depth"),               # float for int
    ({"train_tokenizer": {"compile": "yes"}}, "train_tokenizer.compile"),  # str for bool
    ({"train_tokenizer": {"amp": "fp8"}}, "train_tokenizer.amp"),     # not an allowed choice
    ({"train_ar": {"betas": [0.9]}}, "train_ar.betas"),               # wrong length
    ({"priors": {"alpha": 0.1}}, "priors"),                           # unknown group
    ({"dataset": "kinetics"}, "dataset"),
    ({"presets": {"embedded": "huge"}}, "presets.embedded"),
    ({"resources": {"train_ar": {"gpus": -1}}}, "resources.train_ar.gpus"),
    ({"tokenizer": {"codebook_size": 100000}}, "tokenizer.codebook_size"),
    ({"tokenizer": {"size": 64}}, "tokenizer.size"),                  # inconsistent with data.size
])
def test_bad_values_name_the_key(tmp_path, doc, key):
    with pytest.raises(ParamsError) as e:
        read_params_file(write(tmp_path, doc))
    assert str(e.value).startswith(key), str(e.value)


@pytest.mark.parametrize("doc, message", [
    ({"tokenizer": {"prior_depth": 2}}, "tokenizer.prior_depth: moved to prior.depth"),
    ({"tokenizer": {"use_prior": False}}, "tokenizer.use_prior: moved to prior.enabled"),
    ({"train_tokenizer": {"honor_prior_lr_mult": True}},
     "train_tokenizer.honor_prior_lr_mult: moved to prior.honor_lr_mult"),
    ({"train_ar": {"prior_lr_mult": 50.0}}, "train_ar.prior_lr_mult: removed, unused (the generator has no prior"),
    # every old key of a group at once, ahead of a plain typo
    ({"tokenizer": {"prior_xavier_init": True, "prior_attn_dropout_in_eval": True, "widht": 3}},
     "tokenizer.prior_attn_dropout_in_eval: moved to prior.attn_dropout_in_eval; "
     "tokenizer.prior_xavier_init: moved to prior.xavier_init"),
])
def test_keys_of_the_old_layout_say_where_they_went(tmp_path, doc, message):
    """The prior's settings moved into the one `prior` group; a params.yaml still using an old key is told."""
    with pytest.raises(ParamsError) as e:
        read_params_file(write(tmp_path, doc))
    assert str(e.value).startswith(message), str(e.value)


def test_prior_enabled_and_alpha_are_separate(tmp_path):
    p = load_params(write(tmp_path, {"prior": {"alpha": 0.0}}))
    assert p.prior.enabled and p.prior.alpha == 0.0  # alpha = 0 keeps the module (it weights the loss only)
    # the position table must cover the tokens, but only a prior that exists needs one
    with pytest.raises(ParamsError, match=r"^prior\.max_len: must be >= tokenizer\.num_tokens \(64\), got 32"):
        load_params(write(tmp_path, {"prior": {"max_len": 32}}))
    assert load_params(write(tmp_path, {"prior": {"enabled": False, "max_len": 32}})).prior.max_len == 32


def test_ints_accepted_for_floats_and_null_for_optionals(tmp_path):
    p = load_params(write(tmp_path, {"prior": {"alpha": 0}, "sample": {"top_p": None}}))
    assert isinstance(p.prior.alpha, float) and p.prior.alpha == 0.0
    assert p.sample.top_p is None


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_cli_refuses_bad_params_before_work(tmp_path, capsys):
    from larp.cli import main

    bad = write(tmp_path, {"prior": {"alpha": -1}})
    assert main(["extract", "--params", str(bad), "--dataset", "embedded", "--raw", str(tmp_path / "r"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "prior.alpha" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_tokenizer_data_mix_per_preset_and_the_dvc_dataset_list(tmp_path):
    from larp.config import tokenizer_datasets

    pf = read_params_file(ROOT / "params.yaml")
    assert pf.datasets == ("embedded",)
    # the paper preset trains the tokenizer on K600-train + UCF-101-train, as the released model; tiny: itself
    assert tokenizer_datasets(pf.resolve("ucf101"), "ucf101") == ("k600", "ucf101")
    assert tokenizer_datasets(pf.resolve("k600"), "k600") == ("k600", "ucf101")
    assert tokenizer_datasets(pf.resolve("embedded"), "embedded") == ("embedded",)
    # K600's frames are stored as JPEG (raw would be ~5 TB); the others exact
    assert [getattr(pf.resolve(d).storage, d).frame_format for d in ("k600", "ucf101", "embedded")] == [
        "jpeg", "raw", "raw"]
    # `datasets` (what dvc.yaml acquires) must be exactly the built dataset and its tokenizer's data
    ok = write(tmp_path, {"dataset": "ucf101", "datasets": ["ucf101", "k600"]})
    assert read_params_file(ok).datasets == ("ucf101", "k600")
    with pytest.raises(ParamsError, match=r"datasets: .*\['k600', 'ucf101'\]; got \['ucf101'\]"):
        read_params_file(write(tmp_path, {"dataset": "ucf101", "datasets": ["ucf101"]}))
    # no `datasets` key: derived
    assert read_params_file(write(tmp_path, {"dataset": "k600"})).datasets == ("k600", "ucf101")
    # an empty mix trains each tokenizer on its own dataset
    own = read_params_file(write(tmp_path, {"dataset": "ucf101", "data": {"tokenizer_datasets": []}}))
    assert own.datasets == ("ucf101",) and tokenizer_datasets(own.resolve("ucf101"), "ucf101") == ("ucf101",)


@pytest.mark.parametrize("doc, match", [
    ({"data": {"tokenizer_datasets": ["hmdb51"]}}, r"data.tokenizer_datasets: unknown datasets \['hmdb51'\]"),
    ({"data": {"tokenizer_datasets": ["ucf101", "ucf101"]}}, "data.tokenizer_datasets: lists a dataset twice"),
    # the tiny embedded frames (32 px) cannot feed a paper-size (128 px) tokenizer
    ({"data": {"tokenizer_datasets": ["embedded", "ucf101"]}}, r"'embedded' \(32px, 16 frames\) trains its "
                                                               r"tokenizer on 'ucf101', extracted at 128px"),
    ({"presets": {"ucf101": "paper"}, "dataset": "ucf101"}, r"presets.k600: no preset chosen for 'k600'"),
])
def test_bad_tokenizer_data_mix_is_refused_at_load(tmp_path, doc, match):
    with pytest.raises(ParamsError, match=match):
        read_params_file(write(tmp_path, doc))


# ---- hostile params.yaml (issue 18) ----


def test_empty_params_file_is_an_error_naming_it(tmp_path):
    p = tmp_path / "params.yaml"
    for text in ("", "# only a comment\n", "\n\n"):
        p.write_text(text)
        with pytest.raises(ParamsError, match=r"params\.yaml.*empty"):
            read_params_file(p)
    p.write_text("prior: {}\n")  # an intentionally empty override group stays valid
    assert read_params_file(p).resolve("embedded").prior.alpha == preset("tiny").prior.alpha


def error_of(tmp_path: Path, text: str) -> str:
    """The ParamsError message of a params.yaml holding ``text``; it must be one line naming the file."""
    p = tmp_path / "params.yaml"
    p.write_text(text)
    with pytest.raises(ParamsError) as e:
        read_params_file(p)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_duplicate_keys_rejected_with_both_lines(tmp_path):
    msg = error_of(tmp_path, "dataset: embedded\nprior:\n  alpha: 0.06\n  n_rounds: 2\n  alpha: 0.5\n")
    assert msg == f"{tmp_path / 'params.yaml'}: duplicate key 'alpha' on line 3 and line 5"
    assert "'prior' on line 1 and line 2" in error_of(tmp_path, "prior: {alpha: 0.1}\nprior: {alpha: 0.2}\n")
    # the same key in two mappings is no duplicate
    assert "loss.alpha: unknown key" in error_of(tmp_path, "prior: {alpha: 0.1}\nloss: {alpha: 0.2}\n")


@pytest.mark.parametrize("text", [".inf", "-.inf", ".nan", ".NaN", "1.0e+400"])
@pytest.mark.parametrize("key", ["prior.alpha", "train_tokenizer.lr", "tokenizer.svq_temperature",
                                 "loss.gan_weight", "sample.cfg_scale", "sample.temperature",
                                 "train_ar.betas"])
def test_every_float_must_be_finite(tmp_path, key, text):
    group, name = key.split(".")
    value = f"[0.9, {text}]" if name == "betas" else text
    msg = error_of(tmp_path, f"{group}:\n  {name}: {value}\n")
    assert re.match(rf"{group}\.{name}(\[1\])?: must be a finite number", msg), msg


@pytest.mark.parametrize("tp", [float, float | None, tuple[float, float], tuple[float, ...]])
def test_every_float_field_goes_through_the_finite_check(tp):
    """The check lives in the typed coercion, so no float field (present or future) escapes it."""
    from larp.config import _coerce

    for bad in (float("inf"), float("-inf"), float("nan")):
        with pytest.raises(ParamsError, match="finite"):
            _coerce((1.0, bad) if typing.get_origin(tp) is tuple else bad, tp, "k")


def test_yaml_syntax_error_is_one_line_with_file_line_column(tmp_path):
    msg = error_of(tmp_path, "dataset: embedded\nprior:\n  alpha: [0.1\n  n_rounds: 2\n")
    assert msg.startswith(f"{tmp_path / 'params.yaml'}: not valid YAML at line 4, column 11: ")


# --------------------------------------------------------------------------------------------------
# presets as data: src/larp/presets/<name>.yaml is the only place their values live


def _param_dataclasses() -> list[type]:
    seen, todo = [], [config.Params]
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.append(cls)
            todo += [tp for tp in typing.get_type_hints(cls).values() if dataclasses.is_dataclass(tp)]
    return seen


def test_dataclasses_have_no_defaults_to_drift_from_the_preset_files():
    classes = _param_dataclasses()
    assert len(classes) >= 15  # every group and sub-group
    with_default = [f"{c.__name__}.{f.name}" for c in classes for f in dataclasses.fields(c)
                    if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
    assert with_default == []


def test_preset_files_ship_inside_the_package():
    for name in config.PRESET_NAMES:
        path = config.preset_path(name)
        assert path == ROOT / "src" / "larp" / "presets" / f"{name}.yaml" and path.is_file()
    # a regular (non-editable) install copies them: setuptools package data
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"presets/*.yaml"' in pyproject


@pytest.fixture
def edited_tiny(tmp_path, monkeypatch):
    """``edit(fn)``: the presets read from a copy whose tiny.yaml groups ``fn`` changed."""
    def edit(fn) -> None:
        groups = yaml.safe_load(config.preset_path("tiny").read_text())
        fn(groups)
        (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(groups))
        (tmp_path / "paper.yaml").write_text(config.preset_path("paper").read_text())
        monkeypatch.setattr(config, "PRESETS_DIR", tmp_path)
        config._preset_groups.cache_clear()

    yield edit
    config._preset_groups.cache_clear()


@pytest.mark.parametrize("edit, match", [
    (lambda g: g["sample"].pop("cfg_scale"), r"tiny\.yaml: sample\.cfg_scale: missing key"),
    (lambda g: g.pop("fvd"), r"tiny\.yaml: fvd: missing key"),
    (lambda g: g["sample"].update(cfg_scael=1.0), r"tiny\.yaml: sample\.cfg_scael: unknown key"),
    (lambda g: g.update(sampel={}), r"tiny\.yaml: sampel: unknown key"),
    (lambda g: g["train_ar"].update(max_steps="300"), r"tiny\.yaml: train_ar\.max_steps: must be an integer"),
    (lambda g: g["sample"].update(dtype="fp8"), r"tiny\.yaml: sample\.dtype: must be one of"),
    (lambda g: g["prior"].update(alpha=-1), r"tiny\.yaml: prior\.alpha: must be >= 0"),
    (lambda g: g["prior"].update(heads=5), r"tiny\.yaml: prior\.width: must be divisible by prior\.heads"),
    (lambda g: g["tokenizer"].update(prior_depth=2), r"tiny\.yaml: tokenizer\.prior_depth: moved to prior\.depth"),
    (lambda g: g["generator"].update(seq_len=65), r"tiny\.yaml: generator\.seq_len: must equal tokenizer"),
])
def test_a_bad_preset_file_names_the_file_and_the_key(edited_tiny, edit, match):
    edited_tiny(edit)
    with pytest.raises(ParamsError, match=match):
        preset("tiny")


def test_a_preset_file_value_reaches_the_resolved_parameters(edited_tiny):
    edited_tiny(lambda g: g["sample"].update(batch_size=3))  # a key params.yaml does not override
    assert load_params(ROOT / "params.yaml", "embedded").sample.batch_size == 3


@pytest.mark.parametrize("doc, match", [
    ({"dataset": "embedded", "preset": "paper"}, r"preset: must be the preset of dataset='embedded'"),
    ({"dataset": "ucf101", "datasets": ["k600", "ucf101"], "presets": {"ucf101": "paper", "k600": "tiny"},
      "data": {"size": 128}, "tokenizer": {"size": 128}, "discriminator": {"size": 128}},
     r"preset: every dataset `dvc repro` builds must use the preset 'paper'"),
])
def test_the_dvc_preset_key_is_checked(tmp_path, doc, match):
    with pytest.raises(ParamsError, match=match):
        read_params_file(write(tmp_path, doc))


def test_the_dvc_preset_key_defaults_to_the_built_datasets():
    assert read_params_file(ROOT / "params.yaml").preset == "tiny"
