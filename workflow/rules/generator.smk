# train_ar_fp (frame_prediction.smk) reuses this rule with --fp
rule train_ar:
    input:
        tokens="data/tokens/{dataset}",
        tokenizer="checkpoints/{dataset}/tokenizer.safetensors",
        code=stage_code("train_ar"),
    output:
        weights="checkpoints/{dataset}/ar.safetensors",
        metrics="results/{dataset}/ar_metrics.csv",
    params:
        fp=NO_FP,
        tracked=tracked("train_ar"),
    threads: stage_threads("train_ar")
    resources:
        **stage_resources("train_ar"),
    log:
        "logs/train_ar/{dataset}.log",
    shell:
        "larp train-ar --dataset {wildcards.dataset} --tokens {input.tokens} --tokenizer {input.tokenizer}"
        " --out {output.weights} --metrics {output.metrics}{params.fp} 2> {log}"
