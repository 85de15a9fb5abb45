# GeoSem: pre-training transfer between geometry and semantics.
# Thin on purpose: the stages live in workflow/rules/, the logic in the `geosem` package.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/auxdepth.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/versioning.smk"


rule all:
    default_target: True
    input:
        get_final_outputs(),
