# Pre-training: one job per pre-trained init; its model is shared by every fine-tune that uses it.
# Declared outputs are final artefacts only; checkpoint.pt beside them survives a failed or killed job.


rule pretrain:
    input:
        run=f"{RUNS}/pretrain/{{run_id}}/run.yaml",
        shards=ancient(get_pretrain_shards),  # pulled shards keep their runs (versioning.smk)
    output:
        model=f"{RUNS}/pretrain/{{run_id}}/model.pt",
        metrics=f"{RUNS}/pretrain/{{run_id}}/metrics.json",
        curves=f"{RUNS}/pretrain/{{run_id}}/curves.csv",
    log:
        "logs/pretrain/{run_id}.log",
    benchmark:
        f"{BENCHMARKS}/pretrain/{{run_id}}.tsv"
    conda:
        "../../envs/geosem.yaml"
    threads: TRAIN_THREADS
    resources:
        **TRAIN_RESOURCES,  # common.smk: GPUs, memory, time limit and SIGTERM lead, shared by every trainer
    # exec: without it bash stays between Snakemake and the trainer (the log redirection stops its
    # exec optimisation) and a SIGTERM kills bash before the trainer has saved its checkpoint.
    shell:
        "exec geosem -v pretrain --run {input.run} --threads {threads} > {log} 2>&1"
