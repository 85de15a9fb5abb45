# Fine-tuning for semantic segmentation: every init x mode x encoder x N x seed row of the plan.


rule finetune:
    input:
        run=f"{RUNS}/finetune/{{run_id}}/run.yaml",
        shards=ancient(get_finetune_shards),
        init=get_init_checkpoint,
    output:
        model=f"{RUNS}/finetune/{{run_id}}/model.pt",
        metrics=f"{RUNS}/finetune/{{run_id}}/metrics.json",
        curves=f"{RUNS}/finetune/{{run_id}}/curves.csv",
    log:
        "logs/finetune/{run_id}.log",
    benchmark:
        f"{BENCHMARKS}/finetune/{{run_id}}.tsv"
    conda:
        "../../envs/geosem.yaml"
    threads: TRAIN_THREADS
    resources:
        **TRAIN_RESOURCES,  # common.smk: GPUs, memory, time limit and SIGTERM lead, shared by every trainer
    # exec: without it bash stays between Snakemake and the trainer (the log redirection stops its
    # exec optimisation) and a SIGTERM kills bash before the trainer has saved its checkpoint.
    shell:
        "exec geosem -v finetune --run {input.run} --threads {threads} > {log} 2>&1"
