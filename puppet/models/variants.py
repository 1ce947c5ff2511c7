"""The registered Puppet models: Puppet-CNN and its Table 3 variants, with their parameter formulas.

Each builder returns a ``PuppetCNN`` (``puppet.models.puppet``) over a layer plan
(``puppet.models.plan``); the registry imports this module with the rest of ``puppet.models``.
"""

from __future__ import annotations

import math
from typing import Callable

from puppet.core.registry import register_model
from puppet.models.plan import ALEXNET_CFG, Op, cfg_plan, resnet_plan, stage_plan, vgg_cfg
from puppet.models.puppet import PuppetCNN, PuppetConfig


def _config(kwargs: dict) -> PuppetConfig:
    return PuppetConfig(**kwargs)  # unknown keys: TypeError, as the registry contract asks


def _stages(in_channels: int, max_channels: int) -> Callable[[int], list[Op]]:
    return lambda depth: stage_plan(in_channels, max_channels, depth)


def _fixed(plan: list[Op]) -> Callable[[int], list[Op]]:
    return lambda depth: plan


def _stage_formula(adapt_depth: bool) -> Callable[..., int]:
    def formula(num_classes: int, in_channels: int, image_size: int, max_channels: int = 512, **kw) -> int:
        """C^2 + 15C (puppeteer) + 2 c_out per BN slot + head; slots per stage = round(T / dl_min) or fixed_depth."""
        c = max_channels
        dl_min, horizon = kw.get("dl_min", 1 / 8), kw.get("stage_horizon", 1.0)
        per_stage = math.floor(horizon / dl_min + 0.5) if adapt_depth else kw.get("fixed_depth", 4)
        widths = [max(4, min(round(w * c / 512), c)) for w in (64, 128, 256, 512)]
        bn = sum(2 * w * per_stage for w in widths)
        return (c * c + 15 * c) + bn + widths[-1] * num_classes + num_classes

    return formula


_ALEXNET_CONVS = (64, 192, 384, 256, 256)
_VGG_CONVS = {
    11: (64, 128, 256, 256, 512, 512, 512, 512),
    13: (64, 64, 128, 128, 256, 256, 512, 512, 512, 512),
    16: (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512),
    19: (64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512),
}


def _cfg_formula(conv_widths: tuple[int, ...], c: int, num_classes: int) -> int:
    """Puppeteer + a BN per generated conv (the convs, then two hidden FCs of width min(4096 scaled, C)) + head."""
    widths = [max(4, min(round(w * c / 512), c)) for w in conv_widths] + [c, c]
    return (c * c + 15 * c) + sum(2 * w for w in widths) + widths[-1] * num_classes + num_classes


def _alexnet_formula(num_classes: int, in_channels: int, image_size: int, max_channels: int = 512, **kw) -> int:
    return _cfg_formula(_ALEXNET_CONVS, max_channels, num_classes)


def _vgg_formula(
    num_classes: int, in_channels: int, image_size: int, max_channels: int = 512, depth: int = 11, **kw
) -> int:
    return _cfg_formula(_VGG_CONVS[depth], max_channels, num_classes)


def _resnet_formula(
    num_classes: int, in_channels: int, image_size: int, max_channels: int = 512, depth: int = 18, **kw
) -> int:
    """Stem + two convs per block + a 1x1 shortcut at each stage change, each with a BN; head from the last width."""
    c = max_channels
    w = [max(4, min(round(v * c / 512), c)) for v in (64, 128, 256, 512)]
    blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}[depth]
    bn = 2 * w[0]  # stem
    bn += 2 * (2 * blocks[0] * w[0])  # stage 1: no shortcut (64 -> 64, stride 1)
    for width, n in zip(w[1:], blocks[1:]):
        bn += 2 * (2 * n * width + width)  # two convs per block + one shortcut
    return (c * c + 15 * c) + bn + w[3] * num_classes + num_classes


def _build(
    plan_for_depth, num_classes: int, max_channels: int, kwargs: dict, adapt_kernels: bool, adapt_depth: bool
) -> PuppetCNN:
    return PuppetCNN(
        plan_for_depth, num_classes, max_channels, _config(kwargs), adapt_kernels=adapt_kernels, adapt_depth=adapt_depth
    )


# The puppeteer (the small neural ODE that generates the kernels) keeps the initialisation of the
# Puppet-CNN spec, not torchvision's ResNet rule; the puppet's kernels are generated, not conv weights.
_PUPPETEER_INIT = ("puppeteer", "puppeteer.*")


@register_model(
    "puppet_cnn",
    family="puppet",
    init_exempt=_PUPPETEER_INIT,
    paper_name="Puppet-CNN",
    param_formula=_stage_formula(True),
)
def puppet_cnn(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, **kwargs
) -> PuppetCNN:
    """Puppet-CNN: kernels and depth generated from the input's complexity by the puppeteer ODE."""
    return _build(_stages(in_channels, max_channels), num_classes, max_channels, kwargs, True, True)


@register_model(
    "puppet_cnn_param",
    family="puppet",
    init_exempt=_PUPPETEER_INIT,
    paper_name="Puppet-CNN (parameter adaptation)",
    param_formula=_stage_formula(False),
)
def puppet_cnn_param(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, **kwargs
) -> PuppetCNN:
    """Puppet-CNN with input-adaptive kernels and a fixed depth (fixed_depth layers per stage)."""
    return _build(_stages(in_channels, max_channels), num_classes, max_channels, kwargs, True, False)


@register_model(
    "puppet_cnn_static",
    family="puppet",
    init_exempt=_PUPPETEER_INIT,
    paper_name="Puppet-CNN (Puppeteer-Puppet scheme)",
    param_formula=_stage_formula(False),
)
def puppet_cnn_static(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, **kwargs
) -> PuppetCNN:
    """Puppeteer-Puppet scheme: kernels generated by the ODE from a constant P0 and step (no input adaptation)."""
    return _build(_stages(in_channels, max_channels), num_classes, max_channels, kwargs, False, False)


# Table 3: a fixed CNN's structure with puppeteer-generated 3x3 kernels, fixed depth.
# puppet_<name>: P0 and the step from the input ("parameter adaptation");
# puppet_<name>_static: a constant P0 and step ("Puppeteer-Puppet scheme").
_ADAPTIVE, _STATIC = "parameter adaptation", "Puppeteer-Puppet scheme"


@register_model(
    "puppet_alexnet",
    family="puppet",
    init_exempt=_PUPPETEER_INIT,
    paper_name=f"Puppet-AlexNet ({_ADAPTIVE})",
    param_formula=_alexnet_formula,
)
def puppet_alexnet(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, **kwargs
) -> PuppetCNN:
    """Puppet-AlexNet: the AlexNet structure with puppeteer-generated 3x3 kernels (parameter adaptation)."""
    plan = cfg_plan(ALEXNET_CFG, in_channels, max_channels)
    return _build(_fixed(plan), num_classes, max_channels, kwargs, True, False)


@register_model(
    "puppet_alexnet_static",
    family="puppet",
    init_exempt=_PUPPETEER_INIT,
    paper_name=f"Puppet-AlexNet ({_STATIC})",
    param_formula=_alexnet_formula,
)
def puppet_alexnet_static(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, max_channels: int = 512, **kwargs
) -> PuppetCNN:
    """Puppet-AlexNet: the AlexNet structure with puppeteer-generated 3x3 kernels (Puppeteer-Puppet scheme)."""
    plan = cfg_plan(ALEXNET_CFG, in_channels, max_channels)
    return _build(_fixed(plan), num_classes, max_channels, kwargs, False, False)


@register_model(
    "puppet_vgg",
    family="puppet",
    init_exempt=_PUPPETEER_INIT,
    paper_name=f"Puppet-VGG ({_ADAPTIVE})",
    param_formula=_vgg_formula,
)
def puppet_vgg(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    max_channels: int = 512,
    *,
    depth: int = 11,
    **kwargs,
) -> PuppetCNN:
    """Puppet-VGG: the VGG structure with puppeteer-generated 3x3 kernels (parameter adaptation)."""
    plan = cfg_plan(vgg_cfg(depth), in_channels, max_channels)  # depth: the VGG variant (Fig. 4)
    return _build(_fixed(plan), num_classes, max_channels, kwargs, True, False)


@register_model(
    "puppet_vgg_static",
    family="puppet",
    init_exempt=_PUPPETEER_INIT,
    paper_name=f"Puppet-VGG ({_STATIC})",
    param_formula=_vgg_formula,
)
def puppet_vgg_static(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    max_channels: int = 512,
    *,
    depth: int = 11,
    **kwargs,
) -> PuppetCNN:
    """Puppet-VGG: the VGG structure with puppeteer-generated 3x3 kernels (Puppeteer-Puppet scheme)."""
    plan = cfg_plan(vgg_cfg(depth), in_channels, max_channels)
    return _build(_fixed(plan), num_classes, max_channels, kwargs, False, False)


@register_model(
    "puppet_resnet",
    family="puppet",
    init_exempt=_PUPPETEER_INIT,
    paper_name=f"Puppet-ResNet ({_ADAPTIVE})",
    param_formula=_resnet_formula,
)
def puppet_resnet(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    max_channels: int = 512,
    *,
    depth: int = 18,
    **kwargs,
) -> PuppetCNN:
    """Puppet-ResNet: the ResNet structure with puppeteer-generated 3x3 kernels (parameter adaptation)."""
    plan = resnet_plan(in_channels, max_channels, depth)  # depth: the ResNet variant (Fig. 4)
    return _build(_fixed(plan), num_classes, max_channels, kwargs, True, False)


@register_model(
    "puppet_resnet_static",
    family="puppet",
    init_exempt=_PUPPETEER_INIT,
    paper_name=f"Puppet-ResNet ({_STATIC})",
    param_formula=_resnet_formula,
)
def puppet_resnet_static(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    max_channels: int = 512,
    *,
    depth: int = 18,
    **kwargs,
) -> PuppetCNN:
    """Puppet-ResNet: the ResNet structure with puppeteer-generated 3x3 kernels (Puppeteer-Puppet scheme)."""
    plan = resnet_plan(in_channels, max_channels, depth)
    return _build(_fixed(plan), num_classes, max_channels, kwargs, False, False)
