"""The default embedder inspects with its image tower alone (no open_clip, no text tower loaded) and gives the full
open_clip model's vectors; texts still work, through the full model built on the first text."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def test_loading_the_embedder_for_images_imports_neither_open_clip_nor_transformers():
    code = (
        "import sys, numpy as np\n"
        "from vision.embedder import load_embedder\n"
        "e = load_embedder()\n"
        "v = e.embed_images([np.full((40, 60, 3), 128, np.uint8)])\n"
        "assert v.shape == (1, e.dim), v.shape\n"
        "print(sorted(m for m in ('open_clip', 'transformers', 'peft') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_image_tower_gives_the_full_models_vectors_and_texts_still_embed():
    import torch

    from vision.embedder import load_embedder
    from vision.embedder.preprocess import open_clip_transform, to_batch

    embedder = load_embedder()
    rng = np.random.default_rng(3)
    crops = [
        rng.integers(0, 256, (int(rng.integers(16, 120)), int(rng.integers(16, 120)), 3), np.uint8) for _ in range(6)
    ]
    ours = embedder.embed_images(crops)
    full, tokenizer = embedder.text_tower.get()  # the open_clip CustomTextCLIP, built now
    theirs_transform = open_clip_transform(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert torch.equal(to_batch(crops, theirs_transform), to_batch(crops, embedder.transform))
    with torch.inference_mode():
        theirs = full.encode_image(to_batch(crops, theirs_transform), normalize=True).numpy()
    assert np.abs(ours - theirs).max() < 1e-5
    assert abs(embedder.logit_scale - float(full.logit_scale.detach().exp())) < 1e-6
    texts = embedder.embed_texts(["a cracked battery tab weld", "焊渣飞溅"])
    with torch.inference_mode():
        direct = full.encode_text(tokenizer(["a cracked battery tab weld", "焊渣飞溅"]), normalize=True).numpy()
    assert texts.shape == (2, embedder.dim)
    assert np.abs(texts - direct).max() < 1e-5
