"""float32 as a port computes it: RoPE's frequencies rounded its own way, emulated.

transformers computes each rotary frequency once, in float32 (`inv_freq`), and the
float64 reference widens those very float32 values: its run and the float32 calibration
run share them, so the calibration sees none of their rounding. A port computes them
its own way (`powf(theta, -i / d)` in C, a table in float16, a closed form in float64),
and a frequency one unit in the last place away turns position p by p ulps more: the
error grows with the position. Measured on SmolLM2 with a C port (examples/c/llama.c)
over 2,048 tokens: layers.0.q_rope 7.9x the calibration's noise, first over the bound
near position 1,900; no other checkpoint.

A frequency is f = theta^(-x), x = 2i/d. Computed in float32, x carries a rounding of
relative size u, which the power multiplies by ln(theta) * x = -ln(f), and f its own
final rounding. While `rounded_frequencies(model)` is active, each frequency buffer of
the model's rotary modules (`inv_freq`, or one per kind of layer, `sliding_attention_inv_freq`
and `full_attention_inv_freq` in Gemma 3 and the models built like it) is moved by that much: each f by f * e * u * sqrt(1/3 +
ln(f)^2), e = +1 or -1 from a generator seeded the same way in every run (the angle
p * f moves most where f is near 1/e); the buffers are put back after. With it the C
port's layers.0.q_rope at 2,048 tokens is within its bound.

Each frequency moves by its whole spread, in a random direction: a few frequencies carry
most of q_rope's error, so a normal e's magnitudes, a chi-square of few terms, made the
calibration's noise anything from a third to twice its expected size (SmolLM2 over 2,048
tokens, 40 seeds: 5.0e-6 to 2.8e-5, root mean square 1.4e-5). The seed in use drew
7.4e-6; mlx-lm's Llama, whose frequencies are exp(-i ln(theta) / (d/2)) in float32,
measured 1.41e-5, and at layers.9.attn_ctx that twice-the-noise turned 3.3x the
calibration's worst position at one position (1,848) and failed. With signs alone the
same model gives 1.0e-5 to 1.7e-5.
"""

from __future__ import annotations

from contextlib import contextmanager

UNIT_ROUNDOFF = 2.0 ** -24     # float32
SEED = 1


@contextmanager
def rounded_frequencies(model):
    """While active, the rotary frequencies of `model` (a torch module) are rounded as another float32 port's."""
    import torch

    generator = torch.Generator().manual_seed(SEED)
    kept = []
    try:
        for module in model.modules():
            for name in frequency_buffers(module):
                frequencies = getattr(module, name)
                kept.append((module, name, frequencies))
                wide = frequencies.double()
                spread = UNIT_ROUNDOFF * torch.sqrt(1 / 3 + torch.log(wide.abs().clamp_min(1e-300)) ** 2)
                signs = torch.randint(0, 2, frequencies.shape, generator=generator, dtype=torch.float64) * 2 - 1
                moved = wide * (1 + signs.to(wide.device) * spread)
                setattr(module, name, moved.to(frequencies.dtype))
        yield model
    finally:
        for module, name, frequencies in kept:
            setattr(module, name, frequencies)


def frequency_buffers(module) -> list[str]:
    """The names of `module`'s own rotary frequency buffers, in its order: `inv_freq`, or `<kind>_inv_freq`
    for each kind of layer. The `original_inv_freq` copies dynamic RoPE restores from are not used by a forward."""
    import torch

    names = []
    for name, buffer in module.named_buffers(recurse=False):
        if (name == "inv_freq" or name.endswith("_inv_freq")) and "original" not in name \
                and isinstance(buffer, torch.Tensor) and buffer.is_floating_point():
            names.append(name)
    if not names and isinstance(getattr(module, "inv_freq", None), torch.Tensor) \
            and module.inv_freq.is_floating_point():
        names.append("inv_freq")          # kept as a plain attribute, not a buffer
    return names
