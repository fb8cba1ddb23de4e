"""prss-mini: a from-scratch, educational implementation of PRSS (Chen et al., CVPR 2025).

Read the package like the table of contents of a lecture:

    captions.py      the toy's captions: a small grammar of shapes, colours, positions, and its reader
    world.py         the toy world: drawing its pictures, the training groups, memorization on purpose
    prompts.py       its prompt groups (memorized, controls) and the prompts a measurement draws from them
    images.py        image formats (float, uint8, the model's [-1, 1] tensors) and save_grid, the one PNG grid
    text_encoder.py  word tokenizer and a tiny CLIP-style text encoder
    unet.py          the noise-prediction network with cross-attention
    diffusion.py     schedules, add_noise, DDPM / DDIM steps, the sampling loop, CFG
    loss.py          the training loss: eps or v targets, caption dropout, per-noise-level weights
    guidance/        memorization detection, SS, PR, PRSS and the baselines, one file each (registry: METHODS)
    metrics.py       copy detection, the stamp, ROC-AUC, Wilson intervals
    judges.py        the utility judges, trained apart from the model under test

    the experiment:
    config.py        every knob of a run and its presets          checkpoint.py  files that survive Ctrl-C
    pipeline.py      a trained run folder, loaded: prompts in, images out
    sample.py        the sampling command                         evaluate.py    the evaluation protocol
    pooling.py       an evaluation pooled over training seeds: intervals that resample prompts
    analysis.py      frontier, dominance, cost                    report.py      tables; figures.py  figures
    physics.py       the toy's magnitude curves beside Stable Diffusion's (r1, r2, r3)
    (train_toy.py, at the top of the repo, trains a run)

    stable_diffusion.py  past the toy: the same PRSS on a diffusers Stable Diffusion pipeline (optional,
                         needs diffusers; nothing above imports it)
    sd_candidates.py     its paraphrases: a list, or the official code's jsonl
    sd_tiny.py           a tiny random Stable Diffusion pipeline, for its tests
"""
