"""What each pipeline stage reads: its parameter groups and the package code it runs, written once.

The Snakefile's rules take their tracked parameters and code inputs from :data:`STAGES`; dvc.yaml, which
cannot import Python, lists the same and tests/test_dag_parity.py holds the two equal; the training run keys
(what a resume must match) hash the groups listed here.

A stage of dataset ``d`` tracks, for each of its groups ``g``: ``g`` in params.yaml (the overrides) and ``g``
in ``d``'s preset file (the values), plus ``presets.d`` (which preset). Editing one preset value therefore
reruns exactly the stages that read its group, in both tools. ``{dataset}`` in a group or path stands for
the stage's dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PRESET_FILE = "src/larp/presets/{preset}.yaml"  # repo-relative: what the workflows track (larp.config reads it)


@dataclass(frozen=True)
class Reads:
    groups: tuple[str, ...]  # parameter groups the stage reads
    code: tuple[str, ...]  # repo paths of the package code that decides its outputs


_CLIPS = ("src/larp/data/clips.py", "src/larp/data/frames.py")  # reading clips from frame shards
_MODELS = ("src/larp/models",)  # the models, drawing tokens, loading their weights files
_SAMPLE = Reads(("data", "tokenizer", "generator", "sample", "fvd"),
                ("src/larp/sample.py", "src/larp/tokenize.py", "src/larp/eval/protocols.py", "src/larp/seeding.py",
                 "src/larp/visualize.py", "src/larp/data/tokens.py", *_MODELS, *_CLIPS))
_FVD_REAL = Reads(("data", "fvd"),
                  ("src/larp/fvd.py", "src/larp/eval", "src/larp/models/weights_io.py", *_CLIPS))
_FVD = Reads(("data", "sample", "fvd"), _FVD_REAL.code)
_TOKENIZE = ("src/larp/tokenize.py", "src/larp/data/tokens.py", *_MODELS, *_CLIPS)
_TRAIN_AR = ("src/larp/models", "src/larp/train", "src/larp/data/tokens.py", "src/larp/seeding.py",
             "src/larp/visualize.py")

STAGES: dict[str, Reads] = {
    "download": Reads(("{dataset}",), ("src/larp/data/{dataset}.py", "src/larp/data/index.py",
                                       "src/larp/data/archives.py")),
    "extract": Reads(("data", "storage.{dataset}"), ("src/larp/data",)),
    # the prior group (the tokenizer's training-time AR prior) is read by training alone: every later stage
    # loads the tokenizer without it; importing the released tokenizer maps the prior's weights too
    "train_tokenizer": Reads(("data", "tokenizer", "discriminator", "prior", "loss", "train_tokenizer"),
                             ("src/larp/models", "src/larp/train", "src/larp/losses.py", "src/larp/eval/metrics.py",
                              "src/larp/seeding.py", "src/larp/visualize.py", *_CLIPS)),
    "tokenize": Reads(("data", "tokenizer", "tokenize"), _TOKENIZE),
    "train_ar": Reads(("generator", "train_ar", "tokenizer"), _TRAIN_AR),
    "sample": _SAMPLE,
    "fvd_real": _FVD_REAL,  # the real clips' features: not rerun for new samples
    "fvd": _FVD,
    "rfvd": Reads(("data", "tokenizer", "fvd"),
                  ("src/larp/rfvd.py", "src/larp/fvd.py", "src/larp/eval", "src/larp/losses.py", *_MODELS, *_CLIPS)),
    # frame prediction: the same code, the frame-prediction groups
    "tokenize_fp": Reads(("data", "tokenizer", "tokenize", "generator"), _TOKENIZE),
    "train_ar_fp": Reads(("generator", "train_ar_fp", "tokenizer"), _TRAIN_AR),
    "sample_fp": _SAMPLE,
    "fvd_real_fp": _FVD_REAL,
    "fvd_fp": _FVD,
    # the run report: reconstructs a few test clips with the tokenizer, reads every result and curve
    "report": Reads(("data", "tokenizer"),
                    ("src/larp/report.py", "src/larp/run_report.py", "src/larp/html_page.py", "src/larp/visualize.py",
                     "src/larp/rfvd.py", "src/larp/fvd.py", "src/larp/eval", "src/larp/losses.py", *_MODELS,
                     *_CLIPS)),
    # the released checkpoints (Snakemake only): importing them; their sample/fvd/rfvd rules read as ours
    "import_released": Reads(("tokenizer", "prior", "generator"), ("src/larp/convert.py", "src/larp/models")),
}


def tracked_params(stage: str, dataset: str, preset: str) -> dict[str, list[str]]:
    """File -> keys that ``stage`` of ``dataset`` (whose preset is ``preset``) tracks, as dvc.yaml lists them."""
    groups = [g.format(dataset=dataset) for g in STAGES[stage].groups]
    return {"params.yaml": [f"presets.{dataset}", *groups], PRESET_FILE.format(preset=preset): groups}


def code(stage: str, dataset: str) -> list[str]:
    return [c.format(dataset=dataset) for c in STAGES[stage].code]


def code_files(stage: str, dataset: str, root: str | Path = ".") -> list[str]:
    """:func:`code` with each folder replaced by its Python files: Snakemake compares the modification time
    of an input folder itself, which editing a file inside does not change (DVC hashes folder contents)."""
    root = Path(root)
    out = []
    for c in code(stage, dataset):
        p = root / c
        out += sorted(str(f.relative_to(root)) for f in p.rglob("*.py")) if p.is_dir() else [c]
    return out
