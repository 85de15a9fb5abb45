# Study B: monocular depth on a frozen backbone with auxiliary tasks (docs/study-b.md). One job per
# auxdepth run of the plan; its backbone's pre-training (when the pipeline trains it) is an input, so the
# zoo's pretrain rule runs first. Then one table per study-B file, and a plot for the sweeps.


rule auxdepth:
    input:
        run=f"{RUNS}/auxdepth/{{run_id}}/run.yaml",
        shards=ancient(get_auxdepth_shards),  # pulled shards keep their runs (versioning.smk)
        backbone=get_auxdepth_backbone,
    output:
        model=f"{RUNS}/auxdepth/{{run_id}}/model.pt",
        metrics=f"{RUNS}/auxdepth/{{run_id}}/metrics.json",
        curves=f"{RUNS}/auxdepth/{{run_id}}/curves.csv",
    log:
        "logs/auxdepth/{run_id}.log",
    benchmark:
        f"{BENCHMARKS}/auxdepth/{{run_id}}.tsv"
    conda:
        "../../envs/geosem.yaml"
    threads: TRAIN_THREADS
    resources:
        **TRAIN_RESOURCES,  # common.smk: GPUs, memory, time limit and SIGTERM lead, shared by every trainer
    # exec: without it bash stays between Snakemake and the trainer (the log redirection stops its
    # exec optimisation) and a SIGTERM kills bash before the trainer has saved its checkpoint.
    shell:
        "exec geosem -v auxdepth --run {input.run} --threads {threads} > {log} 2>&1"


rule aggregate_auxdepth:
    input:
        get_auxdepth_study_files,
    output:
        csv=report(
            f"{RESULTS}/tables/{{study}}.csv",
            caption="../report/auxdepth_table.rst",
            category="Study B tables",
            subcategory="{study}",
            labels={"study": "{study}", "figure": "table"},
        ),
        md=f"{RESULTS}/tables/{{study}}.md",
        # One small JSON per table cell (row x column), so `dvc metrics show` stays narrow.
        metrics=directory(f"{RESULTS}/metrics/{{study}}"),
    log:
        "logs/aggregate/{study}.log",
    # Study B's studies only; study A's tables at the same paths are rule aggregate's.
    wildcard_constraints:
        study=STUDY_B_PATTERN,
    localrule: True
    conda:
        "../../envs/geosem.yaml"
    params:
        runs=get_auxdepth_study_runs,
        spec=get_auxdepth_spec_json,
    shell:
        "geosem aggregate-auxdepth --study {wildcards.study} --runs {params.runs} --spec {params.spec:q}"
        " --csv {output.csv} --md {output.md} --metrics {output.metrics} > {log} 2>&1"


rule plot_auxdepth:
    input:
        f"{RESULTS}/tables/{{study}}.csv",
    output:
        plot=report(
            f"{RESULTS}/plots/{{study}}_sweep.png",
            caption="../report/auxdepth_sweep.rst",
            category="Study B figures",
            subcategory="{study}",
            labels={"study": "{study}", "figure": "sweep"},
        ),
        # The plotted points, for `dvc plots` (dvc.yaml: x value, y abs_rel_x1e4).
        sweep=f"{RESULTS}/sweeps/{{study}}.csv",
    log:
        "logs/aggregate/{study}_sweep.log",
    wildcard_constraints:
        study=STUDY_B_PATTERN,
    localrule: True
    conda:
        "../../envs/geosem.yaml"
    params:
        spec=get_auxdepth_spec_json,
    shell:
        "geosem aggregate-auxdepth --study {wildcards.study} --from-table {input} --spec {params.spec:q}"
        " --plot {output.plot} --sweep-csv {output.sweep} > {log} 2>&1"
