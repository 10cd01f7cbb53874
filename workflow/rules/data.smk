rule download:
    input:
        code=stage_code("download"),
    output:
        raw=directory("data/raw/{dataset}"),
    params:
        tracked=tracked("download"),
    threads: stage_threads("download")
    resources:
        **stage_resources("download"),
    log:
        "logs/download/{dataset}.log",
    shell:
        "larp download {wildcards.dataset} --out {output.raw} 2> {log}"


rule extract:
    input:
        raw="data/raw/{dataset}",
        code=stage_code("extract"),
    output:
        frames=directory("data/frames/{dataset}"),
    params:
        tracked=tracked("extract"),
    threads: stage_threads("extract")
    resources:
        **stage_resources("extract"),
    log:
        "logs/extract/{dataset}.log",
    shell:
        "larp extract --dataset {wildcards.dataset} --raw {input.raw} --out {output.frames} 2> {log}"
