"""Multi-crop throughput per core: radforge's views vs a torchvision/PIL reimplementation of DINOv2's.

Both turn the same stored 512x512 int16 CT slices (phantoms) into 2 global 224-px and 8 local 96-px
views. The baseline is DINOv2's DataAugmentationDINO with torchvision transforms on PIL images (the
slice windowed to uint8 and converted to RGB, as DINOv2's loader decodes images); radforge runs
radforge.trainer.views.MultiCrop on the int16 array (content-aware crops, intensity ops, foreground priors).
One thread, rounds interleaved so both see the same machine load; the best round of each is compared.

    .venv/bin/python -m bench.augment [--seconds 5] [--rounds 5]

Ends with one JSON line: {"bench": "augment", ..., "ratio": radforge / baseline samples per second}.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from radforge.ingest.content import analyse
from radforge.synthetic.phantom import ct_phantom
from radforge.trainer.views import MultiCrop
from radforge.windowing import CT_PRESETS, window_to_uint8


def dinov2_augmentation() -> Callable[[Image.Image], dict[str, list[torch.Tensor]]]:
    """DINOv2's DataAugmentationDINO (dinov2/data/augmentations.py) with its default arguments."""
    bicubic = T.InterpolationMode.BICUBIC
    flip_jitter = T.Compose(
        [
            T.RandomHorizontalFlip(p=0.5),
            T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
        ]
    )
    blur = lambda p: T.RandomApply([T.GaussianBlur(kernel_size=9, sigma=(0.1, 2.0))], p=p)  # noqa: E731
    normalize = T.Compose([T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    global_crop = T.RandomResizedCrop(224, scale=(0.32, 1.0), interpolation=bicubic)
    local_crop = T.RandomResizedCrop(96, scale=(0.05, 0.32), interpolation=bicubic)
    g1 = T.Compose([global_crop, flip_jitter, blur(1.0), normalize])
    g2 = T.Compose([global_crop, flip_jitter, blur(0.1), T.RandomSolarize(threshold=128, p=0.2), normalize])
    loc = T.Compose([local_crop, flip_jitter, blur(0.5), normalize])

    def augment(image: Image.Image) -> dict[str, list[torch.Tensor]]:
        return {"global_crops": [g1(image), g2(image)], "local_crops": [loc(image) for _ in range(8)]}

    return augment


def slices(n: int) -> list[tuple[np.ndarray, np.ndarray, dict]]:
    """``n`` stored-like samples: int16 HU 512x512 axial phantom slices with their fg map and meta."""
    vol = ct_phantom(shape=(n + 4, 512, 512), spacing=(5.0, 0.8, 0.8), seed=0)
    out = []
    for z in range(2, n + 2):
        image = vol.array[z].astype(np.int16)
        content = analyse(image, modality="CT")
        box = list(content.box) if content.box else None
        meta = {"modality": "CT", "window": "raw", "plane": "axial", "fg_patch": 16, "body_box": box}
        out.append((image, content.fg, meta))
    return out


def rate(fn: Callable[[int], object], n_items: int, seconds: float) -> float:
    """Items per second of ``fn(i)`` over about ``seconds``."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(done % n_items)
        done += 1
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per method per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)

    data = slices(16)
    window = CT_PRESETS["soft_tissue"]
    baseline = dinov2_augmentation()
    multicrop = MultiCrop()
    rng = np.random.default_rng(0)

    def run_baseline(i: int) -> object:
        image = Image.fromarray(window_to_uint8(data[i][0].astype(np.float32), window)).convert("RGB")
        return baseline(image)

    def run_radforge(i: int) -> object:
        image, fg, meta = data[i]
        return multicrop(image, fg, meta, rng=rng)

    run_baseline(0), run_radforge(0)  # warm-up
    ours, theirs = [], []
    for _ in range(args.rounds):
        ours.append(rate(run_radforge, len(data), args.seconds))
        theirs.append(rate(run_baseline, len(data), args.seconds))
    r, b = max(ours), max(theirs)  # best round: other processes on a shared machine only slow a round down
    print(
        json.dumps(
            {
                "bench": "augment",
                "slice": "512x512 int16 CT phantom",
                "views": "2x224 + 8x96",
                "threads": 1,
                "radforge_samples_per_s": round(r, 1),
                "baseline": "torchvision PIL DINOv2 DataAugmentationDINO",
                "baseline_samples_per_s": round(b, 1),
                "rounds": [[round(x, 1) for x in ours], [round(x, 1) for x in theirs]],
                "ratio": round(r / b, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
