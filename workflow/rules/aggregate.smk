# Aggregation: a study's finished fine-tunes -> table (csv, md), DVC metrics (json), curves and the
# figures its study file asks for (sizes, resolution, Grad-CAM), each with a report caption.


rule aggregate:
    input:
        get_study_run_files,
        # The study's pre-training table and curves figure are built with it (so `all` includes them).
        pretrain_table=f"{RESULTS}/tables/pretrain/{{study}}.md",
        pretrain_plot=f"{RESULTS}/plots/pretrain/{{study}}_curves.png",
    output:
        csv=report(
            f"{RESULTS}/tables/{{study}}.csv",
            caption="../report/table.rst",
            category="Tables",
            subcategory="{study}",
            labels={"study": "{study}", "figure": "table"},
        ),
        md=f"{RESULTS}/tables/{{study}}.md",
        # One small JSON per (setting, init), so `dvc metrics show` stays narrow (geosem.aggregate.dvc_metrics).
        metrics=directory(f"{RESULTS}/metrics/{{study}}"),
        curves=f"{RESULTS}/curves/{{study}}.csv",
        plot=report(
            f"{RESULTS}/plots/{{study}}_curves.png",
            caption="../report/curves.rst",
            category="Curves",
            subcategory="{study}",
            labels={"study": "{study}", "figure": "curves"},
        ),
    log:
        "logs/aggregate/{study}.log",
    # Study A's studies only: a study-B table (the same paths) is rule aggregate_auxdepth's (auxdepth.smk).
    wildcard_constraints:
        study=STUDY_A_PATTERN,
    localrule: True
    conda:
        "../../envs/geosem.yaml"
    params:
        runs=get_study_runs,
        labels=get_study_labels_json,
        unavailable=get_study_unavailable_json,
    shell:
        "geosem aggregate --study {wildcards.study} --runs {params.runs}"
        " --labels {params.labels:q} --unavailable {params.unavailable:q}"
        " --table-csv {output.csv} --table-md {output.md} --metrics {output.metrics}"
        " --curves-csv {output.curves} --plot {output.plot} > {log} 2>&1"


rule plot_sizes:
    input:
        f"{RESULTS}/tables/{{study}}.csv",
    output:
        report(
            f"{RESULTS}/plots/{{study}}_sizes.png",
            caption="../report/sizes.rst",
            category="Training set size",
            subcategory="{study}",
            labels={"study": "{study}", "figure": "sizes"},
        ),
    log:
        "logs/aggregate/{study}_sizes.log",
    localrule: True
    conda:
        "../../envs/geosem.yaml"
    params:
        labels=get_study_labels_json,
    shell:
        "geosem plot sizes --table {input} --labels {params.labels:q} --out {output}"
        " --title {wildcards.study:q} > {log} 2>&1"


rule plot_resolution:
    input:
        f"{RESULTS}/tables/{{study}}.csv",
    output:
        report(
            f"{RESULTS}/plots/{{study}}_resolution.png",
            caption="../report/resolution.rst",
            category="Resolution transfer",
            subcategory="{study}",
            labels={"study": "{study}", "figure": "resolution"},
        ),
    log:
        "logs/aggregate/{study}_resolution.log",
    localrule: True
    conda:
        "../../envs/geosem.yaml"
    params:
        labels=get_study_labels_json,
    shell:
        "geosem plot resolution --table {input} --labels {params.labels:q} --out {output}"
        " --title {wildcards.study:q} > {log} 2>&1"


rule gradcam:
    input:
        get_gradcam_files,
    output:
        report(
            f"{RESULTS}/figures/{{study}}_gradcam.png",
            caption="../report/gradcam.rst",
            category="Grad-CAM",
            subcategory="{study}",
            labels={"study": "{study}", "figure": "gradcam"},
        ),
    log:
        "logs/aggregate/{study}_gradcam.log",
    conda:
        "../../envs/geosem.yaml"
    threads: 1
    params:
        runs=get_gradcam_runs,
        images=get_gradcam_images,
    shell:
        "geosem gradcam --runs {params.runs} --out {output} --images {params.images} > {log} 2>&1"


# The pre-trainings a study uses -> their depth quality on the test split (and flow / MAE scores), per
# init over its pre-training seeds, and against step (from each run's curves.csv).


rule aggregate_pretrain:
    input:
        get_study_pretrain_files,
    output:
        csv=f"{RESULTS}/tables/pretrain/{{study}}.csv",
        md=f"{RESULTS}/tables/pretrain/{{study}}.md",
        plot=report(
            f"{RESULTS}/plots/pretrain/{{study}}_curves.png",
            caption="../report/pretrain_curves.rst",
            category="Pre-training",
            subcategory="{study}",
            labels={"study": "{study}", "figure": "pre-training curves"},
        ),
    log:
        "logs/aggregate/pretrain_{study}.log",
    localrule: True
    conda:
        "../../envs/geosem.yaml"
    params:
        runs=get_study_pretrain_runs,
    shell:
        "geosem aggregate-pretrain --study {wildcards.study} --runs {params.runs}"
        " --csv {output.csv} --md {output.md} --plot {output.plot} > {log} 2>&1"
