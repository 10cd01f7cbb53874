# LARP pipeline. Thin rules: each calls one `larp <stage>` command; the decisions live in the package.
# dvc.yaml describes the same stages (tests/test_dag_parity.py keeps the two equal).
#   snakemake --cores 2                                   # embedded dataset, local (ends with
#                                                         # results/report_embedded.html)
#   snakemake --profile slurm results/fvd_ucf101.json    # UCF-101 on a SLURM cluster

from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/tokenizer.smk"
include: "workflow/rules/generator.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/frame_prediction.smk"
include: "workflow/rules/released.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        default_targets(),
    default_target: True
