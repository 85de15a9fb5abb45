# Aggregation: a study's finished fine-tunes -> table (csv, md), DVC metrics (json) and curves plot.


rule aggregate:
    input:
        get_study_run_files,
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
