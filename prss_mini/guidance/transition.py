"""Static / opposite guidance before a transition step (Jain et al., CVPR 2025).

Memorization is decided early, in the high-noise steps, where CFG commits the sample to the training image.
So guide weakly there and normally afterwards, with eps = eps_u + s_i (eps_c - eps_u):

    s_i = early_scale      for step index i < transition_step   (0: unconditional, < 0 e.g. -2: opposite)
    s_i = guidance_scale   from transition_step on

The knob `transition_step` is swept; transition_step = 0 is plain CFG.
"""

from ..diffusion import classifier_free_guidance, predict_noise
from .knobs import Knob
from .rows import encode_rows

TITLE = "transition guidance (Jain et al.)"
KNOBS = (Knob("transition_step", int, 10, "step index where normal guidance starts"),
         Knob("early_scale", float, 0.0, "guidance scale before it (0: none, < 0: opposite)"))
SWEEP = [{"transition_step": 10}, {"transition_step": 20}, {"transition_step": 30}]
VARIANTS = []
BASELINE = True


def transition_scale(i, transition_step, guidance_scale, early_scale=0.0):
    """The guidance scale at step index i (0 = first, noisiest)."""
    if transition_step < 0:
        raise ValueError(f"transition_step must be >= 0, got {transition_step}")
    return early_scale if i < transition_step else guidance_scale


def build(pipe, prompt, x_T, guidance_scale, seed, transition_step, early_scale):
    """CFG whose scale switches from early_scale to guidance_scale at step index transition_step."""
    transition_scale(0, transition_step, guidance_scale, early_scale)      # validate the knobs up front
    cond = encode_rows(pipe, prompt, len(x_T))                             # (B, L, D)
    uncond = pipe.empty                                                    # (1, L, D)
    info = {"scales": []}

    def hook(x_t, t, i):
        eps_u, eps_c = predict_noise(pipe.unet, x_t, t, [uncond, cond])
        s = transition_scale(i, transition_step, guidance_scale, early_scale)
        info["scales"].append(s)
        return classifier_free_guidance(eps_u, eps_c, s)

    return hook, info
