"""Offline stand-ins for the real scoring networks, built in the test (nothing is downloaded).

- `write_standin_inception(path)`: a TorchScript file with the interface of clean-fid's
  `inception-2015-12-05.pt` (a `layers` submodule mapping normalised (N, 3, 299, 299) input to
  (N, 2048, 1, 1), and `forward(img, return_features=...)` on [0, 255] input) but a tiny network
  with RANDOM weights. Its features are meaningless; only the plumbing is real.
- `write_tiny_clip(path)`: a randomly initialised, tiny `transformers.CLIPModel` saved with a
  hand-written byte-level BPE vocabulary (no merges), a `CLIPTokenizer` and a
  `CLIPImageProcessor`, so `CLIPModel.from_pretrained(path)` / `CLIPProcessor.from_pretrained(path)`
  load it as they would a real CLIP directory.
- `write_test_images(directory)`: small JPEG/PNG files of several sizes and modes.
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tests.tiny_pipelines import byte_alphabet

STANDIN_INCEPTION_NAME = "standin-inception-random-weights.pt"


class StandinInception(nn.Module):
    """clean-fid's Inception call convention with a strided conv + 1×1 conv + global pool.

    `layers`: float (N, 3, 299, 299) in [-1, 1] → (N, 2048, 1, 1), like the real file's `layers`
    (clean-fid's "clean" mode calls it directly after `(x - 128) / 128`). `forward` takes [0, 255]
    input of any size, resizes to 299 inside (bilinear) and returns (N, 2048) features when
    `return_features`, else (N, 1008) logits, like the real file.
    """

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.layers = nn.Sequential(
            nn.Conv2d(3, 32, kernel_size=13, stride=13),  # 299 → 23
            nn.ReLU(),
            nn.Conv2d(32, 2048, kernel_size=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.output = nn.Linear(2048, 1008)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / max(p[0].numel(), 1)) ** 0.5)

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = img.float()
        if x.shape[2] != 299 or x.shape[3] != 299:
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = (x - 128.0) / 128.0
        features = self.layers(x).reshape(-1, 2048)
        if return_features:
            return features
        return self.output(features)


def write_standin_inception(path: str | Path, seed: int = 0) -> Path:
    """Script a `StandinInception` and save it with `torch.jit.save` (loads with `torch.jit.load`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in torch 2.x
        torch.jit.save(torch.jit.script(StandinInception(seed).eval()), str(path))
    return path


# ----------------------------------------------------------------------------------------------
def write_tiny_clip(path: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """A tiny random `CLIPModel` + tokenizer + image processor saved as a local CLIP directory."""
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor,
                              CLIPTokenizer)

    path = Path(path)
    tok_dir = path.parent / f".{path.name}-tokenizer-files"
    tok_dir.mkdir(parents=True, exist_ok=True)
    alphabet = byte_alphabet()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in alphabet:  # every byte, inside and at the end of a word: no merges needed
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), model_max_length=77)

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(image_size=image_size, patch_size=8, hidden_size=32,
                           intermediate_size=37, num_hidden_layers=2, num_attention_heads=4),
        projection_dim=16)
    model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    model.save_pretrained(str(path))
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(path))
    shutil.rmtree(tok_dir)
    return path


# ----------------------------------------------------------------------------------------------
def write_test_images(directory: str | Path, seed: int = 0) -> list[str]:
    """Six small images, sorted names, mixed formats/modes/sizes; returns the sorted file names.

    Smooth random colour fields (a few low-frequency waves), so that resizing changes them
    little and different images differ.
    """
    from PIL import Image

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    specs = [("000001.jpg", (48, 40), "RGB"), ("000002.png", (40, 56), "L"),
             ("000003.jpg", (64, 48), "CMYK"), ("000004.png", (44, 44), "RGBA"),
             ("000005.png", (36, 50), "P"), ("000006.jpg", (50, 38), "RGB")]
    for name, (w, h), mode in specs:
        yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
        chans = []
        for _ in range(4):
            a, b, c = rng.uniform(-6, 6, size=3)
            chans.append(127.5 + 110 * np.sin(a * xx + b * yy + c))
        arr = np.stack(chans, -1).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(arr[..., :3], "RGB")
        if mode == "L":
            img = img.convert("L")
        elif mode == "CMYK":
            img = Image.fromarray(arr, "CMYK")
        elif mode == "RGBA":
            img = Image.fromarray(arr, "RGBA")
        elif mode == "P":
            img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        img.save(directory / name, quality=95) if name.endswith(".jpg") else img.save(directory / name)
    return [s[0] for s in specs]
