"""dvc.yaml and the Snakefile describe the same stages: commands, inputs, outputs and parameters."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from dag import compare, copy_project, dvc_stages, snakemake_jobs

from larp.pipeline import STAGES, code, code_files, tracked_params

ROOT = Path(__file__).resolve().parents[1]


def _targets(stages: dict[str, dict]) -> list[str]:
    return sorted({o for st in stages.values() for o in st["outs"]})


def test_dvc_and_snakemake_describe_the_same_pipeline():
    dvc = dvc_stages(ROOT)
    assert set(dvc) == {"download@embedded", "extract@embedded", "train_tokenizer", "tokenize", "train_ar", "sample@0", "sample@1",
                        "fvd_real", "fvd", "rfvd", "tokenize_fp", "train_ar_fp", "sample_fp@0", "sample_fp@1",
                        "fvd_real_fp", "fvd_fp", "report"}
    smk = snakemake_jobs(ROOT, _targets(dvc))
    assert compare(dvc, smk) == []


def _copy_repo(tmp_path: Path) -> Path:
    dst = copy_project(tmp_path / "repo", ("Snakefile", "dvc.yaml", "params.yaml", "workflow", "src", ".dvc",
                                            ".dvcignore"))
    subprocess.run(["git", "init", "-q", str(dst)], check=True)  # DVC needs a git work tree
    return dst


@pytest.mark.parametrize("path, old, new, field", [
    ("workflow/rules/data.smk", "--out {output.frames} 2>", "--out {output.frames} --fast 2>", "extract@embedded.cmd"),
    ("workflow/rules/frame_prediction.smk", "tracked=tracked(\"train_ar_fp\")", "tracked=tracked(\"train_ar\")",
     "train_ar_fp.params"),  # a reused rule keeps its own stage's parameters...
    ("workflow/rules/frame_prediction.smk", "fp=FP,\n        tracked=tracked(\"sample_fp\")",
     "fp=NO_FP,\n        tracked=tracked(\"sample_fp\")", "sample_fp@0.cmd"),  # ... and its --fp
    ("dvc.yaml", "        - storage.${item}\n", "", "extract@embedded.params"),  # dropped from params.yaml keys
    ("dvc.yaml", "            - storage.${item}\n", "", "extract@embedded.params"),  # ... from the preset file's
    ("dvc.yaml", "        - src/larp/data\n", "", "extract@embedded.deps"),
    ("dvc.yaml", "        - src/larp/models\n", "", "sample@0.deps"),  # sampling runs the models
])
def test_parity_check_catches_drift(tmp_path, path, old, new, field):
    repo = _copy_repo(tmp_path)
    f = repo / path
    text = f.read_text()
    assert text.count(old) >= 1, old
    f.write_text(text.replace(old, new, 1))
    dvc = dvc_stages(repo)
    diffs = compare(dvc, snakemake_jobs(repo, _targets(dvc)))
    assert any(d.startswith(field) for d in diffs), diffs


def test_dvc_yaml_lists_what_the_stage_table_says():
    # the Snakefile takes tracked params and code from larp.pipeline.STAGES; dvc.yaml must list the same
    for name, st in dvc_stages(ROOT).items():
        stage, _, item = name.partition("@")
        dataset = item if stage in ("download", "extract") else "embedded"
        want = {(k if f == "params.yaml" else f"{f}:{k}") for f, keys in tracked_params(stage, dataset, "tiny").items()
                for k in keys}
        assert st["params"] == want, name
        assert {d for d in st["deps"] if d.startswith("src/")} == set(code_files(stage, dataset, ROOT)), name


def test_every_code_path_of_the_stage_table_exists():
    for stage in STAGES:
        for dataset in ("embedded", "ucf101", "k600"):
            for path in code(stage, dataset):
                assert (ROOT / path).exists(), (stage, path)


def test_the_paper_data_mix_is_the_same_pipeline_for_both_tools(tmp_path):
    # dataset ucf101 with the paper preset: the tokenizer trains on K600-train + UCF-101-train, so both tools
    # download and extract both datasets and feed both frame directories to train_tokenizer
    repo = _copy_repo(tmp_path)
    params = repo / "params.yaml"
    text = params.read_text()
    params.write_text(text.replace("dataset: embedded ", "dataset: ucf101 ").replace(
        "datasets: [embedded] ", "datasets: [k600, ucf101] ").replace("preset: tiny ", "preset: paper "))
    dvc = dvc_stages(repo)
    assert {"download@k600", "download@ucf101", "extract@k600", "extract@ucf101"} <= set(dvc)
    assert {"data/frames/k600", "data/frames/ucf101"} <= dvc["train_tokenizer"]["deps"]
    assert "--frames-root data/frames" in dvc["train_tokenizer"]["cmd"]
    assert compare(dvc, snakemake_jobs(repo, _targets(dvc))) == []


def test_released_fp_target_runs_the_fp_rules_on_the_released_weights():
    # Snakemake-only: results/fvd_k600_fp_released.json = the FP-FVD rules (frame_prediction.smk) reused with
    # the imported hywang66/LARP-L-long-AR-FP and the released tokenizer
    jobs = snakemake_jobs(ROOT, ["results/fvd_k600_fp_released.json"])
    assert {"sample_fp_released@0", "sample_fp_released@1", "fvd_fp_released", "import_released"} <= set(jobs)
    assert jobs["fvd_fp_released"]["cmd"] == (
        "larp fvd --dataset k600 --frames data/frames/k600 --samples data/samples_fp_released/k600"
        " --real data/fvd_real/k600_fp.npz --out results/fvd_k600_fp_released.json --fp")
    assert jobs["sample_fp_released@1"]["cmd"] == (
        "larp sample --dataset k600 --frames data/frames/k600"
        " --tokenizer checkpoints/k600/released/tokenizer.safetensors"
        " --ar checkpoints/k600/released/ar-fp.safetensors --shard 1 --out data/samples_fp_released/k600/shard-1 --fp")
    # the same protocol as the trained model's FP-FVD: same tracked parameters, same commands up to the paths
    trained = snakemake_jobs(ROOT, ["results/fvd_k600_fp.json"])
    for name in ("fvd_fp", "sample_fp@1"):
        released = jobs[name.replace("_fp", "_fp_released")]
        assert released["params"] == trained[name]["params"]
        cmd = released["cmd"]
        for a, b in (("samples_fp_released", "samples_fp"), ("released/ar-fp", "ar_fp"), ("released/", ""),
                     ("_fp_released", "_fp")):
            cmd = cmd.replace(a, b)
        assert cmd == trained[name]["cmd"]
    imports = snakemake_jobs(ROOT, ["checkpoints/k600/released/ar-fp.safetensors"])["import_released"]
    assert imports["cmd"] == ("larp import-weights --dataset k600 --kind ar-fp --src hf:hywang66/LARP-L-long-AR-FP"
                              " --out checkpoints/k600/released/ar-fp.safetensors")
    assert imports["params"] == {"presets.k600", *[f"{f}{g}" for g in ("tokenizer", "prior", "generator")
                                                   for f in ("", "src/larp/presets/paper.yaml:")]}
