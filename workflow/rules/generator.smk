rule train_ar:
    input:
        "data/tokens/{dataset}",
        "checkpoints/{dataset}/tokenizer.safetensors",
        code=stage_code("train_ar"),
    output:
        "checkpoints/{dataset}/ar.safetensors",
        "results/{dataset}/ar_metrics.csv",
    params:
        tracked=tracked("train_ar"),
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
