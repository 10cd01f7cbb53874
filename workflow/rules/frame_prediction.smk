# The frame-prediction variant (LARP-AR-FP): condition = the first generator.cond_frames frames, no CFG.
# Paper: trained and scored on Kinetics-600 (results/fvd_k600_fp.json); the embedded dataset runs it too.


rule tokenize_fp:
    input:
        "data/frames/{dataset}",
        "checkpoints/{dataset}/tokenizer.safetensors",
        "src/larp/tokenize.py",
    output:
        directory("data/tokens_fp/{dataset}"),
    params:
        tracked=tracked("presets.{dataset}", "data", "tokenizer", "prior", "tokenize", "generator"),
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
        "src/larp/models",
        "src/larp/train",
    output:
        "checkpoints/{dataset}/ar_fp.safetensors",
        "results/{dataset}/ar_fp_metrics.csv",
    params:
        tracked=tracked("presets.{dataset}", "generator", "train_ar_fp", "tokenizer", "prior"),
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
        code=["src/larp/sample.py", "src/larp/evaluate.py"],
    output:
        directory("data/samples_fp/{dataset}/shard-{shard}"),
    params:
        tracked=tracked("presets.{dataset}", "data", "tokenizer", "prior", "generator", "sample", "fvd"),
    threads: stage_threads("sample")
    resources:
        **stage_resources("sample"),
    log:
        "logs/sample_fp/{dataset}-{shard}.log",
    shell:
        "larp sample --dataset {wildcards.dataset} --frames {input.frames} --tokenizer {input.tokenizer}"
        " --ar {input.ar} --shard {wildcards.shard} --out {output} --fp 2> {log}"


rule fvd_fp:
    input:
        frames="data/frames/{dataset}",
        shards=sample_fp_shards,
        code=["src/larp/eval", "src/larp/evaluate.py"],
    output:
        "results/fvd_{dataset}_fp.json",
    params:
        samples="data/samples_fp/{dataset}",  # the shards' folder
        tracked=tracked("presets.{dataset}", "data", "sample", "fvd"),
    threads: stage_threads("fvd")
    resources:
        **stage_resources("fvd"),
    log:
        "logs/fvd_fp/{dataset}.log",
    shell:
        "larp fvd --dataset {wildcards.dataset} --frames {input.frames} --samples {params.samples}"
        " --out {output} --fp 2> {log}"
