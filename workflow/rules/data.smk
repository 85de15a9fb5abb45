# Sources and shards: raw datasets (here the synthetic world) -> verified shard sets.


rule world:
    output:
        directory(f"{RAW}/synth_driving"),
    log:
        "logs/data/world.log",
    conda:
        "../../envs/geosem.yaml"
    params:
        seed=config["world"]["seed"],
        sequences=config["world"]["sequences"],
        frames=config["world"]["frames"],
        height=config["world"]["height"],
        width=config["world"]["width"],
    resources:
        runtime=30,
    shell:
        "geosem world --out {output} --seed {params.seed} --sequences {params.sequences}"
        " --frames {params.frames} --height {params.height} --width {params.width} > {log} 2>&1"


rule shards:
    input:
        raw=f"{RAW}/{{dataset}}",
    output:
        directory(f"{SHARDS}/{{dataset}}/{{variant}}"),
    log:
        "logs/data/shards_{dataset}_{variant}.log",
    conda:
        "../../envs/geosem.yaml"
    params:
        spec=get_shard_spec,
    resources:
        runtime=30,
    shell:
        "geosem convert --dataset {wildcards.dataset} --raw {input.raw} --out {output}"
        " --height {params.spec[height]} --width {params.spec[width]}"
        " --test-sequences {params.spec[test_sequences]}"
        " --samples-per-part {params.spec[samples_per_part]} > {log} 2>&1"


rule run_snapshot:
    output:
        f"{RUNS}/{{kind}}/{{run_id}}/run.yaml",
    log:
        "logs/runs/{kind}/{run_id}.snapshot.log",
    conda:
        "../../envs/geosem.yaml"
    params:
        snapshot=get_snapshot,
    localrule: True
    shell:
        "geosem write-run --out {output} --json {params.snapshot:q} > {log} 2>&1"
