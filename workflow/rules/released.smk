# Score the authors' released checkpoints with our protocol, skipping training (Snakemake-only targets;
# dvc.yaml builds the configured dataset's own pipeline):
#   snakemake --profile slurm results/fvd_ucf101_released.json results/rfvd_ucf101_released.json
#   snakemake --profile slurm results/fvd_k600_fp_released.json     # the frame-prediction generator
# The weights come from the Hugging Face hub. Offline, download them first (model.safetensors + config.json):
#   hf download hywang66/LARP-L-long-tokenizer --local-dir data/released/tokenizer
#   hf download hywang66/LARP-L-long-AR --local-dir data/released/ar
#   hf download hywang66/LARP-L-long-AR-FP --local-dir data/released/ar-fp
# When data/released/<kind> exists it is the source; otherwise `larp import-weights` fetches hf:<repo>.
# Each dataset gets its own import (checkpoints/<dataset>/released/), converted with that dataset's params.
import os

RELEASED_DATASET = "ucf101"  # the class-conditional released models are the paper-size UCF-101 ones
RELEASED_REPOS = {
    "tokenizer": "hywang66/LARP-L-long-tokenizer",
    "ar": "hywang66/LARP-L-long-AR",
    "ar-fp": "hywang66/LARP-L-long-AR-FP",
}


def released_source(wildcards):
    local = f"data/released/{wildcards.kind}"
    return local if os.path.isdir(local) else f"hf:{RELEASED_REPOS[wildcards.kind]}"


def released_input(wildcards):
    src = released_source(wildcards)
    return [] if src.startswith("hf:") else [src]


rule import_released:
    input:
        released_input,
        code=stage_code("import_released"),
    output:
        weights="checkpoints/{dataset}/released/{kind}.safetensors",
        provenance="checkpoints/{dataset}/released/{kind}.safetensors.json",
    wildcard_constraints:
        dataset="ucf101|k600",  # the released tokenizer serves both; the generators: ar UCF-101, ar-fp K600
        kind="|".join(RELEASED_REPOS),
    params:
        src=released_source,
        tracked=tracked("import_released"),
    threads: 1
    resources:
        gpu=0,
        mem_mb=12000,  # the AR checkpoint is 2.5 GB of float32, held twice at most
        runtime=60,
    log:
        "logs/import_released/{dataset}-{kind}.log",
    shell:
        "larp import-weights --dataset {wildcards.dataset} --kind {wildcards.kind} --src {params.src}"
        " --out {output.weights} 2> {log}"


# the class-conditional protocols (eval.smk) on the released UCF-101 models: the same rules with the released
# weights in and their own files out
use rule sample as sample_released with:
    input:
        frames="data/frames/{dataset}",
        tokenizer="checkpoints/{dataset}/released/tokenizer.safetensors",
        ar="checkpoints/{dataset}/released/ar.safetensors",
        code=stage_code("sample"),
    output:
        samples=directory("data/samples/{dataset}_released/shard-{shard}"),
    wildcard_constraints:
        dataset=RELEASED_DATASET,
    log:
        "logs/sample/{dataset}_released-{shard}.log",


use rule fvd as fvd_released with:
    input:
        frames="data/frames/{dataset}",
        real="data/fvd_real/{dataset}.npz",  # the protocol's real clips: the same as for our UCF-101 models
        shards=shard_dirs("data/samples/{dataset}_released"),
        code=stage_code("fvd"),
    output:
        result="results/fvd_{dataset}_released.json",
    wildcard_constraints:
        dataset=RELEASED_DATASET,
    params:
        samples="data/samples/{dataset}_released",
    log:
        "logs/fvd/{dataset}_released.log",


use rule rfvd as rfvd_released with:
    input:
        frames="data/frames/{dataset}",
        tokenizer="checkpoints/{dataset}/released/tokenizer.safetensors",
        code=stage_code("rfvd"),
    output:
        result="results/rfvd_{dataset}_released.json",
    wildcard_constraints:
        dataset=RELEASED_DATASET,
    log:
        "logs/rfvd/{dataset}_released.log",


# the frame-prediction protocol (FP-FVD, frame_prediction.smk) on the released FP generator: the same rules
# with the released weights in and their own sample folders out
use rule sample_fp as sample_fp_released with:
    input:
        frames="data/frames/{dataset}",
        tokenizer="checkpoints/{dataset}/released/tokenizer.safetensors",
        ar="checkpoints/{dataset}/released/ar-fp.safetensors",
        code=stage_code("sample_fp"),
    output:
        samples=directory("data/samples_fp_released/{dataset}/shard-{shard}"),
    log:
        "logs/sample_fp/{dataset}_released-{shard}.log",


use rule fvd_fp as fvd_fp_released with:
    input:
        frames="data/frames/{dataset}",
        real="data/fvd_real/{dataset}_fp.npz",  # the protocol's real clips: the same as for our FP models
        shards=shard_dirs("data/samples_fp_released/{dataset}"),
        code=stage_code("fvd_fp"),
    output:
        result="results/fvd_{dataset}_fp_released.json",
    params:
        samples="data/samples_fp_released/{dataset}",
    log:
        "logs/fvd_fp/{dataset}_released.log",
