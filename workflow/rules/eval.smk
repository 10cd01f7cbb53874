rule sample:
    input:
        "data/frames/{dataset}",
        "checkpoints/{dataset}/tokenizer.safetensors",
        "checkpoints/{dataset}/ar.safetensors",
        code=stage_code("sample"),
    output:
        directory("data/samples/{dataset}/shard-{shard}"),
    params:
        tracked=tracked("sample"),
    threads: stage_threads("sample")
    resources:
        **stage_resources("sample"),
    log:
        "logs/sample/{dataset}-{shard}.log",
    shell:
        "larp sample --dataset {wildcards.dataset} --frames data/frames/{wildcards.dataset}"
        " --tokenizer checkpoints/{wildcards.dataset}/tokenizer.safetensors"
        " --ar checkpoints/{wildcards.dataset}/ar.safetensors --shard {wildcards.shard}"
        " --out data/samples/{wildcards.dataset}/shard-{wildcards.shard} 2> {log}"


rule fvd_real:
    input:
        "data/frames/{dataset}",
        code=stage_code("fvd_real"),
    output:
        "data/fvd_real/{dataset}.npz",
    params:
        tracked=tracked("fvd_real"),
    threads: stage_threads("fvd")
    resources:
        **stage_resources("fvd"),
    log:
        "logs/fvd_real/{dataset}.log",
    shell:
        "larp fvd-real --dataset {wildcards.dataset} --frames data/frames/{wildcards.dataset}"
        " --out data/fvd_real/{wildcards.dataset}.npz 2> {log}"


rule fvd:
    input:
        "data/frames/{dataset}",
        "data/fvd_real/{dataset}.npz",
        sample_shards,
        code=stage_code("fvd"),
    output:
        "results/fvd_{dataset}.json",
    params:
        tracked=tracked("fvd"),
    threads: stage_threads("fvd")
    resources:
        **stage_resources("fvd"),
    log:
        "logs/fvd/{dataset}.log",
    shell:
        "larp fvd --dataset {wildcards.dataset} --frames data/frames/{wildcards.dataset}"
        " --samples data/samples/{wildcards.dataset} --real data/fvd_real/{wildcards.dataset}.npz"
        " --out results/fvd_{wildcards.dataset}.json 2> {log}"


rule rfvd:
    input:
        "data/frames/{dataset}",
        "checkpoints/{dataset}/tokenizer.safetensors",
        code=stage_code("rfvd"),
    output:
        "results/rfvd_{dataset}.json",
    params:
        tracked=tracked("rfvd"),
    threads: stage_threads("fvd")
    resources:
        **stage_resources("fvd"),
    log:
        "logs/rfvd/{dataset}.log",
    shell:
        "larp rfvd --dataset {wildcards.dataset} --frames data/frames/{wildcards.dataset}"
        " --tokenizer checkpoints/{wildcards.dataset}/tokenizer.safetensors"
        " --out results/rfvd_{wildcards.dataset}.json 2> {log}"
