# Collation: the tidy table, the paper's tables and the figures.


rule collate:
    input:
        train=grid("train.json"),
        measure=grid("measure.json"),
    output:
        report("results/metrics.csv", category="Tables", subcategory="All runs", caption="../report/metrics.rst"),
    log:
        "results/logs/collate.log",
    conda:
        ENV_FILE
    shell:
        "python -m puppet collate --runs {input.train} --out {output} 2> {log}"


rule paper_tables:
    input:
        "results/metrics.csv",
    output:
        "results/tables.md",
        report(
            expand("results/table{n}.csv", n=[1, 2, 3, 4, 5, 6]),
            category="Tables",
            subcategory="Puppet-CNN paper",
            caption="../report/paper_tables.rst",
        ),
        report("results/sizes.csv", category="Tables", subcategory="Puppet-CNN paper", caption="../report/sizes.rst"),
        report("results/table_pde.csv", category="Tables", subcategory="PDE Global layer", caption="../report/pde.rst"),
        report("results/table_skipnet.csv", category="Tables", subcategory="SkipNet", caption="../report/skipnet.rst"),
        "results/tables.tex",
    log:
        "results/logs/tables.log",
    conda:
        ENV_FILE
    shell:
        "python -m puppet tables --metrics {input} --out-dir results 2> {log}"


rule plot_figures:
    input:
        metrics="results/metrics.csv",
        # Fig. 3 reads the per-image depths the train jobs of depth-adaptive runs leave beside train.json
        runs=grid("train.json"),
    output:
        report(
            expand("results/figures/{dataset}_top1_vs_{axis}.png", dataset=GRID_DATASETS, axis=COST_AXES),
            category="Figures",
            subcategory="Accuracy against cost",
            caption="../report/accuracy_vs_cost.rst",
        ),
        report(
            expand("results/figures/{dataset}_depth_vs_complexity.png", dataset=PUPPET_DATASETS),
            category="Figures",
            subcategory="Puppet-CNN: depth against complexity (Fig. 3)",
            caption="../report/depth.rst",
        ),
        report(
            "results/figures/size_vs_depth.png",
            category="Figures",
            subcategory="Puppet-CNN: size against depth (Fig. 4)",
            caption="../report/size_vs_depth.rst",
        ),
        report(
            "results/figures/skipnet_tradeoff.png",
            category="Figures",
            subcategory="SkipNet: configurations and trade-off",
            caption="../report/skipnet.rst",
        ),
    log:
        "results/logs/figures.log",
    conda:
        ENV_FILE
    shell:
        "python -m puppet figures --metrics {input.metrics} --out-dir results/figures 2> {log}"
