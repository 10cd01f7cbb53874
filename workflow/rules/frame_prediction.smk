# The frame-prediction variant (LARP-AR-FP): condition = the first generator.cond_frames frames, no CFG.
# Paper: trained and scored on Kinetics-600 (results/fvd_k600_fp.json); the embedded dataset runs it too.


rule tokenize_fp:
    input:
        "data/frames/{dataset}",
        "checkpoints/{dataset}/tokenizer.safetensors",
        code=stage_code("tokenize_fp"),
    output:
        directory("data/tokens_fp/{dataset}"),
    params:
        tracked=tracked("tokenize_fp"),
    threads: stage_threads("tokenize")
    resources:
        **stage_resources("tokenize"),
    log:
        "logs/tokenize_fp/{dataset}.log",
    shell:
        "larp tokenize --dataset {wildcards.dataset} --frames data/frames/{wildcards.dataset}"
        " --tokenizer checkpoints/{wildcards.dataset}/tokenizer.safetensors"
        " --out data/tokens_fp/{wildcards.dataset} --fp 2> {log}"


rule train_ar_fp:
    input:
        "data/tokens_fp/{dataset}",
        "checkpoints/{dataset}/tokenizer.safetensors",
        code=stage_code("train_ar_fp"),
    output:
        "checkpoints/{dataset}/ar_fp.safetensors",
        "results/{dataset}/ar_fp_metrics.csv",
    params:
        tracked=tracked("train_ar_fp"),
    threads: stage_threads("train_ar_fp")
    resources:
        **stage_resources("train_ar_fp"),
    log:
        "logs/train_ar_fp/{dataset}.log",
    shell:
        "larp train-ar --dataset {wildcards.dataset} --tokens data/tokens_fp/{wildcards.dataset}"
        " --tokenizer checkpoints/{wildcards.dataset}/tokenizer.safetensors"
        " --out checkpoints/{wildcards.dataset}/ar_fp.safetensors"
        " --metrics results/{wildcards.dataset}/ar_fp_metrics.csv --fp 2> {log}"


# sample_fp and fvd_fp name their inputs: released.smk reuses them for the released FP generator
rule sample_fp:
    input:
        frames="data/frames/{dataset}",
        tokenizer="checkpoints/{dataset}/tokenizer.safetensors",
        ar="checkpoints/{dataset}/ar_fp.safetensors",
        code=stage_code("sample_fp"),
    output:
        directory("data/samples_fp/{dataset}/shard-{shard}"),
    params:
        tracked=tracked("sample_fp"),
    threads: stage_threads("sample")
    resources:
        **stage_resources("sample"),
    log:
        "logs/sample_fp/{dataset}-{shard}.log",
    shell:
        "larp sample --dataset {wildcards.dataset} --frames {input.frames} --tokenizer {input.tokenizer}"
        " --ar {input.ar} --shard {wildcards.shard} --out {output} --fp 2> {log}"


rule fvd_real_fp:
    input:
        "data/frames/{dataset}",
        code=stage_code("fvd_real_fp"),
    output:
        "data/fvd_real/{dataset}_fp.npz",
    params:
        tracked=tracked("fvd_real_fp"),
    threads: stage_threads("fvd")
    resources:
        **stage_resources("fvd"),
    log:
        "logs/fvd_real_fp/{dataset}.log",
    shell:
        "larp fvd-real --dataset {wildcards.dataset} --frames data/frames/{wildcards.dataset}"
        " --out data/fvd_real/{wildcards.dataset}_fp.npz --fp 2> {log}"


rule fvd_fp:
    input:
        frames="data/frames/{dataset}",
        real="data/fvd_real/{dataset}_fp.npz",
        shards=sample_fp_shards,
        code=stage_code("fvd_fp"),
    output:
        "results/fvd_{dataset}_fp.json",
    params:
        samples="data/samples_fp/{dataset}",  # the shards' folder
        tracked=tracked("fvd_fp"),
    threads: stage_threads("fvd")
    resources:
        **stage_resources("fvd"),
    log:
        "logs/fvd_fp/{dataset}.log",
    shell:
        "larp fvd --dataset {wildcards.dataset} --frames {input.frames} --samples {params.samples}"
        " --real {input.real} --out {output} --fp 2> {log}"
