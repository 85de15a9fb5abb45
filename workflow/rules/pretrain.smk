# Pre-training: one job per pre-trained init; its model is shared by every fine-tune that uses it.
# Declared outputs are final artefacts only; checkpoint.pt beside them survives a failed or killed job.


rule pretrain:
    input:
        run=f"{RUNS}/pretrain/{{run_id}}/run.yaml",
        shards=get_pretrain_shards,
    output:
        model=f"{RUNS}/pretrain/{{run_id}}/model.pt",
        metrics=f"{RUNS}/pretrain/{{run_id}}/metrics.json",
        curves=f"{RUNS}/pretrain/{{run_id}}/curves.csv",
    log:
        "logs/pretrain/{run_id}.log",
    conda:
        "../../envs/geosem.yaml"
    threads: config["compute"]["train_threads"]
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "geosem -v pretrain --run {input.run} --threads {threads} > {log} 2>&1"
