# Fine-tuning for semantic segmentation: every init x mode x encoder x N x seed row of the plan.


rule finetune:
    input:
        run=f"{RUNS}/finetune/{{run_id}}/run.yaml",
        shards=get_finetune_shards,
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
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "geosem -v finetune --run {input.run} --threads {threads} > {log} 2>&1"
