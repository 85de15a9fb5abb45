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
    conda:
        "../../envs/geosem.yaml"
    threads: config["compute"]["train_threads"]
    # Partition, account, QoS and constraint come from the profile or the environment, never from here.
    # The time limit grows with the attempt; SLURM's SIGTERM ahead of it (to the job step, not the batch
    # shell) makes the trainer checkpoint and exit 75, and the profile's retries resume it.
    resources:
        gpu=config["compute"]["gpus"],
        cpus_per_gpu=lambda wildcards, threads: -(-threads // max(1, config["compute"]["gpus"])),
        mem_mb=config["compute"]["train_mem_mb"] * max(1, config["compute"]["gpus"]),
        runtime=lambda wildcards, attempt: config["compute"]["train_runtime"] * attempt,
        slurm_extra=lambda wildcards, attempt: (
            f"--signal=TERM@{min(300, 15 * config['compute']['train_runtime'] * attempt)}"
        ),
    # exec: without it bash stays between Snakemake and the trainer (the log redirection stops its
    # exec optimisation) and a SIGTERM kills bash before the trainer has saved its checkpoint.
    shell:
        "exec geosem -v finetune --run {input.run} --threads {threads} > {log} 2>&1"
