# Collation: the tidy table, the paper's tables and the figures.


rule collate:
    input:
        train=grid("train.json"),
        measure=grid("measure.json"),
    output:
        "results/metrics.csv",
    shell:
        "python -m puppet collate --runs {input.train} --out {output}"


rule paper_tables:
    input:
        "results/metrics.csv",
    output:
        "results/tables.md",
        "results/table1.csv",
        "results/table2.csv",
        "results/table3.csv",
        "results/table4.csv",
        "results/table5.csv",
        "results/table6.csv",
        "results/sizes.csv",
        "results/table_pde.csv",
        "results/tables.tex",
    shell:
        "python -m puppet tables --metrics {input} --out-dir results"


rule plot_figures:
    input:
        "results/metrics.csv",
    output:
        touch("results/figures/.done"),
    shell:
        "python -m puppet figures --metrics {input} --out-dir results/figures"
