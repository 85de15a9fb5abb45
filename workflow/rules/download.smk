# Dataset archives (docs/downloads.md): one download job per archive, then one extraction job per archive,
# both calling the `geosem` CLI. Only real datasets whose raw tree is missing are planned (common.smk's
# DOWNLOAD_PLAN), so a run on the embedded worlds, or on a tree brought by hand, has none of these jobs.
#
# A download's declared output is its receipt (<file>.verified.json, written once the checksum matched),
# not the archive: Snakemake deletes the outputs of a job it reruns, and a new mirror must not cost a
# second 175 GB download, only a re-check. Downloads run on the submitting host (localrule): compute nodes
# often have no internet; the `downloads` resource in both profiles bounds how many run at once.


rule download_archive:
    output:
        get_download_receipt("{dataset}", "{file}"),
    log:
        "logs/downloads/{dataset}/{file}.log",
    benchmark:
        f"{BENCHMARKS}/downloads/{{dataset}}/{{file}}.tsv"
    wildcard_constraints:
        dataset=get_download_pattern("dataset"),
        file=get_download_pattern("file"),
    localrule: True
    conda:
        "../../envs/geosem.yaml"
    resources:
        downloads=1,
    params:
        registry=DOWNLOAD_SETTINGS["registry"],
        lock=DOWNLOAD_SETTINGS["lock"],
        downloads=get_download_dir,
        sources=get_download_source_flags,
        retries=DOWNLOAD_SETTINGS["retries"],
    shell:
        "geosem download --registry {params.registry:q} --lock {params.lock:q} --downloads {params.downloads:q}"
        " --dataset {wildcards.dataset} --file {wildcards.file:q} {params.sources}"
        " --retries {params.retries} > {log} 2>&1"


# Archives whose paths no conversion names directly (KITTI's drives, Cityscapes' right images, ...): the
# marker file is the output. The anchors below wait for these.
rule extract_archive:
    input:
        get_extract_receipt,
    output:
        get_extract_marker("{dataset}", "{file}"),
    log:
        "logs/downloads/{dataset}/{file}.extract.log",
    benchmark:
        f"{BENCHMARKS}/downloads/{{dataset}}/{{file}}.extract.tsv"
    wildcard_constraints:
        dataset=get_download_pattern("dataset"),
        file=get_download_pattern("file", anchors=False),
    conda:
        "../../envs/geosem.yaml"
    resources:
        runtime=240,
    params:
        registry=DOWNLOAD_SETTINGS["registry"],
        downloads=get_extract_downloads,
        root=get_extract_root,
    shell:
        "geosem extract --registry {params.registry:q} --downloads {params.downloads:q}"
        " --dataset {wildcards.dataset} --file {wildcards.file:q} --root {params.root:q} > {log} 2>&1"


# Anchors: the extraction of each archive that provides a path the dataset's converter reads, one rule
# per archive because their outputs (exactly those paths, folders or files) differ from one to the next.
for _planned in DOWNLOAD_PLAN.anchors:

    rule:
        name:
            get_anchor_rule_name(_planned)
        input:
            get_anchor_inputs(_planned),
        output:
            get_anchor_outputs(_planned),
        log:
            f"logs/downloads/{_planned.archive.dataset}/{_planned.archive.file}.extract.log",
        benchmark:
            f"{BENCHMARKS}/downloads/{_planned.archive.dataset}/{_planned.archive.file}.extract.tsv"
        conda:
            "../../envs/geosem.yaml"
        resources:
            runtime=240,
        params:
            registry=DOWNLOAD_SETTINGS["registry"],
            downloads=get_extract_downloads,
            dataset=_planned.archive.dataset,
            file=_planned.archive.file,
            root=get_anchor_root(_planned),
        shell:
            "geosem extract --registry {params.registry:q} --downloads {params.downloads:q}"
            " --dataset {params.dataset} --file {params.file:q} --root {params.root:q} > {log} 2>&1"


# `snakemake downloads`: fetch and extract everything planned, convert nothing.
rule downloads:
    input:
        get_download_targets(),
    localrule: True
