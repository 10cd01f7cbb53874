rule train_tokenizer:
    input:
        frames=tokenizer_frames,
        code=stage_code("train_tokenizer"),
    output:
        # only the weights: Snakemake deletes a failed job's outputs, and the resume checkpoints
        # (checkpoints/<ds>/runs/) must survive a preemption so that the retried job continues
        weights="checkpoints/{dataset}/tokenizer.safetensors",
        metrics="results/{dataset}/tokenizer_metrics.csv",
    params:
        frames_root="data/frames",  # the command reads data/frames/<name> of each input above
        tracked=tracked("train_tokenizer"),
    threads: stage_threads("train_tokenizer")
    resources:
        **stage_resources("train_tokenizer"),
    log:
        "logs/train_tokenizer/{dataset}.log",
    shell:
        "larp train-tokenizer --dataset {wildcards.dataset} --frames-root {params.frames_root}"
        " --out {output.weights} --metrics {output.metrics} 2> {log}"


# tokenize_fp (frame_prediction.smk) reuses this rule with --fp
rule tokenize:
    input:
        frames="data/frames/{dataset}",
        tokenizer="checkpoints/{dataset}/tokenizer.safetensors",
        code=stage_code("tokenize"),
    output:
        tokens=directory("data/tokens/{dataset}"),
    params:
        fp=NO_FP,
        tracked=tracked("tokenize"),
    threads: stage_threads("tokenize")
    resources:
        **stage_resources("tokenize"),
    log:
        "logs/tokenize/{dataset}.log",
    shell:
        "larp tokenize --dataset {wildcards.dataset} --frames {input.frames} --tokenizer {input.tokenizer}"
        " --out {output.tokens}{params.fp} 2> {log}"
