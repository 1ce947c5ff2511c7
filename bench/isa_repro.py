"""Check (not a test): which models train to other weights when torch's CPU kernels use another
instruction set, on one machine.

Every registered model is trained for ``--steps`` optimizer steps, as the train job trains it
(``puppet.core.train.train_steps``: the quick profile's recipe at its width, synthetic 32x32 images),
in a fresh process per variant: twice as the machine runs by default, then with the vector
instruction set capped (``ATEN_CPU_CAPABILITY`` for torch's own kernels, ``ONEDNN_MAX_CPU_ISA`` for
oneDNN's convolutions), set before torch is imported. Writes ``results/bench/isa_repro.csv``: per
model and variant, whether the weights are bit-identical to the default run's, and the largest
relative difference of any weight. With ``--accuracy DATA.npz MODEL ...`` it also trains those
models as the quick profile does (its epochs, width and recipe, on that CIFAR-10 file) under the
default and the AVX2-capped variant and writes their test top-1 to
``results/bench/isa_repro_accuracy.csv``: how far one seed moves when only the instruction set
changes. Run it alone on a quiet machine:

    python bench/isa_repro.py --steps 4
    python bench/isa_repro.py --skip-weights --accuracy ../shared/data/cifar10_subset.npz alexnet resnet skipnet38
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "bench" / "isa_repro.csv"
OUT_ACCURACY = REPO / "results" / "bench" / "isa_repro_accuracy.csv"
# name -> environment; "default" twice: the same machine, another process
VARIANTS = {
    "default": {},
    "default_again": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "sse41": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}


def child(out: Path, steps: int) -> None:
    """In a fresh process (the instruction set is chosen when torch loads): every model's weights."""
    import torch

    from puppet.core.config import load_config, run_spec
    from puppet.core.registry import list_models
    from puppet.core.repro import machine, weights_digest
    from puppet.core.train import train_steps

    torch.set_num_threads(2)
    configs = [load_config(str(REPO / "config" / name)) for name in ("config.yaml", "paper.yaml")]
    result = {"machine": machine(), "models": {}}
    for name in list_models():
        for config in configs:  # the quick profile's recipe; the paper's for models only it lists (skipnet74, 110)
            spec = run_spec(config, "synthetic", name, 0)
            spec = spec.replace(
                max_channels=32, data={"train_size": 64 * steps, "val_size": 64, "test_size": 64, "augment": "none"}
            )
            try:
                state = train_steps(spec, steps)
                break
            except ValueError as exc:  # no train.phases in this profile's recipe for it
                if "trains in phases" not in str(exc):
                    raise
        flat = torch.cat([v.detach().double().reshape(-1) for v in state.values() if v.is_floating_point()])
        torch.save(flat, out.with_name(f"{name}.pt"))
        result["models"][name] = weights_digest(state)
        print(f"  {name}", file=sys.stderr, flush=True)
    out.write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--skip-weights", action="store_true", help="only the --accuracy runs")
    parser.add_argument("--accuracy", nargs="+", metavar="NPZ MODEL", help="a CIFAR-10 .npz, then models")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps)
        return
    if not args.skip_weights:
        weights(args)
    if args.accuracy:
        accuracy(Path(args.accuracy[0]).resolve(), args.accuracy[1:])


def accuracy(npz: Path, models: list[str]) -> None:
    """Quick-profile trainings of ``models`` under the default and the AVX2-capped instruction set."""
    import pandas as pd

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            for variant in ("default", "avx2"):
                env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
                env.update(VARIANTS[variant], OMP_NUM_THREADS="2", PYTHONPATH=str(REPO))
                results = Path(tmp) / variant
                cmd = [
                    sys.executable, "-m", "puppet", "train", "--model", model, "--dataset", "cifar10",
                    "--set", f"data_sources.cifar10={npz}", "--results", str(results),
                ]  # fmt: skip
                subprocess.run(cmd, env=env, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
                (record,) = [
                    json.loads(p.read_text()) for p in results.glob(f"runs/*/cifar10/{model}/seed0/*/train.json")
                ]
                rows.append(
                    {
                        "model": model,
                        "variant": variant,
                        "caps": " ".join(f"{k}={v}" for k, v in VARIANTS[variant].items()) or "none",
                        "top1": record["top1"],
                        "final_train_loss": record["final_train_loss"],
                        "epochs": record["epochs"],
                        "max_channels": record["max_channels"],
                        "train_size": record["train_size"],
                        "test_size": record["test_size"],
                        "cpu": record.get("train_cpu"),
                        "isa": record.get("train_isa"),
                        "torch": record.get("train_torch_version"),
                        "config_hash": record["config_hash"],
                    }
                )
                print(f"{model} {variant}: top-1 {record['top1']:.2f}%", flush=True)
    frame = pd.DataFrame(rows)
    wide = frame.pivot_table(index="model", columns="variant", values="top1", sort=False)
    wide["avx2_minus_default_pp"] = wide["avx2"] - wide["default"]
    print(wide.to_string(float_format=lambda v: f"{v:.2f}"))
    frame.to_csv(OUT_ACCURACY, index=False)
    print(f"-> {OUT_ACCURACY}")


def weights(args: argparse.Namespace) -> None:

    import pandas as pd
    import torch

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant, env in VARIANTS.items():
            folder = Path(tmp) / variant
            folder.mkdir()
            print(f"{variant}: {env or 'as the machine runs'}", file=sys.stderr, flush=True)
            full_env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
            full_env.update(env, OMP_NUM_THREADS="2", PYTHONPATH=str(REPO))
            cmd = [sys.executable, __file__, "--steps", str(args.steps), "--child", str(folder / "result.json")]
            subprocess.run(cmd, env=full_env, check=True)
            result = json.loads((folder / "result.json").read_text())
            weights = {m: torch.load(folder / f"{m}.pt") for m in result["models"]}
            runs[variant] = (result, weights)
        reference, ref_weights = runs["default"]
        rows = []
        for variant, (result, weights) in runs.items():
            if variant == "default":
                continue
            for model, digest in result["models"].items():
                a, b = ref_weights[model], weights[model]
                rel = ((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item()
                rows.append(
                    {
                        "model": model,
                        "variant": variant,
                        "caps": " ".join(f"{k}={v}" for k, v in VARIANTS[variant].items()) or "none",
                        "isa": result["machine"]["train_isa"],
                        "bit_identical": digest == reference["models"][model],
                        "max_rel_weight_diff": rel,
                        "steps": args.steps,
                        "cpu": reference["machine"]["train_cpu"],
                        "default_isa": reference["machine"]["train_isa"],
                        "torch": reference["machine"]["train_torch_version"],
                    }
                )
    frame = pd.DataFrame(rows)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(OUT, index=False)
    summary = frame.pivot_table(index="model", columns="variant", values="bit_identical", aggfunc="first")
    print(summary.to_string())
    for variant in summary.columns:
        differ = sorted(summary.index[~summary[variant].astype(bool)])
        print(f"{variant}: {len(differ)} of {len(summary)} models differ: {', '.join(differ) or 'none'}")
    print(f"-> {OUT}")


if __name__ == "__main__":
    main()
