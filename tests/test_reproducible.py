"""A run repeats bit for bit on one machine: every registered model, trained for a few steps as the
train job trains it, twice, ends with identical weights. (Across CPU types it need not: the record
names the CPU and the instruction set; ``bench/isa_repro.py`` measures how far capping the
instruction set moves each model on one machine, docs/measurement.md "Reproducibility".)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from puppet.core.assemble import materialise
from puppet.core.config import load_config, run_spec
from puppet.core.registry import list_models
from puppet.core.repro import machine, weights_digest
from puppet.core.train import train_steps

REPO = Path(__file__).resolve().parents[1]
# the quick profile's recipe; the paper's for the models only it lists (skipnet74, skipnet110: phases)
CONFIGS = [load_config(str(REPO / "config" / name)) for name in ("config.yaml", "paper.yaml")]
STEPS = 2


def _spec(model: str):
    for config in CONFIGS:
        spec = run_spec(config, "synthetic", model, 0).replace(
            max_channels=8, data={"train_size": 16 * STEPS, "val_size": 16, "test_size": 16}, train={"batch_size": 16}
        )
        if spec.train.phases or config is CONFIGS[-1]:
            return spec
        try:  # a model that trains in phases needs a recipe that gives them
            from puppet.core.optim import PhasePlan

            PhasePlan.build(spec, materialise(spec)[2], STEPS)
            return spec
        except ValueError:
            continue


@pytest.mark.parametrize("model", list_models())
def test_training_repeats_bit_for_bit_on_one_machine(model):
    spec = _spec(model)
    initial = weights_digest(materialise(spec, for_training=True)[2].state_dict())
    first, second = train_steps(spec, STEPS), train_steps(spec, STEPS)
    assert weights_digest(first) != initial  # the steps moved the weights: the comparison can fail
    assert weights_digest(first) == weights_digest(second)


def test_the_record_names_the_cpu_and_the_instruction_set(monkeypatch):
    plain = machine("cpu")
    assert plain["train_isa"] == torch.backends.cpu.get_cpu_capability() and plain["train_cpu"]
    assert plain["train_torch_version"] == torch.__version__
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # a cap is part of the record
    assert machine("cpu")["train_isa"].endswith("(ONEDNN_MAX_CPU_ISA=AVX2)")


def test_the_digest_sees_one_bit():
    state = {"w": torch.ones(3), "n": torch.tensor(2)}
    flipped = {"w": torch.ones(3), "n": torch.tensor(2)}
    flipped["w"].view(torch.int32)[1] ^= 1  # the last bit of one float
    assert weights_digest(state) != weights_digest(flipped) and weights_digest(state) == weights_digest(dict(state))
