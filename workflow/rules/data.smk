# Sources and shards: the synthetic worlds write the real datasets' layouts (one job per drive or per
# batch of rooms), and each dataset's real converter turns them into a verified shard set.


wildcard_constraints:
    date=r"\d{4}_\d{2}_\d{2}",
    drive=r"\d{4}_\d{2}_\d{2}_drive_\d{4}_sync",
    batch=r"\d+",


rule driving_calibration:
    output:
        expand(f"{RAW}/synth_driving/raw_data/{{{{date}}}}/{{name}}", name=CALIB_FILES),
    log:
        "logs/data/synth_driving/calibration_{date}.log",
    conda:
        "../../envs/geosem.yaml"
    params:
        world=get_world_json("driving"),
        root=lambda wildcards, output: parent_of(output[0], 3),
    localrule: True
    shell:
        "python -m geosem.sources driving-calib --config {params.world:q} --date {wildcards.date}"
        " --root {params.root} > {log} 2>&1"


rule driving_drive:
    output:
        directory(f"{RAW}/synth_driving/raw_data/{{date}}/{{drive}}"),
    log:
        "logs/data/synth_driving/{date}/{drive}.log",
    conda:
        "../../envs/geosem.yaml"
    params:
        world=get_world_json("driving"),
        root=lambda wildcards, output: parent_of(output[0], 3),
    resources:
        runtime=15,
    shell:
        "python -m geosem.sources driving-drive --config {params.world:q} --drive {wildcards.drive}"
        " --root {params.root} > {log} 2>&1"


rule driving_semantics:
    input:
        # ancient: after `dvc pull` the drives carry new timestamps; that must not rerun the world.
        ancient(get_heldout_drives),
    output:
        directory(f"{RAW}/synth_driving/data_semantics"),
        f"{RAW}/synth_driving/devkit/mapping/train_mapping.txt",
        f"{RAW}/synth_driving/geosem_world.json",
    log:
        "logs/data/synth_driving/semantics.log",
    conda:
        "../../envs/geosem.yaml"
    params:
        world=get_world_json("driving"),
        root=lambda wildcards, output: parent_of(output[0]),
    shell:
        "python -m geosem.sources driving-semantics --config {params.world:q} --root {params.root} > {log} 2>&1"


rule indoor_batch:
    output:
        temp(f"{RAW}/synth_indoor_batches/batch_{{batch}}.h5"),
    log:
        "logs/data/synth_indoor/batch_{batch}.log",
    conda:
        "../../envs/geosem.yaml"
    params:
        world=get_world_json("indoor"),
    resources:
        runtime=15,
    shell:
        "python -m geosem.sources indoor-batch --config {params.world:q} --batch {wildcards.batch}"
        " --out {output} > {log} 2>&1"


rule indoor_files:
    input:
        ancient(get_indoor_batches),
    output:
        expand(f"{RAW}/synth_indoor/{{name}}", name=NYU_FILES),
    log:
        "logs/data/synth_indoor/files.log",
    conda:
        "../../envs/geosem.yaml"
    params:
        world=get_world_json("indoor"),
        root=lambda wildcards, output: parent_of(output[0]),
    shell:
        "python -m geosem.sources indoor-files --config {params.world:q} --root {params.root}"
        " --batches {input} > {log} 2>&1"


rule ade_world:
    output:
        directory(f"{RAW}/synth_ade/ADEChallengeData2016"),
        f"{RAW}/synth_ade/geosem_world.json",
    log:
        "logs/data/synth_ade/world.log",
    conda:
        "../../envs/geosem.yaml"
    params:
        world=get_world_json("ade"),
        root=lambda wildcards, output: parent_of(output[0]),
    shell:
        "python -m geosem.sources ade --config {params.world:q} --root {params.root} > {log} 2>&1"


rule sun_world:
    output:
        directory(f"{RAW}/synth_sun/SUNRGBD-test_images"),
        directory(f"{RAW}/synth_sun/SUNRGBD-train_images"),
        directory(f"{RAW}/synth_sun/sunrgbd_train_test_labels"),
        f"{RAW}/synth_sun/geosem_world.json",
    log:
        "logs/data/synth_sun/world.log",
    conda:
        "../../envs/geosem.yaml"
    params:
        world=get_world_json("sun"),
        root=lambda wildcards, output: parent_of(output[0]),
    shell:
        "python -m geosem.sources sun --config {params.world:q} --root {params.root} > {log} 2>&1"


rule shards:
    input:
        # ancient: a pulled raw dataset is newer than its pulled shards; only a real change (a new
        # variant, a rerun world job) converts again.
        ancient(get_raw_files),
    output:
        directory(f"{SHARDS}/{{dataset}}/{{variant}}"),
    log:
        "logs/data/shards_{dataset}_{variant}.log",
    conda:
        "../../envs/geosem.yaml"
    params:
        spec=get_shard_spec,
        raw=lambda wildcards: f"{RAW}/{wildcards.dataset}",
    resources:
        runtime=30,
    shell:
        "python -m geosem.sources convert --converter {params.spec[converter]} --dataset {wildcards.dataset}"
        " --raw {params.raw} --out {output} --height {params.spec[height]} --width {params.spec[width]}"
        " --samples-per-part {params.spec[samples_per_part]}"
        " --label-interpolation {params.spec[label_interpolation]} > {log} 2>&1"


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
