"""Puppet-CNN: complexity -> puppeteer (a neural ODE) -> per-level kernels -> the puppet CNN.

Every non-underscore module here is imported by the registry; the registered entry points
are at the end of ``puppet.models.puppet``.
"""
