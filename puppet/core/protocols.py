"""The contract between a registered model and the harness.

Every registered model is an ``nn.Module`` whose ``forward(x)`` maps a normalised
image batch ``(B, C, H, W)`` to logits ``(B, classes)``; with that alone it is
trained with cross-entropy, evaluated and measured. A model whose training,
deployment or cost differs from a plain CNN says so by implementing one or more
of the optional hooks below. The harness finds them with ``isinstance`` checks
on these protocols and never special-cases a model by name.

When each hook is called, by whom and on which split (one training job, then
one measure job, ``puppet.core.train`` and ``puppet.core.measure``)::

    build model                                   train job
    prepare(training images)       Prepares       once, before the first step (and before resuming)
    set_phase(name)                TrainsInPhases before the first step of each phase (train.phases),
                                                  and at the start of every sitting (resume)
    compute_loss(x, y) per step    HasObjective   every training step, train split
    calibrate(validation batches)  Calibrates     once, after the last epoch, validation split
    evaluate(test)                 ReportsStats   last_stats read after every eval forward
    save model.pt                                 prepare/calibrate results must be buffers
    ---------------------------------------------
    load model.pt                                 measure job: no prepare, no calibrate again
    stored_param_count()           CountsStoredParams    the "stored params" column
    total_param_count()            CountsTotalParams     torchinfo's "Total params"
    deployments(), deploy(name)    Deploys               each deployment measured, interleaved with default
    deployment_metrics()           HasDeploymentMetrics  (on a deployed module) its extra columns
    force_path(which)              RoutesPerInput        cost-only runs: the cheapest/dearest path

Because the measure job rebuilds the model and only loads ``model.pt``, anything
``prepare`` or ``calibrate`` decides must live in registered buffers or parameters;
the registry-wide tests save and reload every model after both and compare logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol, runtime_checkable

import torch
import torch.nn as nn

# The per-sample statistics a model may leave in ``last_stats``: name -> meaning. Each is a
# tensor whose first dimension is the batch (B,) or (B, k), or, for ``generation_macs`` only,
# a float shared by every sample. The tests check every model against this vocabulary, so a
# new statistic is added here first, with its meaning.
STATS: dict[str, str] = {
    "depth": "conv layers on the sample's path (adaptive-depth models, Puppet-CNN)",
    "exit": "index of the exit the sample left at (BranchyNet)",
    "blocks": "residual blocks executed (SkipNet)",
    "blocks_run": "(B, blocks) 0/1 mask of the blocks executed (SkipNet)",
    "loops": "recurrent loops run, summed over stages (DRNN)",
    "loops_per_stage": "(B, stages) loops run in each stage (DRNN)",
    "step": "Euler step size the puppeteer used (Puppet-CNN)",
    "generation_macs": "MACs spent generating this sample's kernels (dynamic-kernel models); kernels "
    "generated once for a batch are shared by the samples that use them, so this "
    "one depends on the batch",
    "complexity": "the image's complexity in bits before normalisation (Puppet-CNN)",
    "complexity_normalised": "complexity mapped to [0, 1] (Puppet-CNN)",
    "elementwise_ops": "scalar adds, subtracts, multiplies and reciprocals of the model's own elementwise "
    "arithmetic (the PDE Global layer's update), which conv/matmul MAC counters do not see",
}


@runtime_checkable
class Prepares(Protocol):
    """A model that fits something to its training data before training starts.

    Called by the train job once, after the model is built and before the optimiser's first
    step, with an iterable of normalised training image batches (no labels), in eval-size
    batches. It is called again when a run resumes from a checkpoint (the checkpoint then
    overwrites what it set). What it fits must be stored in buffers: the measure job never
    calls it. Example: Puppet-CNN's complexity range (percentiles of training entropy).
    """

    def prepare(self, batches: Iterable[torch.Tensor]) -> None: ...


@runtime_checkable
class HasObjective(Protocol):
    """A model trained with its own objective instead of cross-entropy on ``model(x)``.

    Called by the train job on every step of the train split, under autocast on GPU, in
    training mode; returns ``(loss, logits)``, the logits feeding the training accuracy.
    Examples: BranchyNet's joint loss over its exits, SkipNet's gate loss.
    """

    def compute_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


@runtime_checkable
class TrainsInPhases(Protocol):
    """A model trained in named stages, e.g. SkipNet's supervised pre-training ("sp") then
    hybrid reinforcement learning ("hrl").

    ``phase_names`` are the phases the model understands, as built (its model_kwargs may
    choose); an empty tuple means it needs none. The run's recipe splits training into phases
    with ``train.phases`` (each ending at a fraction of the run's optimizer steps, with its own
    learning-rate rule, applied by the trainer); the train job refuses, before training, a
    model of this kind with non-empty ``phase_names`` and no ``train.phases``, a phase name not
    in ``phase_names``, and ``train.phases`` for a model that is not of this kind.

    ``set_phase(name)`` is called by the train job only: in training mode, before the forward
    of the first optimizer step of each phase, and at the start of every sitting (a fresh run
    or a resume from a checkpoint) with the phase of its next step, or the last phase when no
    step is left, so a resumed run trains as an uninterrupted one would. The model stays in
    the last phase for calibration, the test evaluation and ``model.pt``. It may change how the
    model trains (its loss, its gates' sampling), not which parameters the optimiser holds,
    and inference must not depend on it: the measure job rebuilds the model and never calls it.
    """

    phase_names: tuple[str, ...]

    def set_phase(self, name: str) -> None: ...


@runtime_checkable
class Calibrates(Protocol):
    """A model that chooses inference-time settings after training.

    Called by the train job once, after the last epoch and before the test evaluation, with
    ``(x, y)`` batches of the validation split, never the test split; a model that calibrates
    refuses a config with ``data.val_size: 0`` before training starts. Returns a JSON-able
    record of what it chose (kept in ``train.json``). Its choices must be buffers, so they
    are saved in ``model.pt``. Example: early-exit thresholds.
    """

    def calibrate(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]: ...


@runtime_checkable
class ReportsStats(Protocol):
    """A model whose cost varies per input and says how, after every forward pass.

    ``last_stats`` maps names of ``STATS`` to values of the last forward's batch. Read by the
    evaluation (per-sample depth/exit histograms and means in ``train.json``) and by the
    measure job (generation MACs). Only read, never written, by the harness.
    """

    @property
    def last_stats(self) -> dict[str, torch.Tensor | float]: ...


@runtime_checkable
class CountsStoredParams(Protocol):
    """A model whose stored size is not its trainable parameter count.

    Called by the measure job and the tables for the "stored params" column: the numbers one
    must save to deploy the model. Generated weights are never counted.
    """

    def stored_param_count(self) -> int: ...


@runtime_checkable
class CountsTotalParams(Protocol):
    """A model with a paper-defined "Total params" (torchinfo's) other than all its parameters.

    Called by the tables (Table 5) and the measure job.
    """

    def total_param_count(self) -> int: ...


def _no_labelled_batches(batch_size: int, seed: int) -> Any:
    raise ValueError("this deployment is fine-tuned, but its DeployContext was given no train_batches")


@dataclass(frozen=True)
class DeployContext:
    """What building a deployment may need besides the trained model.

    ``options``: the config's deployment options for this model (e.g. a reduction's levels), empty
    when it names none. ``train_images``: called with no argument, an iterable of normalised
    training image batches (no labels) on the model's device, in their stored order, for a
    deployment fitted on training data (e.g. snapshots for POD); a deployment that needs none never
    calls it. ``train_batches``: called with ``(batch_size, seed)``, the labelled training split in
    shuffled batches of that size (the last partial one dropped), the same for the same seed, with
    ``epoch(e)`` for further epochs: for a deployment fine-tuned after it is built. ``cache``: what
    one deployment computed and the next may reuse within the same measure job (the snapshots
    shared by every POD level), keyed by the family that put it there.
    """

    options: Mapping[str, Any] = field(default_factory=dict)
    train_images: Callable[[], Iterable[torch.Tensor]] = lambda: ()
    train_batches: Callable[[int, int], Any] = _no_labelled_batches  # fails in one line where none was given

    cache: dict[Any, Any] = field(default_factory=dict)


DEFAULT_DEPLOYMENT = "default"  # every model's own forward, the training-time path


@runtime_checkable
class Deploys(Protocol):
    """A trained model that can be run at inference in more ways than its own ``forward``.

    A *deployment* is a way to run the trained model, built from it after ``model.pt`` is
    loaded. Every model has ``"default"`` (its own forward, eval mode); a model of this kind
    names more. The measure job builds each deployment with ``deploy(name, context)`` and
    measures it by the one measure path (accuracy on the test split, stored params, MACs,
    latency and throughput timed interleaved against ``"default"``), one row per deployment in
    ``metrics.csv`` keyed by ``deployment``.

    ``deployments(context)`` maps each name to a one-line description a table can show; it may
    describe ``"default"`` too (e.g. "kernels generated on the fly"), never build it.
    ``deploy(name, context)`` returns a module in eval mode whose ``forward(x)`` gives logits,
    and that is a snapshot: changing the model afterwards leaves it as it was (deploy again).
    It may implement ``ReportsStats``, ``CountsStoredParams``, ``CountsTotalParams`` and
    ``HasDeploymentMetrics`` like any model. Example: Puppet-CNN's ``"precomputed"``.
    """

    def deployments(self, context: DeployContext) -> dict[str, str]: ...

    def deploy(self, name: str, context: DeployContext) -> nn.Module: ...


@runtime_checkable
class HasDeploymentMetrics(Protocol):
    """A deployed module with costs of its own beyond the common columns.

    ``deployment_metrics()`` returns plain named numbers, units in the names, recorded as columns
    of its row (e.g. Puppet-CNN's precomputed ``kernels_mb``: the generated kernels' memory).
    Called by the measure job once per deployment.
    """

    def deployment_metrics(self) -> dict[str, float]: ...


PATHS = ("cheapest", "dearest")


@runtime_checkable
class RoutesPerInput(Protocol):
    """A model whose path through the network is chosen per input by what it learned (gates, exits,
    halting): its cost per image is a property of the trained model, not of the architecture.

    ``force_path(which)`` makes every later eval forward take the ``"cheapest"`` path (every
    decision that can stop or skip does) or the ``"dearest"`` one (none does); ``None`` gives the
    model its own decisions back. Called by the measure job of a cost-only run (``cost_only``),
    which reports such a model's cost as the range between the two paths, never as the untrained
    model's routing. A model whose depth follows its input alone, not a learned decision
    (Puppet-CNN: the input's complexity), is not of this kind.
    """

    def force_path(self, which: str | None) -> None: ...


def check_path(which: str | None) -> None:
    """Refuse a ``force_path`` argument other than the two paths and None, in one line."""
    if which is not None and which not in PATHS:
        raise ValueError(f"force_path: {which!r} is not a path; choose one of {', '.join(PATHS)} or None")
