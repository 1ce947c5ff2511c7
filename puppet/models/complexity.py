"""Input complexity H(x) of Puppet-CNN (paper eqs. 8-9), vectorised over the batch.

    E(v)  = - sum_b p_b log2 p_b                  (eq. 8: Shannon entropy of a 256-bin histogram)
    H(x)  = 1/2 E(grey(x)) + 1/2 E(Y(grey(x)))    (eq. 9: pixels and Fourier "frequency map")

What the paper leaves open and we chose (see the docs' Puppet-CNN page):

* grey map = the mean over colour channels;
* the model receives mean/std-normalised images, not uint8 pixels, so each grey map is
  min-max rescaled to [0, 1] per image before binning. That makes H invariant to any
  global affine normalisation a*x + b (a > 0); per-channel normalisation only changes
  the weights of the grey average slightly;
* Y = log(1 + |FFT2(grey)|), min-max rescaled to [0, 1] per image (the log keeps the DC
  term from putting every other frequency into the first bin);
* 256 bins, log base 2, so H lies in [0, 8] bits; a constant image has H = 0.

Everything runs on the input's device, without gradient, and with no loop over samples:
the histogram is one ``scatter_add_`` over a (B, bins) count matrix.
"""

from __future__ import annotations

import math

import torch

DEFAULT_BINS = 256


def unit_rescale(v: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Min-max rescale each row of ``v`` (B, N) to [0, 1]; a constant row becomes zeros."""
    lo, hi = torch.aminmax(v, dim=1, keepdim=True)
    return (v - lo) / (hi - lo).clamp_min(eps)  # (B, N)


def histogram_entropy(v: torch.Tensor, bins: int = DEFAULT_BINS) -> torch.Tensor:
    """Shannon entropy in bits of the ``bins``-bin histogram of each row of ``v`` (B, N), values in [0, 1].

    Bin b holds [b/bins, (b+1)/bins); the value 1.0 falls into the last bin (numpy's rule).
    """
    b, n = v.shape
    index = (v * bins).long().clamp_(0, bins - 1)  # (B, N)
    # float32 counts are exact up to 2**24 pixels per image. scatter_add_, not bincount: on CUDA
    # bincount reads the maximum back to the host to size its output
    counts = torch.zeros(b, bins, device=v.device, dtype=torch.float32)
    counts.scatter_add_(1, index, counts.new_ones(()).expand(b, n))  # (B, bins)
    p = counts / n
    return torch.special.xlogy(p, p).sum(dim=1) / -math.log(2)  # (B,); xlogy: 0 log 0 = 0


def grey_map(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W): channel mean, min-max rescaled to [0, 1] per image."""
    g = x.float().mean(dim=1)  # (B, H, W)
    return unit_rescale(g.flatten(1)).view_as(g)


def frequency_map(grey: torch.Tensor) -> torch.Tensor:
    """(B, H, W) -> (B, H, W): log(1 + |FFT2|), min-max rescaled to [0, 1] per image."""
    magnitude = torch.fft.fft2(grey).abs()  # (B, H, W)
    y = torch.log1p(magnitude)
    return unit_rescale(y.flatten(1)).view_as(y)


@torch.no_grad()
def image_complexity(x: torch.Tensor, bins: int = DEFAULT_BINS) -> torch.Tensor:
    """H(x) in bits for each image of a batch (B, C, H, W) -> (B,), eq. (9).

    Both histograms (pixels and frequency map) are taken in one call, on the input's device,
    with no loop over samples and nothing read back to the host.
    """
    b = x.shape[0]
    grey = grey_map(x)  # (B, H, W)
    maps = torch.cat([grey.flatten(1), frequency_map(grey).flatten(1)])  # (2B, H*W)
    return histogram_entropy(maps, bins).view(2, b).mean(dim=0)  # (E_pixels + E_freq) / 2
