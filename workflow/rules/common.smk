# Validation, the run plan and the input functions every stage uses. Logic beyond lookups lives in
# geosem.studies (grid expansion, run ids), geosem.snapshot (the run snapshot) and the dataset catalog,
# which never import snakemake.
import json
import os
import re

from snakemake.utils import validate

from geosem.snapshot import VARIANT_PATTERN, snapshot_json
from geosem.sources.catalog import raw_files
from geosem.studies import plan_runs
from geosem.studies.plan import check_study_file
from geosem.worlds import (
    ADE_FILES,
    DRIVING_SEMANTICS_FILES,
    NYU_FILES,
    SUN_FILES,
    calib_files,
    drive_dir,
    driving_drives,
    get_world,
    indoor_batch_file,
    indoor_batches,
)

validate(config, "../schemas/config.schema.yaml")
# Not snakemake's validate: its message names neither the study file nor the key (geosem.studies.plan).
for _study in config["studies"]:
    check_study_file(config["study_dir"], _study, workflow.source_path("../schemas/study.schema.yaml"))

PLAN = plan_runs(config)
RAW = config["raw_root"]
SHARDS = config["shards_root"]
RUNS = config["runs_root"]
RESULTS = config["results_root"]
# Resource usage of every heavy job (snakemake's benchmark: files), one TSV per job.
BENCHMARKS = "logs/benchmarks"


wildcard_constraints:
    kind="pretrain|finetune|auxdepth",
    run_id="[A-Za-z0-9_.-]+",
    study="[A-Za-z0-9_.-]+",
    dataset="[A-Za-z0-9_]+",
    variant=VARIANT_PATTERN,


def raw_path(dataset, relative):
    """A path under a dataset's raw folder; the world rules name their outputs through the world's own
    declarations (geosem.worlds), which the catalog reads too, so rules and catalog cannot disagree."""
    return f"{RAW}/{dataset}/{relative}"


def _runs_of(kind):
    return {"pretrain": PLAN.pretrain, "finetune": PLAN.finetune, "auxdepth": PLAN.auxdepth}[kind]


def get_snapshot(wildcards):
    """The snapshot as canonical JSON: a params value, so an edit reruns exactly this snapshot."""
    runs = _runs_of(wildcards.kind)
    if wildcards.run_id not in runs:
        raise ValueError(
            f"run {wildcards.kind}/{wildcards.run_id} is not in the plan of studies {config['studies']}"
        )
    return snapshot_json(runs[wildcards.run_id])


def get_shard_spec(wildcards):
    key = f"{wildcards.dataset}/{wildcards.variant}"
    if key not in PLAN.shards:
        raise ValueError(f"shard set {key} is not planned; planned: {sorted(PLAN.shards)}")
    return PLAN.shards[key]


def get_raw_dir(wildcards):
    return f"{RAW}/{wildcards.dataset}"


def get_dataset_root(wildcards, output):
    """The raw dataset folder (raw/<dataset>) a world job's first output lies in: inferred from the output,
    so that it holds where jobs see another filesystem root than the login node."""
    relative = os.path.relpath(output[0], RAW)
    return os.path.join(RAW, relative.split(os.sep)[0])


def get_world_json(dataset):
    """The config (seed included) of the world that writes ``dataset``, as canonical JSON: a params value,
    so an edit of that world reruns its jobs and nothing else."""
    return json.dumps(get_world(dataset).config(config["world"]), sort_keys=True)


def get_raw_files(wildcards):
    """What the conversion of a dataset reads: the files its world jobs write (or a real raw folder)."""
    return raw_files(wildcards.dataset, config["world"], RAW)


def get_heldout_drives(wildcards):
    return [
        raw_path("synth_driving", drive_dir(date, name))
        for date, name, heldout in driving_drives(config["world"])
        if heldout
    ]


def get_indoor_batches(wildcards):
    return [f"{RAW}/{indoor_batch_file(k)}" for k in range(indoor_batches(config["world"]))]


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


def get_study_pretrain_runs(wildcards):
    """The pre-training run directories a study's fine-tunes start from (each once, in plan order)."""
    run_ids = [PLAN.finetune[run_id]["init"].get("run_id") for run_id in PLAN.studies[wildcards.study]]
    return [f"{RUNS}/pretrain/{run_id}" for run_id in dict.fromkeys(r for r in run_ids if r)]


def get_study_pretrain_files(wildcards):
    # curves.csv: the pre-training table's scores against step and its curves figure.
    return [
        f"{run_dir}/{name}"
        for run_dir in get_study_pretrain_runs(wildcards)
        for name in ("run.yaml", "metrics.json", "curves.csv")
    ]


def get_push_flag():
    return "--push" if config["versioning"]["push"] else ""


def get_remote_flag():
    remote = config["versioning"]["remote"]
    return f"--remote {remote}" if remote else ""


def get_versioned_raw_files():
    """The raw files of every planned dataset (world outputs, or a downloaded folder)."""
    datasets = dict.fromkeys(spec["dataset"] for spec in PLAN.shards.values())
    return [path for dataset in datasets for path in raw_files(dataset, config["world"], RAW)]


def get_versioned_shards():
    return [f"{SHARDS}/{key}" for key in PLAN.shards]


def get_versioned_paths():
    """What DVC tracks: each planned dataset's raw folder and each planned shard set."""
    datasets = dict.fromkeys(spec["dataset"] for spec in PLAN.shards.values())
    return [f"{RAW}/{dataset}" for dataset in datasets] + get_versioned_shards()


def get_study_figures(wildcards):
    return PLAN.figures[wildcards.study]


def get_study_unavailable_json(wildcards):
    """Rows the study cannot run here (missing weights), for the table: canonical JSON, a params value."""
    return json.dumps(PLAN.unavailable[wildcards.study], sort_keys=True)


def get_study_labels_json(wildcards):
    return json.dumps(PLAN.figures[wildcards.study]["labels"], sort_keys=True)


def get_gradcam_runs(wildcards):
    gradcam = PLAN.figures[wildcards.study]["gradcam"]
    if gradcam is None:
        raise ValueError(f"study {wildcards.study!r} asks for no Grad-CAM figure")
    return [f"{RUNS}/finetune/{run_id}" for run_id in gradcam["runs"]]


def get_gradcam_images(wildcards):
    return get_study_figures(wildcards)["gradcam"]["images"]


def get_gradcam_files(wildcards):
    return [
        f"{run_dir}/{name}" for run_dir in get_gradcam_runs(wildcards) for name in ("run.yaml", "model.pt")
    ]


# One definition of a training job's resources, shared by every training rule. Partition, account, QoS and
# constraint come from the profile or the environment, never from here. The time limit grows with the
# attempt; SLURM's SIGTERM ahead of it (to the job step, not the batch shell) makes the trainer save a
# checkpoint and exit 75, and the profile's retries resume it.
def get_train_cpus_per_gpu(wildcards, threads):
    return -(-threads // max(1, config["compute"]["gpus"]))


def get_train_runtime(wildcards, attempt):
    return config["compute"]["train_runtime"] * attempt


def get_train_slurm_extra(wildcards, attempt):
    return f"--signal=TERM@{min(300, 15 * get_train_runtime(wildcards, attempt))}"


TRAIN_RESOURCES = {
    "gpu": config["compute"]["gpus"],
    "cpus_per_gpu": get_train_cpus_per_gpu,
    "mem_mb": config["compute"]["train_mem_mb"] * max(1, config["compute"]["gpus"]),
    "runtime": get_train_runtime,
    "slurm_extra": get_train_slurm_extra,
}
TRAIN_THREADS = config["compute"]["train_threads"]


def get_study_outputs(study):
    """Everything one study produces: table, metrics, curves and the figures its file asks for."""
    outputs = [
        f"{RESULTS}/tables/{study}.csv",
        f"{RESULTS}/tables/{study}.md",
        f"{RESULTS}/metrics/{study}",
        f"{RESULTS}/plots/{study}_curves.png",
    ]
    figures = PLAN.figures[study]
    for kind in ("sizes", "resolution"):
        if kind in figures["plots"]:
            outputs.append(f"{RESULTS}/plots/{study}_{kind}.png")
    if figures["gradcam"] is not None:
        outputs.append(f"{RESULTS}/figures/{study}_gradcam.png")
    return outputs


# Study B (auxdepth.smk; docs/study-b.md): its runs (PLAN.auxdepth) and tables (PLAN.auxdepth_studies) are
# apart from study A's, and each aggregation rule takes only its own studies' names.
STUDY_A_PATTERN = "|".join(re.escape(name) for name in PLAN.studies) or "(?!)"
STUDY_B_PATTERN = "|".join(re.escape(name) for name in PLAN.auxdepth_studies) or "(?!)"
AUXDEPTH_SWEEPS = ("fig1", "fig3", "fig4", "fig5")  # layouts with a sweep plot beside the table


def get_auxdepth_shards(wildcards):
    run = PLAN.auxdepth[wildcards.run_id]
    return [run["depth"]["shards"], *(entry["shards"] for entry in run["aux"]["datasets"])]


def get_auxdepth_backbone(wildcards):
    """The backbone's pre-training when the pipeline trains it (a file from elsewhere is no job's)."""
    weights = PLAN.auxdepth[wildcards.run_id]["backbone"]["weights"]
    return [weights] if weights.startswith(f"{RUNS}/pretrain/") else []


def get_auxdepth_study_runs(wildcards):
    return [f"{RUNS}/auxdepth/{run_id}" for run_id in PLAN.auxdepth_studies[wildcards.study]["runs"]]


def get_auxdepth_study_files(wildcards):
    return [
        f"{run}/{name}" for run in get_auxdepth_study_runs(wildcards) for name in ("run.yaml", "metrics.json")
    ]


def get_auxdepth_spec_json(wildcards):
    """The table's layout, labels, MIX6 and rows, and the rows that cannot run here: a params value."""
    spec = {k: v for k, v in PLAN.auxdepth_studies[wildcards.study].items() if k != "runs"}
    return json.dumps({**spec, "unavailable": PLAN.unavailable[wildcards.study]}, sort_keys=True)


def get_auxdepth_study_outputs(study):
    outputs = [f"{RESULTS}/tables/{study}.{ext}" for ext in ("csv", "md")] + [f"{RESULTS}/metrics/{study}"]
    if PLAN.auxdepth_studies[study]["layout"] in AUXDEPTH_SWEEPS:
        outputs += [f"{RESULTS}/plots/{study}_sweep.png", f"{RESULTS}/sweeps/{study}.csv"]
    return outputs


def get_final_outputs():
    # Every planned shard set, also those no study reads yet (study B's data), so the default run
    # builds and verifies them.
    outputs = [f"{SHARDS}/{key}" for key in PLAN.shards]
    if config["versioning"]["dvc"]:
        outputs += [f"{path}.dvc" for path in get_versioned_paths()]
    for study in PLAN.studies:
        outputs += get_study_outputs(study)
    for study in PLAN.auxdepth_studies:
        outputs += get_auxdepth_study_outputs(study)
    return outputs


# --- Downloads (download.smk; docs/downloads.md) ----------------------------------------------------------
# Real datasets of the plan whose raw tree is missing are fetched from the registry (config/datasets.yaml):
# one download and one extraction job per archive. Which archives, and which extraction jobs produce the
# converter's inputs, is geosem.sources.download_plan's decision; an embedded world is never downloaded.
import re
import shlex
import sys

from geosem.sources import converter_spec
from geosem.sources.catalog import dataset_spec
from geosem.sources.cityscapes_login import credentials_path
from geosem.sources.archive_registry import load_registry
from geosem.sources.download import RECEIPT_SUFFIX
from geosem.sources.download_plan import DownloadPlan, is_folder, link_dataset_path, plan_downloads
from geosem.sources.extract import MARKERS

DOWNLOAD_SETTINGS = config["downloads"]
DOWNLOADS = DOWNLOAD_SETTINGS["dir"] or f"{RAW}/downloads"
for _dataset, _path in DOWNLOAD_SETTINGS["paths"].items():
    link_dataset_path(RAW, _dataset, _path)  # raw/<dataset> -> the configured tree (bring your own)


def get_download_datasets():
    """The real datasets the plan converts, then downloads.datasets; never an embedded world's."""
    planned = [spec["dataset"] for spec in PLAN.shards.values()]
    names = dict.fromkeys([*planned, *DOWNLOAD_SETTINGS["datasets"]])
    return [name for name in names if dataset_spec(name).world is None]


def get_download_plan():
    datasets = get_download_datasets()
    if not datasets:  # the embedded default: the registry is not even read
        return DownloadPlan()
    registry = load_registry(DOWNLOAD_SETTINGS["registry"])
    return plan_downloads(
        registry, datasets, RAW, lambda name: converter_spec(name).reads, DOWNLOAD_SETTINGS["archives"]
    )


DOWNLOAD_PLAN = get_download_plan()
if any(p.archive.credentials == "cityscapes" for p in DOWNLOAD_PLAN.archives.values()):
    if not DOWNLOAD_SETTINGS["mirror"] and not credentials_path().is_file():
        print(
            f"GeoSem: Cityscapes downloads are planned but {credentials_path()} does not exist; their jobs "
            "will stop until the login is there (docs/downloads.md, 'Credentials')",
            file=sys.stderr,
        )


def get_download_pattern(kind, anchors=True):
    """A wildcard constraint matching exactly the planned datasets or archive files (nothing when none
    is planned), so the download rules can never claim another rule's file."""
    planned = DOWNLOAD_PLAN.archives.values()
    if not anchors:
        planned = [p for p in planned if not p.is_anchor]
    names = sorted({p.archive.dataset if kind == "dataset" else p.archive.file for p in planned})
    return "|".join(re.escape(name) for name in names) if names else "(?!)"


def get_download_receipt(dataset, file):
    return f"{DOWNLOADS}/{dataset}/{file}{RECEIPT_SUFFIX}"


def get_download_source_flags(wildcards):
    """--mirror / --base-url for the job: params, so a new mirror re-verifies the receipt only (the
    archive itself is not a declared output, so Snakemake never deletes it)."""
    flags = []
    if DOWNLOAD_SETTINGS["mirror"]:
        flags += ["--mirror", DOWNLOAD_SETTINGS["mirror"]]
    if wildcards.dataset in DOWNLOAD_SETTINGS["base_urls"]:
        flags += ["--base-url", DOWNLOAD_SETTINGS["base_urls"][wildcards.dataset]]
    return shlex.join(flags)


def get_download_dir(wildcards, output):
    """<dir> of <dir>/<dataset>/<file>.verified.json, from the job's own output."""
    return os.path.dirname(os.path.dirname(output[0]))


def get_extract_downloads(wildcards, input):
    return os.path.dirname(os.path.dirname(input[0]))


def get_extract_root(wildcards, output):
    """raw/<dataset> of the job's marker raw/<dataset>/.extracted/<file>.json."""
    return os.path.dirname(os.path.dirname(output[0]))


def get_anchor_root(planned):
    """raw/<dataset> of an anchor job, from its first output (raw/<dataset>/<converter input>)."""
    suffix = len(planned.covers[0]) + 1
    return lambda wildcards, output: output[0][:-suffix]


def get_extract_receipt(wildcards):
    return get_download_receipt(wildcards.dataset, wildcards.file)


def get_extract_marker(dataset, file):
    return f"{RAW}/{dataset}/{MARKERS}/{file}.json"


def get_anchor_rule_name(planned):
    return re.sub(r"\W", "_", f"extract_{planned.archive.dataset}_{planned.archive.file}")


def get_anchor_inputs(planned):
    """An anchor's own archive and every other planned archive of its dataset, extracted: the paths it
    produces are what the conversion waits for, so the whole tree must be there before them."""
    dataset = planned.archive.dataset
    others = [
        get_extract_marker(dataset, p.archive.file) for p in DOWNLOAD_PLAN.of(dataset) if not p.is_anchor
    ]
    return [get_download_receipt(dataset, planned.archive.file), *others]


def get_anchor_outputs(planned):
    root = f"{RAW}/{planned.archive.dataset}"
    return [
        directory(f"{root}/{read}") if is_folder(read, planned.archive) else f"{root}/{read}"
        for read in planned.covers
    ]


def get_download_targets():
    """Everything `snakemake downloads` fetches and extracts: the whole plan, no conversion."""
    targets = [get_extract_marker(p.archive.dataset, p.archive.file) for p in DOWNLOAD_PLAN.plain]
    for planned in DOWNLOAD_PLAN.anchors:
        targets += [str(path) for path in get_anchor_outputs(planned)]
    return targets
