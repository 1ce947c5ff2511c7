"""Shared fixtures. Tests run on CPU with few threads; ../shared/data holds real offline data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CIFAR10_NPZ = SHARED_DATA / "cifar10_subset.npz"

torch.set_num_threads(int(os.environ.get("PUPPET_TEST_THREADS", "2")))
# A timing job waits up to 30 s for a quiet machine (puppet.core.timing.wait_for_quiet); under test, 2 s
# (inherited by the workflow's subprocesses): a busy CI box flags its timings rather than stalling.
os.environ.setdefault("PUPPET_QUIET_PATIENCE_S", "2")


@pytest.fixture(scope="session")
def cifar10_npz() -> Path:
    if not CIFAR10_NPZ.is_file():
        pytest.skip(f"real-data test: {CIFAR10_NPZ} is absent (the ../shared folder beside the checkout)")
    return CIFAR10_NPZ


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: small models run fastest and steadiest on one thread,
    and backward through grouped convs oversubscribes a shared 2-core machine (seconds became
    minutes under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def model_descriptions():
    """The model-description table (``results/models.csv``) as ``describe_models`` makes it: every
    model built on the meta device, a few seconds, so once per session for the report tests."""
    from puppet.report.models import describe_models

    return describe_models()


@pytest.fixture(scope="session")
def models_csv(model_descriptions, tmp_path_factory) -> Path:
    """``model_descriptions`` written where ``write_tables``/``write_figures`` read it (``--models``)."""
    path = tmp_path_factory.mktemp("models") / "models.csv"
    model_descriptions.to_csv(path, index=False)
    return path
