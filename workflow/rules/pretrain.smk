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
        "exec geosem -v pretrain --run {input.run} --threads {threads} > {log} 2>&1"
