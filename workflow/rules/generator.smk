rule train_ar:
    input:
        "data/tokens/{dataset}",
        "checkpoints/{dataset}/tokenizer.safetensors",
        "src/larp/models",
        "src/larp/train",
    output:
        "checkpoints/{dataset}/ar.safetensors",
        "results/{dataset}/ar_metrics.csv",
    params:
        tracked=tracked("presets.{dataset}", "generator", "train_ar", "tokenizer", "prior"),
    threads: stage_threads("train_ar")
    resources:
        **stage_resources("train_ar"),
    log:
        "logs/train_ar/{dataset}.log",
    shell:
        "larp train-ar --dataset {wildcards.dataset} --tokens data/tokens/{wildcards.dataset}"
        " --tokenizer checkpoints/{wildcards.dataset}/tokenizer.safetensors"
        " --out checkpoints/{wildcards.dataset}/ar.safetensors"
        " --metrics results/{wildcards.dataset}/ar_metrics.csv 2> {log}"
