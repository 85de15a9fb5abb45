# Dataset versioning: every raw dataset and shard set the run builds is added to DVC (one job, because DVC
# locks its repository per command); the .dvc files it writes are what a user commits to git. The inputs
# are ancient(): after `dvc pull` on a fresh clone the data carries new timestamps, and that alone must not
# make DVC re-add it, nor (see data.smk, pretrain.smk, finetune.smk) make Snakemake convert or train again.


rule version_data:
    input:
        raw=ancient(get_versioned_raw_files()),
        shards=ancient(get_versioned_shards()),
    output:
        [f"{path}.dvc" for path in get_versioned_paths()],
    log:
        "logs/data/version_data.log",
    localrule: True
    conda:
        "../../envs/geosem.yaml"
    params:
        paths=get_versioned_paths(),
        push=get_push_flag(),
        remote=get_remote_flag(),
    shell:
        "geosem version add {params.paths} {params.push} {params.remote} > {log} 2>&1"
