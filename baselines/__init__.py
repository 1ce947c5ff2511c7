"""Baseline models of the Puppet-CNN paper; every non-underscore module here is imported by the registry."""
