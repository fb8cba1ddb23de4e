"""prss-mini: a from-scratch, educational implementation of PRSS (Chen et al., CVPR 2025).

Read the package like the table of contents of a lecture:

    world.py         the toy world: images, captions, memorization on purpose
    text_encoder.py  word tokenizer and a tiny CLIP-style text encoder
    unet.py          the noise-prediction network with cross-attention
    diffusion.py     schedules, add_noise, DDPM / DDIM steps, the sampling loop
    guidance/        CFG, memorization detection, PR, SS, PRSS and the baselines
    metrics.py       copy detection, text alignment, ROC-AUC
    experiment       train_toy.py, sample.py, evaluate.py

    stable_diffusion.py  past the toy: the same PRSS on a diffusers Stable Diffusion pipeline (optional,
                         needs diffusers; nothing above imports it)
"""
