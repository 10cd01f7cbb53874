# The frame-prediction variant (LARP-AR-FP): condition = the first generator.cond_frames frames, no CFG.
# Paper: trained and scored on Kinetics-600 (results/fvd_k600_fp.json); the embedded dataset runs it too.
# Each rule is the class-conditional one (tokenizer.smk, generator.smk, eval.smk) with --fp, its own stage's
# parameters and code, and its own files.


use rule tokenize as tokenize_fp with:
    input:
        frames="data/frames/{dataset}",
        tokenizer="checkpoints/{dataset}/tokenizer.safetensors",
        code=stage_code("tokenize_fp"),
    output:
        tokens=directory("data/tokens_fp/{dataset}"),
    params:
        fp=FP,
        tracked=tracked("tokenize_fp"),
    log:
        "logs/tokenize_fp/{dataset}.log",


use rule train_ar as train_ar_fp with:
    input:
        tokens="data/tokens_fp/{dataset}",
        tokenizer="checkpoints/{dataset}/tokenizer.safetensors",
        code=stage_code("train_ar_fp"),
    output:
        weights="checkpoints/{dataset}/ar_fp.safetensors",
        metrics="results/{dataset}/ar_fp_metrics.csv",
    params:
        fp=FP,
        tracked=tracked("train_ar_fp"),
    threads: stage_threads("train_ar_fp")
    resources:
        **stage_resources("train_ar_fp"),
    log:
        "logs/train_ar_fp/{dataset}.log",


use rule sample as sample_fp with:
    input:
        frames="data/frames/{dataset}",
        tokenizer="checkpoints/{dataset}/tokenizer.safetensors",
        ar="checkpoints/{dataset}/ar_fp.safetensors",
        code=stage_code("sample_fp"),
    output:
        samples=directory("data/samples_fp/{dataset}/shard-{shard}"),
    params:
        fp=FP,
        tracked=tracked("sample_fp"),
    log:
        "logs/sample_fp/{dataset}-{shard}.log",


use rule fvd_real as fvd_real_fp with:
    input:
        frames="data/frames/{dataset}",
        code=stage_code("fvd_real_fp"),
    output:
        real="data/fvd_real/{dataset}_fp.npz",
    params:
        fp=FP,
        tracked=tracked("fvd_real_fp"),
    log:
        "logs/fvd_real_fp/{dataset}.log",


use rule fvd as fvd_fp with:
    input:
        frames="data/frames/{dataset}",
        real="data/fvd_real/{dataset}_fp.npz",
        shards=shard_dirs("data/samples_fp/{dataset}"),
        code=stage_code("fvd_fp"),
    output:
        result="results/fvd_{dataset}_fp.json",
    params:
        samples="data/samples_fp/{dataset}",
        fp=FP,
        tracked=tracked("fvd_fp"),
    log:
        "logs/fvd_fp/{dataset}.log",
