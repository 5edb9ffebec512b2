"""Fused ops shared by the architectures in models/: a PyTorch reference beside a Triton kernel for each.

Models call the dispatch functions below; each runs its Triton kernel on CUDA tensors and a PyTorch
path elsewhere (see kernels/README.md for what runs where and the measured figures).
"""

from kernels.cross_entropy import IGNORE_INDEX, linear_cross_entropy
from kernels.fft_conv import fft_conv
from kernels.linear_attention import (
    LinearAttentionState,
    linear_attention,
    linear_attention_step,
    prefix_state,
    taylor_feature_map,
)
from kernels.rmsnorm import rms_norm
from kernels.rotary import apply_rotary, rotary_tables

__all__ = [
    "IGNORE_INDEX",
    "LinearAttentionState",
    "apply_rotary",
    "fft_conv",
    "linear_attention",
    "linear_attention_step",
    "linear_cross_entropy",
    "prefix_state",
    "rms_norm",
    "rotary_tables",
    "taylor_feature_map",
]
