rule download:
    input:
        code=stage_code("download"),
    output:
        directory("data/raw/{dataset}"),
    params:
        tracked=tracked("download"),
    threads: stage_threads("download")
    resources:
        **stage_resources("download"),
    log:
        "logs/download/{dataset}.log",
    shell:
        "larp download {wildcards.dataset} --out data/raw/{wildcards.dataset} 2> {log}"


rule extract:
    input:
        "data/raw/{dataset}",
        code=stage_code("extract"),
    output:
        directory("data/frames/{dataset}"),
    params:
        tracked=tracked("extract"),
    threads: stage_threads("extract")
    resources:
        **stage_resources("extract"),
    log:
        "logs/extract/{dataset}.log",
    shell:
        "larp extract --dataset {wildcards.dataset} --raw data/raw/{wildcards.dataset}"
        " --out data/frames/{wildcards.dataset} 2> {log}"
