# The MOR study: for every Neural ODE run (family "node"), reduce the trained ODE layer at every
# level (POD-DEIM, pruning, SVD), evaluate and time it against the full model, then collect.


rule mor:
    # Times the reduced models against the full one: one at a time (speed_lock), like measure.
    input:
        f"{RUN_DIR}/train.json",
    output:
        f"{RUN_DIR}/mor.csv",
    params:
        spec=spec_json,
        settings=json.dumps(config["mor"], sort_keys=True),
        run_dir=RUN_DIR,
        failed_attempts=failed_attempts("mor"),  # a failed study is redone at the next invocation
    log:
        f"{RUN_DIR}/mor.log",
    threads: config["mor"]["threads"]
    resources:
        gpu=GPUS_PER_JOB,
        speed_lock=1,
    conda:
        ENV_FILE
    shell:
        "python -m puppet mor --spec {params.spec:q} --settings {params.settings:q} --run-dir {params.run_dir}"
        + STDERR_TO_LOG


rule mor_report:
    input:
        [f"{path}/mor.csv" for path in MOR_RUN_PATHS],
    output:
        report("results/mor.csv", category="Tables", subcategory="MOR study", caption="../report/mor.rst"),
        report(
            [mor_figure(p) for p in MOR_RUN_PATHS],
            category="Figures",
            subcategory="MOR study",
            caption="../report/mor.rst",
        ),
    log:
        "results/logs/mor_report.log",
    conda:
        ENV_FILE
    shell:
        "python -m puppet mor-report --runs {input} --out {output[0]} --figures results/figures 2> {log}"
