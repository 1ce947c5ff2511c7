"""The harness core: registry, config and run specs, data, training, evaluation, measurement.

Nothing here imports ``puppet.report`` or names a model: models reach the core through the
registry and the hooks of ``puppet.core.protocols``.
"""
