"""Temporal pooling layers for speaker embeddings: (B, C, T) frame features -> (B, C') vectors.

* :class:`TemporalAveragePooling` (TAP) and :class:`TemporalMaxPooling` (MAX).
* :class:`SelfAttentivePooling` (SAP) and :class:`AttentiveStatisticsPooling` (ASP): one scalar
  attention weight per frame, ``w_t = softmax_t(tanh(W x_t + b) . a)`` (Cai et al., Odyssey 2018;
  Okabe et al., Interspeech 2018), as in voxceleb_trainer's ResNetSE34L and VGGVox40.
* :class:`AttentiveStatsPool`: channel-dependent attention with optional global context
  ``[x_t, mean, std]`` (Desplanques et al., "ECAPA-TDNN", Interspeech 2020), also the pooling of
  voxceleb_trainer's ResNetSE34V2 (H/ASP) and RawNet3.

The functional helpers :func:`self_attention_weights` and :func:`weighted_mean_std` are exported
for models whose checkpoints keep the attention parameters at their top level
(``sap_linear``, ``attention``). Statistics are computed in float32 even under autocast, because
``E[x^2] - E[x]^2`` in bf16/fp16 loses the variance to cancellation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from speechkit.errors import ConfigError

__all__ = [
    "self_attention_weights",
    "weighted_mean_std",
    "TemporalAveragePooling",
    "TemporalMaxPooling",
    "SelfAttentivePooling",
    "AttentiveStatisticsPooling",
    "AttentiveStatsPool",
]


def _check_bct(x: torch.Tensor, who: str) -> None:
    if x.dim() != 3:
        raise ValueError(f"{who}: expected (B, C, T) frame features, got shape {tuple(x.shape)}")


def self_attention_weights(
    x: torch.Tensor, sap_linear: nn.Linear, attention: torch.Tensor
) -> torch.Tensor:
    """Scalar self-attention weight per frame (SAP).

    ``w_t = softmax_t(tanh(sap_linear(x_t)) @ attention)``.

    Args:
        x: (B, T, C) frame features (time-major).
        sap_linear: Linear(C, C).
        attention: (C, 1) attention context vector.

    Returns:
        (B, T, 1) weights summing to one over T.
    """
    scores = torch.matmul(torch.tanh(sap_linear(x)), attention)  # (B, T, 1)
    return torch.softmax(scores.float(), dim=1)


def weighted_mean_std(
    x: torch.Tensor,
    weights: torch.Tensor,
    dim: int,
    min_var: float = 1e-5,
    max_var: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention-weighted mean and standard deviation along ``dim``, in float32.

    ``mu = sum w x``, ``sigma = sqrt(clamp(sum w x^2 - mu^2, min_var, max_var))``.

    Args:
        x: features, e.g. (B, C, T) or (B, T, C).
        weights: broadcastable to ``x``, summing to one along ``dim``.
        dim: the time axis.
        min_var, max_var: clamp of the variance (keeps sqrt's gradient finite).

    Returns:
        ``(mu, sigma)`` with ``dim`` removed, float32.
    """
    x = x.float()
    weights = weights.float()
    mu = torch.sum(x * weights, dim=dim)
    var = torch.sum(x.square() * weights, dim=dim) - mu.square()
    return mu, torch.sqrt(var.clamp(min=min_var, max=max_var))


class TemporalAveragePooling(nn.Module):
    """TAP: mean over time. (B, C, T) -> (B, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_bct(x, type(self).__name__)
        return x.mean(dim=-1)

    @staticmethod
    def output_dim(input_dim: int) -> int:
        """Output size for ``input_dim`` channels: ``input_dim``."""
        return input_dim


class TemporalMaxPooling(nn.Module):
    """MAX: maximum over time. (B, C, T) -> (B, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_bct(x, type(self).__name__)
        return x.amax(dim=-1)

    @staticmethod
    def output_dim(input_dim: int) -> int:
        """Output size for ``input_dim`` channels: ``input_dim``."""
        return input_dim


class SelfAttentivePooling(nn.Module):
    """SAP: attention-weighted mean with one scalar weight per frame.

    Parameters (voxceleb_trainer names): ``sap_linear`` Linear(C, C) and ``attention`` (C, 1),
    xavier-normal initialised.

    Args:
        input_dim: channels C.

    Shapes:
        (B, C, T) -> (B, C).
    """

    def __init__(self, input_dim: int):
        super().__init__()
        self.sap_linear = nn.Linear(input_dim, input_dim)
        self.attention = nn.Parameter(torch.empty(input_dim, 1))
        nn.init.xavier_normal_(self.attention)

    def _weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_bct(x, type(self).__name__)
        frames = x.transpose(1, 2)  # (B, T, C)
        return frames, self_attention_weights(frames, self.sap_linear, self.attention)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames, w = self._weights(x)
        return torch.sum(frames.float() * w, dim=1)

    @staticmethod
    def output_dim(input_dim: int) -> int:
        """Output size for ``input_dim`` channels: ``input_dim``."""
        return input_dim


class AttentiveStatisticsPooling(SelfAttentivePooling):
    """ASP: SAP weights, output ``[weighted mean, weighted std]`` (std variance clamp 1e-5).

    Shapes:
        (B, C, T) -> (B, 2C).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames, w = self._weights(x)
        mu, sigma = weighted_mean_std(frames, w, dim=1, min_var=1e-5)
        return torch.cat([mu, sigma], dim=1)

    @staticmethod
    def output_dim(input_dim: int) -> int:
        """Output size for ``input_dim`` channels: ``2 * input_dim``."""
        return 2 * input_dim


_ACTIVATIONS = ("tanh", "relu_bn", "relu_bn_tanh")


class AttentiveStatsPool(nn.Sequential):
    """Channel- and context-dependent attentive statistics pooling (ECAPA-TDNN).

    Attention scores come from a 1x1-conv bottleneck over ``h_t`` (``[x_t, mean, std]`` with
    ``global_context``, where mean/std are the unweighted statistics over T broadcast to every
    frame and std uses the unbiased variance), softmax over time separately for every channel
    (``channel_wise``) or one weight per frame shared by all channels. Output: weighted mean,
    plus weighted std when ``with_std``.

    The module *is* the attention ``nn.Sequential`` so that its parameters carry the reference
    indices: ``activation="relu_bn"`` gives [Conv1d, ReLU, BatchNorm1d, Conv1d] = keys ``0``,
    ``2``, ``3`` (voxceleb_trainer ResNetSE34V2 and RawNet3 ``attention.*``); ``"tanh"`` gives
    [Conv1d, Tanh, Conv1d] (wespeaker's ECAPA); ``"relu_bn_tanh"`` adds Tanh after the BN.

    Args:
        input_dim: channels C of the frame features.
        bottleneck_dim: hidden channels of the attention (128).
        global_context: append the utterance mean and std to every frame's attention input.
        activation: ``"tanh"``, ``"relu_bn"`` or ``"relu_bn_tanh"``.
        channel_wise: one attention distribution per channel (C outputs) or one shared (1 output).
        with_std: also output the weighted std (ASP) rather than only the mean (SAP).
        min_var, max_var: variance clamp for both the context std and the weighted std.

    Shapes:
        (B, C, T) -> (B, 2C) with std, else (B, C).

    Raises:
        ConfigError: on an unknown activation.
    """

    def __init__(
        self,
        input_dim: int,
        bottleneck_dim: int = 128,
        global_context: bool = True,
        activation: str = "tanh",
        channel_wise: bool = True,
        with_std: bool = True,
        min_var: float = 1e-5,
        max_var: float | None = None,
    ):
        if activation not in _ACTIVATIONS:
            raise ConfigError(
                f"AttentiveStatsPool: activation must be one of {_ACTIVATIONS}, got '{activation}'"
            )
        in_channels = 3 * input_dim if global_context else input_dim
        layers: list[nn.Module] = [nn.Conv1d(in_channels, bottleneck_dim, kernel_size=1)]
        if activation == "tanh":
            layers.append(nn.Tanh())
        else:
            layers += [nn.ReLU(), nn.BatchNorm1d(bottleneck_dim)]
            if activation == "relu_bn_tanh":
                layers.append(nn.Tanh())
        layers.append(nn.Conv1d(bottleneck_dim, input_dim if channel_wise else 1, kernel_size=1))
        super().__init__(*layers)
        self.input_dim = input_dim
        self.global_context = global_context
        self.with_std = with_std
        self.min_var = min_var
        self.max_var = max_var

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_bct(x, type(self).__name__)
        h = x
        if self.global_context:
            num_frames = x.shape[-1]
            mean = x.mean(dim=-1, keepdim=True)
            std = x.float().var(dim=-1, keepdim=True).clamp(self.min_var, self.max_var).sqrt()
            h = torch.cat(
                [x, mean.expand(-1, -1, num_frames), std.to(x.dtype).expand(-1, -1, num_frames)],
                dim=1,
            )
        scores = super().forward(h)  # (B, C or 1, T)
        weights = F.softmax(scores.float(), dim=-1)
        mu, sigma = weighted_mean_std(
            x, weights, dim=-1, min_var=self.min_var, max_var=self.max_var
        )
        return torch.cat([mu, sigma], dim=1) if self.with_std else mu

    def output_dim(self, input_dim: int | None = None) -> int:
        """Output size: ``2 C`` with std, else ``C`` (``C`` = ``input_dim`` or the built size)."""
        c = self.input_dim if input_dim is None else input_dim
        return 2 * c if self.with_std else c
