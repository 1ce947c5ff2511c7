"""Puppet-CNN and shared layers. Every non-underscore module here is imported by the registry."""
