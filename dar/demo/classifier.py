"""A small CNN that names the shape in a demo image. It exists only to judge generated images.

Its accuracy on a generator's samples says whether the class conditioning works; its penultimate features
feed the Fréchet distance (an FID on a judge that knows this domain, since Inception would not). It takes
the VQ's input convention, x = u8 / 127.5 - 1, so that images can go straight from a decoder to the judge.
GroupNorm rather than BatchNorm: no train/eval difference and no running statistics to save.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dartrt.runtime.fileio import atomic_write

from .shapes import IMAGE_SIZE, NUM_CLASSES, make_batch

WEIGHTS_FILE = "classifier.safetensors"
CONFIG_FILE = "classifier.json"


@dataclass
class ClassifierConfig:
    """Architecture of a ShapeClassifier; saved beside its weights so that loading needs no code change."""

    widths: tuple[int, ...] = (16, 32, 64, 128)
    num_classes: int = NUM_CLASSES
    image_size: int = IMAGE_SIZE
    groups: int = 8

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]

    @classmethod
    def from_dict(cls, data: dict) -> "ClassifierConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"classifier config: unknown field {unknown[0]!r}")
        data = dict(data)
        if "widths" in data:
            data["widths"] = tuple(data["widths"])
        return cls(**data)


class ShapeClassifier(nn.Module):
    """Conv-GroupNorm-ReLU stages, each halving the resolution but the last, then global average pooling
    to the feature vector and a linear head."""

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config or ClassifierConfig()
        layers: list[nn.Module] = []
        cin = 3
        for i, cout in enumerate(self.config.widths):
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.GroupNorm(min(self.config.groups, cout), cout),
                nn.ReLU(inplace=True),
            ]
            if i < len(self.config.widths) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = cout
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(self.config.feature_dim, self.config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, F] of images x [B, 3, H, W] in [-1, 1]."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [B, num_classes]."""
        return self.head(self.features(x))


def to_model_input(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] → float [N, 3, H, W] in [-1, 1] (the VQ's convention)."""
    x = torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mild corruption so the judge tolerates a VQ decoder's artefacts: random flips (no class changes
    under a flip), a slight box blur on some images, and a little Gaussian noise."""
    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    blur = torch.rand(n, generator=gen) < 0.3
    blurred = nn.functional.avg_pool2d(nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = torch.where(blur[:, None, None, None], blurred, x)
    sigma = torch.rand(n, 1, 1, 1, generator=gen) * 0.08
    return x + sigma * torch.randn(x.shape, generator=gen)


@torch.no_grad()
def evaluate(model: ShapeClassifier, n_images: int = 2000, split: str = "heldout", batch_size: int = 250) -> float:
    """Accuracy on the first ``n_images`` of ``split``."""
    model.eval()
    correct = 0
    for start in range(0, n_images, batch_size):
        images, labels = make_batch(range(start, min(start + batch_size, n_images)), split)
        pred = model(to_model_input(images)).argmax(dim=1).numpy()
        correct += int((pred == labels).sum())
    return correct / n_images


def train_classifier(
    steps: int,
    batch_size: int,
    seed: int,
    progress: bool = True,
    lr: float = 2e-3,
    eval_images: int = 2000,
    config: ClassifierConfig | None = None,
) -> tuple[ShapeClassifier, dict]:
    """Train on fresh batches of the train split (every step sees new images, so no overfitting to watch)
    and report held-out accuracy. Adam with a cosine decay to zero, which settles the last steps."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = ShapeClassifier(config)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * min(s / max(steps, 1), 1.0))))
    # Batches are drawn from a seed-dependent stretch of the train split, in a fixed order.
    base = (seed * 7919) % (10**9 // 2)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="classifier", unit="step")
    t0 = time.perf_counter()
    loss_ema = None
    model.train()
    for step in range(steps):
        start = base + step * batch_size
        images, labels = make_batch(range(start, start + batch_size), "train")
        x = _augment(to_model_input(images), gen)
        loss = nn.functional.cross_entropy(model(x), torch.from_numpy(labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_ema:.3f}")
    if bar is not None:
        bar.close()
    train_s = time.perf_counter() - t0
    accuracy = evaluate(model, eval_images, "heldout") if eval_images > 0 else float("nan")
    model.eval()
    metrics = {
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
        "final_loss": float("nan") if loss_ema is None else float(loss_ema),
        "heldout_accuracy": accuracy,
        "heldout_images": eval_images,
        "train_seconds": train_s,
        "torch_threads": torch.get_num_threads(),
    }
    return model, metrics


def save_classifier(model: ShapeClassifier, directory: str | os.PathLike) -> None:
    """Write ``classifier.safetensors`` and ``classifier.json`` (its config) into ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(out / WEIGHTS_FILE, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    text = json.dumps(dataclasses.asdict(model.config), indent=2) + "\n"
    atomic_write(out / CONFIG_FILE, lambda p: Path(p).write_text(text))


def load_classifier(directory: str | os.PathLike) -> ShapeClassifier:
    """The classifier saved by ``save_classifier`` in ``directory``, in eval mode."""
    src = Path(directory)
    config = ClassifierConfig.from_dict(json.loads((src / CONFIG_FILE).read_text()))
    model = ShapeClassifier(config)
    model.load_state_dict(load_file(src / WEIGHTS_FILE), strict=True)
    return model.eval()
