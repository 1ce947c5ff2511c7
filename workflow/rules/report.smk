# Collation: the tidy table, the model descriptions, the paper's tables and the figures.

# The profile's claims (config/claims.yaml): a verdict per claim with its interval over seeds, each model's
# metrics over seeds, the MOR curves over seeds and the learning curves (rule claims, at the end of this
# file). Only where the profile lists claims; their section leads tables.md.
CLAIMS = config.get("claims") or []
# (dataset, model) of each Neural ODE with a MOR study: its curves over seeds (results/figures/mor_*_seeds.png)
MOR_MODELS = sorted({tuple(Path(p).parts[3:5]) for p in MOR_RUN_PATHS})


rule collate:
    input:
        train=grid("train.json"),
        measure=grid("measure.json"),
    output:
        report("results/metrics.csv", category="Tables", subcategory="All runs", caption="../report/metrics.rst"),
    params:
        # damaged copies of metrics.csv kept so far: a cut row or header rebuilds it (rules/common.smk)
        rebuilds=derived_rebuilds("collate"),
    resources:
        machine=MACHINE_SHARE,
    log:
        "results/logs/collate.log",
    conda:
        ENV_FILE
    shell:
        "python -m puppet collate --runs {input.train} --out {output} 2> {log}"


# The code that decides the numbers in results/models.csv: the model builders (baselines/, puppet/models/,
# puppet/layers.py), the registry that names and configures them, the parameter counts (puppet/core/measure.py),
# and the description itself (puppet/report/models.py, which builds Table 5's widths listed in paper.py).
# They are the rule's inputs so that a change to a model remakes its description and, through it, every table
# and figure that quotes it (sizes.csv, Table 5, the PDE and SkipNet tables, Fig. 4): the report reads no
# number of the model code that is not a declared input. The globs are evaluated when the workflow is parsed,
# so a new model module is an input change too. (Snakemake 9 checks a newer input's checksum against the one
# it recorded: an edit remakes the description, a touch alone does not.)
CODE_ROOT = Path(workflow.basedir).parent
MODEL_CODE = sorted(
    str(path)
    for pattern in ("baselines/*.py", "puppet/models/*.py")
    for path in CODE_ROOT.glob(pattern)
) + [
    str(CODE_ROOT / path)
    for path in (
        "puppet/layers.py",
        "puppet/core/registry.py",
        "puppet/core/measure.py",
        "puppet/report/models.py",
        "puppet/report/paper.py",
    )
]


rule describe_models:
    input:
        MODEL_CODE,
    output:
        report("results/models.csv", category="Tables", subcategory="Models", caption="../report/models.rst"),
    params:
        rebuilds=derived_rebuilds("describe_models"),
    resources:
        machine=MACHINE_SHARE,  # builds every model at 512 channels: never beside a timing job
    log:
        "results/logs/describe_models.log",
    conda:
        ENV_FILE
    shell:
        "python -m puppet describe-models --out {output} 2> {log}"


rule paper_tables:
    input:
        metrics="results/metrics.csv",
        models="results/models.csv",
        claims=["results/claims.md"] if CLAIMS else [],
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
        report("results/table_mor.csv", category="Tables", subcategory="MOR study", caption="../report/mor.rst"),
        "results/tables.tex",
    params:
        claims=lambda wildcards, input: f"--claims {input.claims[0]}" if input.claims else "",
        rebuilds=derived_rebuilds("paper_tables"),
    resources:
        machine=MACHINE_SHARE,
    log:
        "results/logs/tables.log",
    conda:
        ENV_FILE
    shell:
        "python -m puppet tables --metrics {input.metrics} --models {input.models} --out-dir results "
        "{params.claims} 2> {log}"


rule plot_figures:
    input:
        metrics="results/metrics.csv",
        # Fig. 4 and the SkipNet figure's configurations
        models="results/models.csv",
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
    resources:
        machine=MACHINE_SHARE,
    log:
        "results/logs/figures.log",
    conda:
        ENV_FILE
    shell:
        "python -m puppet figures --metrics {input.metrics} --models {input.models} --out-dir results/figures "
        "--runs {input.runs} 2> {log}"


rule claims:
    input:
        metrics="results/metrics.csv",
        mor=["results/mor.csv"] if MOR_RUN_PATHS else [],
        # the confusion matrices of the confusion claims and the learning curves (each run's history)
        runs=grid("train.json"),
    output:
        claims=report("results/claims.csv", category="Tables", subcategory="Claims", caption="../report/claims.rst"),
        summary=report("results/seed_summary.csv", category="Tables", subcategory="Claims", caption="../report/claims.rst"),
        mor_seeds="results/mor_seeds.csv",
        markdown="results/claims.md",
        curves=report(
            expand("results/figures/{dataset}_learning_curves.png", dataset=GRID_DATASETS),
            category="Figures",
            subcategory="Learning curves",
            caption="../report/claims.rst",
        ),
        mor_curves=report(
            [f"results/figures/mor_{d}_{m}_seeds.png" for d, m in MOR_MODELS],
            category="Figures",
            subcategory="MOR study",
            caption="../report/mor_seeds.rst",
        ),
    params:
        claims=json.dumps(CLAIMS),
        mor_models=" ".join(f"{d}/{m}" for d, m in MOR_MODELS),
        datasets=" ".join(GRID_DATASETS),
        mor=lambda wildcards, input: f"--mor {input.mor[0]}" if input.mor else "",
        rebuilds=derived_rebuilds("claims"),
    resources:
        machine=MACHINE_SHARE,
    log:
        "results/logs/claims.log",
    conda:
        ENV_FILE
    shell:
        "python -m puppet claims --metrics {input.metrics} {params.mor} --claims {params.claims:q} "
        "--runs {input.runs} --datasets {params.datasets} --mor-models {params.mor_models} --out-dir results "
        "--figures results/figures 2> {log}"
