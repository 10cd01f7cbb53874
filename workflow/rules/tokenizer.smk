rule train_tokenizer:
    input:
        tokenizer_frames,
        code=stage_code("train_tokenizer"),
    output:
        # only the weights: Snakemake deletes a failed job's outputs, and the resume checkpoints
        # (checkpoints/<ds>/runs/) must survive a preemption so that the retried job continues
        "checkpoints/{dataset}/tokenizer.safetensors",
        "results/{dataset}/tokenizer_metrics.csv",
    params:
        tracked=tracked("train_tokenizer"),
    threads: stage_threads("train_tokenizer")
    resources:
        **stage_resources("train_tokenizer"),
    log:
        "logs/train_tokenizer/{dataset}.log",
    shell:
        "larp train-tokenizer --dataset {wildcards.dataset} --frames-root data/frames"
        " --out checkpoints/{wildcards.dataset}/tokenizer.safetensors"
        " --metrics results/{wildcards.dataset}/tokenizer_metrics.csv 2> {log}"


rule tokenize:
    input:
        "data/frames/{dataset}",
        "checkpoints/{dataset}/tokenizer.safetensors",
        code=stage_code("tokenize"),
    output:
        directory("data/tokens/{dataset}"),
    params:
        tracked=tracked("tokenize"),
    threads: stage_threads("tokenize")
    resources:
        **stage_resources("tokenize"),
    log:
        "logs/tokenize/{dataset}.log",
    shell:
        "larp tokenize --dataset {wildcards.dataset} --frames data/frames/{wildcards.dataset}"
        " --tokenizer checkpoints/{wildcards.dataset}/tokenizer.safetensors"
        " --out data/tokens/{wildcards.dataset} 2> {log}"
