"""Reporting: collate runs into ``results/metrics.csv``, then the paper-layout tables, the
figures, the paper's own numbers (``paper``) and committed snapshots (``publish``).

Reads what the core wrote; the core never imports this package.
"""
