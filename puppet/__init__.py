"""puppet-bench: Puppet-CNN and the harness that trains, measures and tabulates it.

The public entry points are the model registry (``register_model``,
``create_model``, ``list_models``) and the CLI (``python -m puppet``).
"""

from puppet.core.registry import create_model, list_models, model_info, register_model

__all__ = ["create_model", "list_models", "model_info", "register_model"]
__version__ = "0.1.0"
