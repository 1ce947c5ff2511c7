# The MOR study's view: every reduction of a Neural ODE run is a deployment ("pod_deim@16", ...) its
# measure job builds and measures (rules/train.smk, puppet/compress/deploy.py); this rule only
# reads those rows of results/metrics.csv into results/mor.csv and draws one figure per run.


rule mor_report:
    input:
        "results/metrics.csv",
    output:
        table=report("results/mor.csv", category="Tables", subcategory="MOR study", caption="../report/mor.rst"),
        figures=report(
            MOR_FIGURES,
            category="Figures",
            subcategory="MOR study",
            caption="../report/mor.rst",
        ),
    params:
        expect=MOR_FIGURES,  # a run without measured reductions gets a figure that says so
        rebuilds=derived_rebuilds("mor_report"),  # a damaged mor.csv is rebuilt (rules/common.smk)
    resources:
        machine=MACHINE_SHARE,
    log:
        "results/logs/mor_report.log",
    conda:
        ENV_FILE
    shell:
        "python -m puppet mor-report --metrics {input} --out {output.table} --figures results/figures "
        "--expect {params.expect} 2> {log}"
