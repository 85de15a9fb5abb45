# Sources and shards: the synthetic worlds write the real datasets' layouts (one job per drive or per
# batch of rooms), and each dataset's real converter turns them into a verified shard set. Every world
# output is named by the world's declaration in geosem.worlds, which the dataset catalog reads too.


wildcard_constraints:
    date=r"\d{4}_\d{2}_\d{2}",
    drive=r"\d{4}_\d{2}_\d{2}_drive_\d{4}_sync",
    batch=r"\d+",


rule driving_calibration:
    output:
        [raw_path("synth_driving", path) for path in calib_files("{date}")],
    log:
        "logs/data/synth_driving/calibration_{date}.log",
    benchmark:
        f"{BENCHMARKS}/data/synth_driving/calibration_{{date}}.tsv"
    localrule: True
    conda:
        "../../envs/geosem.yaml"
    params:
        world=get_world_json("synth_driving"),
        root=get_dataset_root,
    shell:
        "geosem world-driving-calib --config {params.world:q} --date {wildcards.date}"
        " --root {params.root} > {log} 2>&1"


rule driving_drive:
    output:
        directory(raw_path("synth_driving", drive_dir("{date}", "{drive}"))),
    log:
        "logs/data/synth_driving/{date}/{drive}.log",
    benchmark:
        f"{BENCHMARKS}/data/synth_driving/{{date}}/{{drive}}.tsv"
    conda:
        "../../envs/geosem.yaml"
    resources:
        runtime=15,
    params:
        world=get_world_json("synth_driving"),
        root=get_dataset_root,
    shell:
        "geosem world-driving-drive --config {params.world:q} --drive {wildcards.drive}"
        " --root {params.root} > {log} 2>&1"


rule driving_semantics:
    input:
        # ancient: after `dvc pull` the drives carry new timestamps; that must not rerun the world.
        ancient(get_heldout_drives),
    output:
        directory(raw_path("synth_driving", DRIVING_SEMANTICS_FILES[0])),
        [raw_path("synth_driving", path) for path in DRIVING_SEMANTICS_FILES[1:]],
    log:
        "logs/data/synth_driving/semantics.log",
    benchmark:
        f"{BENCHMARKS}/data/synth_driving/semantics.tsv"
    conda:
        "../../envs/geosem.yaml"
    params:
        world=get_world_json("synth_driving"),
        root=get_dataset_root,
    shell:
        "geosem world-driving-semantics --config {params.world:q} --root {params.root} > {log} 2>&1"


rule indoor_batch:
    output:
        temp(f"{RAW}/{indoor_batch_file('{batch}')}"),
    log:
        "logs/data/synth_indoor/batch_{batch}.log",
    benchmark:
        f"{BENCHMARKS}/data/synth_indoor/batch_{{batch}}.tsv"
    conda:
        "../../envs/geosem.yaml"
    resources:
        runtime=15,
    params:
        world=get_world_json("synth_indoor"),
    shell:
        "geosem world-indoor-batch --config {params.world:q} --batch {wildcards.batch}"
        " --out {output} > {log} 2>&1"


rule indoor_files:
    input:
        ancient(get_indoor_batches),
    output:
        [raw_path("synth_indoor", path) for path in NYU_FILES],
    log:
        "logs/data/synth_indoor/files.log",
    benchmark:
        f"{BENCHMARKS}/data/synth_indoor/files.tsv"
    conda:
        "../../envs/geosem.yaml"
    params:
        world=get_world_json("synth_indoor"),
        root=get_dataset_root,
    shell:
        "geosem world-indoor-files --config {params.world:q} --root {params.root}"
        " --batches {input} > {log} 2>&1"


rule ade_world:
    output:
        directory(raw_path("synth_ade", ADE_FILES[0])),
        [raw_path("synth_ade", path) for path in ADE_FILES[1:]],
    log:
        "logs/data/synth_ade/world.log",
    benchmark:
        f"{BENCHMARKS}/data/synth_ade/world.tsv"
    conda:
        "../../envs/geosem.yaml"
    params:
        world=get_world_json("synth_ade"),
        root=get_dataset_root,
    shell:
        "geosem world-ade --config {params.world:q} --root {params.root} > {log} 2>&1"


rule sun_world:
    output:
        [directory(raw_path("synth_sun", path)) for path in SUN_FILES[:3]],
        [raw_path("synth_sun", path) for path in SUN_FILES[3:]],
    log:
        "logs/data/synth_sun/world.log",
    benchmark:
        f"{BENCHMARKS}/data/synth_sun/world.tsv"
    conda:
        "../../envs/geosem.yaml"
    params:
        world=get_world_json("synth_sun"),
        root=get_dataset_root,
    shell:
        "geosem world-sun --config {params.world:q} --root {params.root} > {log} 2>&1"


rule shards:
    input:
        # ancient: a pulled raw dataset is newer than its pulled shards; only a real change (a new
        # variant, a rerun world job) converts again.
        ancient(get_raw_files),
    output:
        directory(f"{SHARDS}/{{dataset}}/{{variant}}"),
    log:
        "logs/data/shards_{dataset}_{variant}.log",
    benchmark:
        f"{BENCHMARKS}/data/shards_{{dataset}}_{{variant}}.tsv"
    conda:
        "../../envs/geosem.yaml"
    resources:
        runtime=30,
    params:
        spec=get_shard_spec,
        raw=get_raw_dir,
    shell:
        "geosem convert --converter {params.spec[converter]} --dataset {wildcards.dataset}"
        " --raw {params.raw} --out {output} --height {params.spec[height]} --width {params.spec[width]}"
        " --samples-per-part {params.spec[samples_per_part]}"
        " --label-interpolation {params.spec[label_interpolation]} > {log} 2>&1"


rule run_snapshot:
    output:
        f"{RUNS}/{{kind}}/{{run_id}}/run.yaml",
    log:
        "logs/runs/{kind}/{run_id}.snapshot.log",
    localrule: True
    conda:
        "../../envs/geosem.yaml"
    params:
        snapshot=get_snapshot,
    shell:
        "geosem write-run --out {output} --json {params.snapshot:q} > {log} 2>&1"
