# The evaluation protocols. frame_prediction.smk and released.smk reuse these rules (`use rule ... with:`)
# with other weights in and other files out; `fp` appends --fp for the frame-prediction variant.


rule sample:
    input:
        frames="data/frames/{dataset}",
        tokenizer="checkpoints/{dataset}/tokenizer.safetensors",
        ar="checkpoints/{dataset}/ar.safetensors",
        code=stage_code("sample"),
    output:
        samples=directory("data/samples/{dataset}/shard-{shard}"),
    params:
        fp=NO_FP,
        tracked=tracked("sample"),
    threads: stage_threads("sample")
    resources:
        **stage_resources("sample"),
    log:
        "logs/sample/{dataset}-{shard}.log",
    shell:
        "larp sample --dataset {wildcards.dataset} --frames {input.frames} --tokenizer {input.tokenizer}"
        " --ar {input.ar} --shard {wildcards.shard} --out {output.samples}{params.fp} 2> {log}"


rule fvd_real:
    input:
        frames="data/frames/{dataset}",
        code=stage_code("fvd_real"),
    output:
        real="data/fvd_real/{dataset}.npz",
    params:
        fp=NO_FP,
        tracked=tracked("fvd_real"),
    threads: stage_threads("fvd")
    resources:
        **stage_resources("fvd"),
    log:
        "logs/fvd_real/{dataset}.log",
    shell:
        "larp fvd-real --dataset {wildcards.dataset} --frames {input.frames} --out {output.real}{params.fp} 2> {log}"


rule fvd:
    input:
        frames="data/frames/{dataset}",
        real="data/fvd_real/{dataset}.npz",
        shards=shard_dirs("data/samples/{dataset}"),
        code=stage_code("fvd"),
    output:
        result="results/fvd_{dataset}.json",
    params:
        samples="data/samples/{dataset}",  # the shards' folder
        fp=NO_FP,
        tracked=tracked("fvd"),
    threads: stage_threads("fvd")
    resources:
        **stage_resources("fvd"),
    log:
        "logs/fvd/{dataset}.log",
    shell:
        "larp fvd --dataset {wildcards.dataset} --frames {input.frames} --samples {params.samples}"
        " --real {input.real} --out {output.result}{params.fp} 2> {log}"


rule rfvd:
    input:
        frames="data/frames/{dataset}",
        tokenizer="checkpoints/{dataset}/tokenizer.safetensors",
        code=stage_code("rfvd"),
    output:
        result="results/rfvd_{dataset}.json",
    params:
        tracked=tracked("rfvd"),
    threads: stage_threads("fvd")
    resources:
        **stage_resources("fvd"),
    log:
        "logs/rfvd/{dataset}.log",
    shell:
        "larp rfvd --dataset {wildcards.dataset} --frames {input.frames} --tokenizer {input.tokenizer}"
        " --out {output.result} 2> {log}"
