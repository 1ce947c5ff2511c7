# One training job and one measurement job per (dataset, model, seed); the measure job measures the
# trained model in each of its deployments (its own forward, and any its family builds from it).


rule train:
    output:
        f"{RUN_DIR}/train.json",
    params:
        spec=spec_json,
        # a plain string, as when finished runs recorded it: a changed param retrains (params trigger)
        out_dir=RUN_DIR,
        failed_attempts=failed_attempts("train"),
    log:
        f"{RUN_DIR}/train.log",
    threads: 2
    resources:
        gpu=GPUS_PER_JOB,
        machine=MACHINE_SHARE,
        **planned_runtime("train"),
    # train.log holds this attempt, train.log.history every attempt (STDERR_TO_LOG). Exit code
    # 75: paused by train.time_limit_min at an epoch boundary, checkpoint saved and no
    # train.json, so the next invocation resumes it.
    conda:
        ENV_FILE
    shell:
        f"exec python -m puppet train --spec {{params.spec:q}} --out-dir {{params.out_dir}}{TIME_LIMIT_FLAG}{STDERR_TO_LOG}"


rule measure:
    # Timing jobs run alone: all of the default profile's `machine` resource (no other job beside
    # them, CPU or GPU), speed_lock (one at a time under any profile that declares it) and the GPU.
    input:
        f"{RUN_DIR}/train.json",
    output:
        f"{RUN_DIR}/measure.json",
    params:
        spec=spec_json,
        run_dir=run_folder,
        failed_attempts=failed_attempts("measure"),
        # what the model's deployments need (a Neural ODE's MOR levels); changing it measures again
        deploy_options=deploy_options_json,
    log:
        f"{RUN_DIR}/measure.log",
    threads: config["measure"]["threads"]
    resources:
        gpu=GPUS_PER_JOB,
        speed_lock=1,
        machine=MACHINE_ALL,
        **planned_runtime("measure"),
    conda:
        ENV_FILE
    shell:
        f"exec python -m puppet measure --spec {{params.spec:q}} --run-dir {{params.run_dir}} "
        f"--deploy-options {{params.deploy_options:q}}{STDERR_TO_LOG}"
