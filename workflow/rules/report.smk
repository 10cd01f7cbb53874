# The run report: one offline HTML page (videos per class, training curves, FVDs, provenance), last of a run.
# It reads every protocol's result (dvc.yaml builds them all), so asking for it also asks for FP-FVD.


rule report:
    input:
        "data/frames/{dataset}",
        "checkpoints/{dataset}/tokenizer.safetensors",
        shard_dirs("data/samples/{dataset}"),
        "results/fvd_{dataset}.json",
        "results/rfvd_{dataset}.json",
        "results/fvd_{dataset}_fp.json",
        "results/{dataset}/tokenizer_metrics.csv",
        "results/{dataset}/ar_metrics.csv",
        "results/{dataset}/ar_fp_metrics.csv",
        code=stage_code("report"),
    output:
        report="results/report_{dataset}.html",
    params:
        tracked=tracked("report"),
    threads: stage_threads("fvd")  # the reconstructions run the tokenizer: an evaluation job's resources
    resources:
        **stage_resources("fvd"),
    log:
        "logs/report/{dataset}.log",
    shell:
        "larp report run --dataset {wildcards.dataset} --out {output.report} 2> {log}"
