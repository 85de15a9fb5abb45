# Validation, the run plan and the input functions every stage uses. Logic beyond lookups lives in
# geosem.studies (grid expansion, run ids, snapshots), which never imports snakemake.
import json

from snakemake.utils import validate

from geosem.studies import load_study, plan_runs


validate(config, "../schemas/config.schema.yaml")
for _study in config["studies"]:
    validate(
        load_study(config["study_dir"], _study),
        "../schemas/study.schema.yaml",
        set_default=False,
    )

PLAN = plan_runs(config)
RAW = config["raw_root"]
SHARDS = config["shards_root"]
RUNS = config["runs_root"]
RESULTS = config["results_root"]


wildcard_constraints:
    kind="pretrain|finetune",
    run_id="[A-Za-z0-9_.-]+",
    study="[A-Za-z0-9_.-]+",
    dataset="[A-Za-z0-9_]+",
    variant="[0-9]+x[0-9]+",


def _runs_of(kind):
    return PLAN.pretrain if kind == "pretrain" else PLAN.finetune


def get_snapshot(wildcards):
    """The snapshot as canonical JSON: a params value, so an edit reruns exactly this snapshot."""
    runs = _runs_of(wildcards.kind)
    if wildcards.run_id not in runs:
        raise ValueError(
            f"run {wildcards.kind}/{wildcards.run_id} is not in the plan of studies {config['studies']}"
        )
    return json.dumps(runs[wildcards.run_id], sort_keys=True)


def get_shard_spec(wildcards):
    key = f"{wildcards.dataset}/{wildcards.variant}"
    if key not in PLAN.shards:
        raise ValueError(f"shard set {key} is not planned; planned: {sorted(PLAN.shards)}")
    return PLAN.shards[key]


def get_pretrain_shards(wildcards):
    return PLAN.pretrain[wildcards.run_id]["data"]["shards"]


def get_finetune_shards(wildcards):
    return PLAN.finetune[wildcards.run_id]["data"]["shards"]


def get_init_checkpoint(wildcards):
    """The pre-trained model a fine-tune starts from; nothing for the random init."""
    init = PLAN.finetune[wildcards.run_id]["init"]
    return [init["checkpoint"]] if "checkpoint" in init else []


def get_study_runs(wildcards):
    return [f"{RUNS}/finetune/{run_id}" for run_id in PLAN.studies[wildcards.study]]


def get_study_run_files(wildcards):
    return [
        f"{run_dir}/{name}"
        for run_dir in get_study_runs(wildcards)
        for name in ("run.yaml", "metrics.json", "curves.csv")
    ]


def get_final_outputs():
    outputs = []
    for study in PLAN.studies:
        outputs += [
            f"{RESULTS}/tables/{study}.csv",
            f"{RESULTS}/tables/{study}.md",
            f"{RESULTS}/metrics/{study}.json",
            f"{RESULTS}/plots/{study}_curves.png",
        ]
    return outputs
