"""Fixtures for the inpainting tests: a tiny random-weight SD inpainting pipeline saved to disk."""

from __future__ import annotations

import json

import pytest
import torch


def _byte_unicode() -> list[str]:
    """GPT-2/CLIP byte -> unicode table (the base vocabulary of a byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def build_tiny_sd_inpaint(path, unet_in_channels: int = 9):
    """Build, save (``save_pretrained``) and return a tiny random SD inpainting pipeline."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionInpaintPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=16,
        in_channels=unet_in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
    )
    chars = _byte_unicode()
    vocab_list = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(vocab_list)}
    tok_dir = path / "_tok"
    tok_dir.mkdir(parents=True, exist_ok=True)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    import inspect

    files = {"vocab_file": str(tok_dir / "vocab.json"), "merges_file": str(tok_dir / "merges.txt")}
    if "vocab" in inspect.signature(CLIPTokenizer.__init__).parameters:  # transformers >= 5
        files = {"vocab": files["vocab_file"], "merges": files["merges_file"]}
    tokenizer = CLIPTokenizer(**files, model_max_length=16)
    text_cfg = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_attention_heads=2,
        num_hidden_layers=2,
        max_position_embeddings=16,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    text_encoder = CLIPTextModel(text_cfg)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out = path / "model"
    pipe.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory):
    """Folder of a tiny random-weight SD inpainting pipeline (9-channel UNet)."""
    return build_tiny_sd_inpaint(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="session")
def tiny_sd_txt2img_path(tmp_path_factory):
    """The same tiny pipeline with a 4-channel (text-to-image) UNet."""
    return build_tiny_sd_inpaint(tmp_path_factory.mktemp("tiny_sd4"), unet_in_channels=4)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every inpaint test runs on one torch thread (see ``one_thread``)."""
