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


def released_resources(stage):
    r = getattr(resolved(RELEASED_DATASET).resources, stage)
    return dict(gpu=r.gpus, mem_mb=r.mem_mb, runtime=r.runtime)


def released_shards(wildcards):
    shards = resolved(RELEASED_DATASET).sample.shards
    return [f"data/samples/ucf101_released/shard-{k}" for k in shards]


rule import_released:
    input:
        released_input,
        code=stage_code("import_released"),
    output:
        "checkpoints/{dataset}/released/{kind}.safetensors",
        "checkpoints/{dataset}/released/{kind}.safetensors.json",
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
        " --out {output[0]} 2> {log}"


rule sample_released:
    input:
        "data/frames/ucf101",
        "checkpoints/ucf101/released/tokenizer.safetensors",
        "checkpoints/ucf101/released/ar.safetensors",
        code=stage_code("sample", dataset=RELEASED_DATASET),
    output:
        directory("data/samples/ucf101_released/shard-{shard}"),
    params:
        tracked=tracked("sample", dataset=RELEASED_DATASET),
    threads: resolved(RELEASED_DATASET).resources.sample.cpus
    resources:
        **released_resources("sample"),
    log:
        "logs/sample/ucf101_released-{shard}.log",
    shell:
        "larp sample --dataset ucf101 --frames data/frames/ucf101"
        " --tokenizer checkpoints/ucf101/released/tokenizer.safetensors"
        " --ar checkpoints/ucf101/released/ar.safetensors --shard {wildcards.shard}"
        " --out data/samples/ucf101_released/shard-{wildcards.shard} 2> {log}"


rule fvd_released:
    input:
        "data/frames/ucf101",
        "data/fvd_real/ucf101.npz",  # the protocol's real clips: the same as for our UCF-101 models
        released_shards,
        code=stage_code("fvd", dataset=RELEASED_DATASET),
    output:
        "results/fvd_ucf101_released.json",
    params:
        tracked=tracked("fvd", dataset=RELEASED_DATASET),
    threads: resolved(RELEASED_DATASET).resources.fvd.cpus
    resources:
        **released_resources("fvd"),
    log:
        "logs/fvd/ucf101_released.log",
    shell:
        "larp fvd --dataset ucf101 --frames data/frames/ucf101"
        " --samples data/samples/ucf101_released --real data/fvd_real/ucf101.npz"
        " --out results/fvd_ucf101_released.json 2> {log}"


rule rfvd_released:
    input:
        "data/frames/ucf101",
        "checkpoints/ucf101/released/tokenizer.safetensors",
        code=stage_code("rfvd", dataset=RELEASED_DATASET),
    output:
        "results/rfvd_ucf101_released.json",
    params:
        tracked=tracked("rfvd", dataset=RELEASED_DATASET),
    threads: resolved(RELEASED_DATASET).resources.fvd.cpus
    resources:
        **released_resources("fvd"),
    log:
        "logs/rfvd/ucf101_released.log",
    shell:
        "larp rfvd --dataset ucf101 --frames data/frames/ucf101"
        " --tokenizer checkpoints/ucf101/released/tokenizer.safetensors"
        " --out results/rfvd_ucf101_released.json 2> {log}"


# the frame-prediction protocol (FP-FVD, frame_prediction.smk) on the released FP generator: the same rules
# with the released weights in and their own sample folders out
use rule sample_fp as sample_fp_released with:
    input:
        frames="data/frames/{dataset}",
        tokenizer="checkpoints/{dataset}/released/tokenizer.safetensors",
        ar="checkpoints/{dataset}/released/ar-fp.safetensors",
        code=stage_code("sample_fp"),
    output:
        directory("data/samples_fp_released/{dataset}/shard-{shard}"),
    log:
        "logs/sample_fp/{dataset}_released-{shard}.log",


use rule fvd_fp as fvd_fp_released with:
    input:
        frames="data/frames/{dataset}",
        real="data/fvd_real/{dataset}_fp.npz",  # the protocol's real clips: the same as for our FP models
        shards=shard_dirs("data/samples_fp_released/{dataset}"),
        code=stage_code("fvd_fp"),
    output:
        "results/fvd_{dataset}_fp_released.json",
    params:
        samples="data/samples_fp_released/{dataset}",
        tracked=tracked("fvd_fp"),
    log:
        "logs/fvd_fp/{dataset}_released.log",
