"""Puppet-CNN: complexity -> puppeteer (a neural ODE) -> per-level kernels -> the puppet CNN.

Every non-underscore module here is imported by the registry; the registered entry points
are in ``puppet.models.variants``. ``plan`` (layer plans and their one interpreter), ``puppet``
(the model), ``deploy`` (the precomputed deployment).
"""
