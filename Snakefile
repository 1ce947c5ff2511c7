# puppet-bench: from a config to the paper-style tables in one command.
#
#   snakemake --cores all tables                         # default target, quick profile
#   snakemake --cores all tables --configfile config/paper.yaml
#
# Rules only wire files to functions of the `puppet` package (python -m puppet ...).

from snakemake.utils import min_version

min_version("9.0")


# The default profile, unless --configfile names another: a profile file replaces the
# default rather than overlaying it, so the paper profile never inherits the quick
# profile's overrides. --config key=value overlays whichever profile is in use.
if not workflow.overwrite_configfiles:

    configfile: f"{workflow.basedir}/config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


rule tables:
    """The default target: results/metrics.csv, the paper's tables and tables.md."""
    default_target: True
    input:
        "results/metrics.csv",
        "results/tables.md",


rule figures:
    input:
        "results/figures/.done",


rule all:
    input:
        rules.tables.input,
        rules.figures.input,
