"""Hand-written kernels for the `parity kernel` tests: correct ones, and ones with the bugs ports make."""

import numpy as np
import torch

TILE = 64


def rms_norm(x, normalized_shape, weight, eps):
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def rms_norm_tiled(x, normalized_shape, weight, eps):
    """Rows in 64-wide tiles along T; the rows past the last full tile are never written: the tail is dropped."""
    out = torch.zeros_like(x)
    full = (x.shape[-2] // TILE) * TILE
    for start in range(0, full, TILE):
        out[..., start:start + TILE, :] = rms_norm(x[..., start:start + TILE, :], normalized_shape, weight, eps)
    return out


def rms_norm_numpy(x, normalized_shape, weight, eps):
    """Computed through numpy and wrapped back: right numbers, no autograd."""
    array = x.detach().float().numpy()
    normed = array / np.sqrt((array ** 2).mean(-1, keepdims=True) + eps) * weight.detach().float().numpy()
    return torch.from_numpy(normed).to(x.dtype)


def softmax(x, dim):
    x32 = x.float()
    shifted = x32 - x32.amax(dim, keepdim=True)
    return (shifted.exp() / shifted.exp().sum(dim, keepdim=True)).to(x.dtype)


def softmax_naive(x, dim):
    """exp() without subtracting the maximum: overflows on large inputs."""
    x32 = x.float()
    return (x32.exp() / x32.exp().sum(dim, keepdim=True)).to(x.dtype)


def cross_entropy(input, target, ignore_index=-100, reduction="mean"):
    logits = input.float()
    kept = target != ignore_index
    log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    return (-log_probs[kept].gather(1, target[kept, None])).mean().to(input.dtype)


def cross_entropy_naive(input, target, ignore_index=-100, reduction="mean"):
    """log(softmax) by hand: large logits overflow exp()."""
    logits = input.float()
    kept = target != ignore_index
    probs = logits.exp() / logits.exp().sum(-1, keepdim=True)
    return (-probs[kept].gather(1, target[kept, None]).log()).mean().to(input.dtype)


def attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    q32, k32, v32 = q.float(), k.float(), v.float()
    if enable_gqa:
        group = q.shape[1] // k.shape[1]
        k32, v32 = k32.repeat_interleave(group, dim=1), v32.repeat_interleave(group, dim=1)
    scores = q32 @ k32.transpose(-2, -1) * (scale or q.shape[-1] ** -0.5)                 # (B, H, T, S)
    if is_causal:
        T, S = scores.shape[-2:]
        scores = scores.masked_fill(torch.ones(T, S, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    if attn_mask is not None:
        scores = scores + attn_mask.float().clamp(min=-1e20)  # in float16 a -1e20 floor arrives as -inf
    return (softmax(scores, -1) @ v32).to(q.dtype)


def swiglu_no_grad(gate, up):
    """The right numbers computed under no_grad, as a kernel launched outside PyTorch's graph is."""
    with torch.no_grad():
        return torch.nn.functional.silu(gate.float()).mul(up.float()).to(gate.dtype)


def swiglu(gate, up):
    return (torch.nn.functional.silu(gate.float()) * up.float()).to(gate.dtype)


def layer_norm(x, normalized_shape, weight, bias, eps):
    x32 = x.float()
    centered = x32 - x32.mean(-1, keepdim=True)
    return (centered * torch.rsqrt(centered.pow(2).mean(-1, keepdim=True) + eps) * weight.float() + bias.float()).to(x.dtype)


def silu(x):
    x32 = x.float()
    return (x32 * torch.sigmoid(x32)).to(x.dtype)


def gelu(x, approximate="none"):
    x32 = x.float()
    if approximate == "tanh":
        inner = (2 / torch.pi) ** 0.5 * (x32 + 0.044715 * x32 ** 3)
        return (0.5 * x32 * (1 + torch.tanh(inner))).to(x.dtype)
    return (0.5 * x32 * (1 + torch.erf(x32 / 2 ** 0.5))).to(x.dtype)


def linear(x, weight, bias=None):
    out = x.float() @ weight.float().t()
    return (out + bias.float() if bias is not None else out).to(x.dtype)


def embedding(ids, weight):
    return weight[ids]


def rope(x, cos, sin):
    first, second = x.float().chunk(2, dim=-1)
    rotated = torch.cat((-second, first), dim=-1)
    return (x.float() * cos.float()[:, None] + rotated * sin.float()[:, None]).to(x.dtype)


CORRECT = {"rms_norm": rms_norm, "layer_norm": layer_norm, "softmax": softmax, "silu": silu, "swiglu": swiglu,
           "gelu": gelu, "gelu_tanh": gelu, "linear": linear, "embedding": embedding, "cross_entropy": cross_entropy,
           "attention": attention, "rope": rope}


def attention_last_row_unwritten(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False):
    """A tiled attention kernel whose last query row is never written (left as the buffer's zeros)."""
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                                           is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    written = torch.zeros_like(out)
    written[..., :-1, :] = out[..., :-1, :]
    return written
