# Shared helpers: resolved parameters, what each stage reads (larp.pipeline), resources per preset.
import functools

from larp.config import DATASETS, read_params_file, read_preset_file, tokenizer_datasets
from larp.pipeline import code_files, tracked_params

PARAMS_FILE = read_params_file("params.yaml")  # validated here: a bad key fails at parse time


wildcard_constraints:
    dataset="|".join(DATASETS),


@functools.cache
def resolved(dataset):
    return PARAMS_FILE.resolve(dataset)


def _lookup(cfg, dotted):
    for k in dotted.split("."):
        cfg = cfg[k]
    return cfg


@functools.cache
def preset_groups(path):
    return read_preset_file(path)


def tracked(stage):
    """Rule params = the values the stage reads (larp.pipeline.STAGES): its groups in params.yaml and in the
    dataset's preset file, and the preset's name; dvc.yaml tracks the same keys. Snakemake reruns a rule when
    one of these values changes, as DVC does.
    """

    def values(wildcards):
        files = tracked_params(stage, wildcards.dataset, PARAMS_FILE.presets[wildcards.dataset])
        return {
            (k if f == "params.yaml" else f"{f}:{k}"): _lookup(config if f == "params.yaml" else preset_groups(f), k)
            for f, keys in files.items()
            for k in keys
        }

    return values


def stage_code(stage):
    """The package code a stage runs (larp.pipeline.STAGES): inputs, so that a change reruns it."""
    return lambda wildcards: code_files(stage, wildcards.dataset)


def stage_resources(stage):
    """SLURM resources of a stage from the dataset's preset (params.yaml `resources`).

    The slurm plugin's `gpu` becomes sbatch --gpus, a count for the whole job; a job over several `nodes`
    asks for its GPUs per node instead (`gres`: --gres=gpu:N is per node), as SLURM gives them.
    """

    def get(name):
        return lambda wildcards: getattr(getattr(resolved(wildcards.dataset).resources, stage), name)

    def one_node(wildcards):
        return getattr(resolved(wildcards.dataset).resources, stage).nodes == 1

    return dict(
        gpu=lambda wildcards: get("gpus")(wildcards) if one_node(wildcards) else 0,
        gres=lambda wildcards: "" if one_node(wildcards) else f"gpu:{get('gpus')(wildcards)}",
        nodes=get("nodes"),
        mem_mb=get("mem_mb"),
        runtime=get("runtime"),
    )


def stage_threads(stage):
    return lambda wildcards: getattr(resolved(wildcards.dataset).resources, stage).cpus


wildcard_constraints:
    shard=r"\d+",


def tokenizer_frames(wildcards):
    """Frames of every dataset the tokenizer of {dataset} trains on (data.tokenizer_datasets)."""
    names = tokenizer_datasets(resolved(wildcards.dataset), wildcards.dataset)
    return [f"data/frames/{name}" for name in names]


def shard_dirs(root):
    """Input function: every sampling shard (sample.shards of the dataset's resolved parameters) under
    ``root`` (formatted with the dataset)."""

    def dirs(wildcards):
        shards = resolved(wildcards.dataset).sample.shards
        return [f"{root.format(dataset=wildcards.dataset)}/shard-{k}" for k in shards]

    return dirs


# `params.fp` of the rules that the frame-prediction rules reuse: appended to the command
NO_FP = ""
FP = " --fp"


# What the default target (`snakemake` with no target) evaluates for each dataset: the paper's protocols
# (UCF-101: class-conditional gFVD + rFVD; K600: frame-prediction FP-FVD); embedded: every protocol and the
# run report, to prove the whole chain. Any result file can still be asked for by name.
DEFAULT_RESULTS = {
    "embedded": ("fvd_{ds}.json", "rfvd_{ds}.json", "fvd_{ds}_fp.json", "report_{ds}.html"),
    "ucf101": ("fvd_{ds}.json", "rfvd_{ds}.json"),
    "k600": ("fvd_{ds}_fp.json",),
}


def default_targets():
    ds = config.get("dataset", "embedded")
    return [f"results/{name.format(ds=ds)}" for name in DEFAULT_RESULTS[ds]]
