# Aggregation: a study's finished fine-tunes -> table (csv, md), DVC metrics (json) and curves plot.


rule aggregate:
    input:
        get_study_run_files,
        # The study's pre-training table is built with it (so `all` includes it).
        pretrain_table=f"{RESULTS}/tables/pretrain/{{study}}.md",
    output:
        csv=report(f"{RESULTS}/tables/{{study}}.csv", caption="../report/table.rst", category="Tables"),
        md=f"{RESULTS}/tables/{{study}}.md",
        metrics=f"{RESULTS}/metrics/{{study}}.json",
        curves=f"{RESULTS}/curves/{{study}}.csv",
        plot=report(
            f"{RESULTS}/plots/{{study}}_curves.png", caption="../report/curves.rst", category="Curves"
        ),
    log:
        "logs/aggregate/{study}.log",
    conda:
        "../../envs/geosem.yaml"
    params:
        runs=get_study_runs,
    localrule: True
    shell:
        "geosem aggregate --study {wildcards.study} --runs {params.runs}"
        " --table-csv {output.csv} --table-md {output.md} --metrics {output.metrics}"
        " --curves-csv {output.curves} --plot {output.plot} > {log} 2>&1"


# The pre-trainings a study uses -> their depth quality on the test split (and flow / MAE scores).


rule aggregate_pretrain:
    input:
        get_study_pretrain_files,
    output:
        csv=f"{RESULTS}/tables/pretrain/{{study}}.csv",
        md=f"{RESULTS}/tables/pretrain/{{study}}.md",
    log:
        "logs/aggregate/pretrain_{study}.log",
    conda:
        "../../envs/geosem.yaml"
    params:
        runs=get_study_pretrain_runs,
    localrule: True
    shell:
        "python -m geosem.aggregate.pretrain --study {wildcards.study} --runs {params.runs}"
        " --csv {output.csv} --md {output.md} > {log} 2>&1"
