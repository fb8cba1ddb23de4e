"""A tiny, randomly initialised Stable Diffusion pipeline: a test fixture, built on a CPU without any download.

Its images and magnitudes are noise; it exists so that tests/test_stable_diffusion.py and tutorial 10 run the
real diffusers code paths of prss_mini/stable_diffusion.py anywhere. Needs diffusers and transformers.
"""

import json
import os

import torch


def tiny_unet(seed=0, cross_attention_dim=16):
    """A randomly initialised UNet2DConditionModel on (B, 4, 8, 8) latents: one cross-attention layer on the down
    path (8 x 8) and one on the up path, torch.manual_seed(seed) before its weights are drawn; in eval mode."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), norm_num_groups=4,
                                cross_attention_dim=cross_attention_dim, attention_head_dim=2,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()


def tiny_random_pipeline(seed=0):
    """A randomly initialised StableDiffusionPipeline small enough for a CPU, built without any download.

    UNet on (B, 4, 8, 8) latents, a VAE to 16x16 images, a 1-layer CLIP text encoder (D = 16) and a CLIP tokenizer
    whose vocabulary is the 256 single bytes. For tests and smoke runs only: its images and magnitudes are noise,
    and SD's thresholds (1, 3, 5) mean nothing on it."""
    import tempfile

    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from tokenizers import pre_tokenizers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from .stable_diffusion import sd_v14_ddim  # here, not at the top: stable_diffusion.py imports this file

    unet = tiny_unet(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=514, hidden_size=16, intermediate_size=32,
                                                num_hidden_layers=1, num_attention_heads=2,
                                                max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                                                pad_token_id=1))
    for module in (unet, vae, text_encoder):
        module.eval()
    chars = sorted(pre_tokenizers.ByteLevel.alphabet())  # byte-level BPE with no merges: one token per byte
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{c: 2 + i for i, c in enumerate(chars)},
             **{c + "</w>": 2 + len(chars) + i for i, c in enumerate(chars)}}
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "vocab.json"), "w") as f:
            json.dump(vocab, f)
        with open(os.path.join(folder, "merges.txt"), "w") as f:
            f.write("#version: 0.2\n")
        tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=77)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=sd_v14_ddim(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
