"""Synthetic samples as a MONAI dataset, for augmentation without writing files."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from monai.data import MetaTensor
from torch.utils.data import Dataset

from neurosql_med.errors import UserError
from neurosql_med.io.model import load_model
from neurosql_med.synthesis.synthesize import COMPUTE_BLOCK, decode_block, synthetic_id


class SyntheticDataset(Dataset):
    """Yields dictionaries shaped like the real pipeline's: ``{"image", "id", ...}``.

    ``image`` is a channel-first MetaTensor in [0, 1] carrying the training affine, so
    it concatenates with real samples (``torch.utils.data.ConcatDataset``) and flows
    through the same MONAI transforms. Item i is sample index i + 1 of the seed: the
    same image ``nsql-med synthesize`` would write for it.
    """

    def __init__(
        self,
        model_dir: str | Path,
        n: int,
        seed: int = 0,
        typicality: float = 1.0,
        transform: Callable | None = None,
        device: str = "cpu",
    ) -> None:
        if not 0 < typicality <= 1:
            raise UserError(f"typicality must be in (0, 1], got {typicality}")
        self.model = load_model(model_dir, device)
        self.n, self.seed, self.typicality, self.transform = n, seed, typicality, transform
        self.affine = torch.as_tensor(self.model.geometry.sample_affine())
        self._block: tuple[int, tuple] | None = None

    def __len__(self) -> int:
        return self.n

    def _decoded(self, block: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        if self._block is None or self._block[0] != block:  # sequential access decodes each block once
            self._block = (block, decode_block(self.model, block, self.seed, self.typicality))
        return self._block[1]

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(i)
        k = i + 1
        images, z, levels = self._decoded(i // COMPUTE_BLOCK)
        j = i % COMPUTE_BLOCK
        item = {
            "image": MetaTensor(images[j].clone(), affine=self.affine.clone()),
            "id": synthetic_id(k, self.n),
            "subject": synthetic_id(k, self.n),
            "synthetic": True,
            "latent": torch.as_tensor(z[j], dtype=torch.float32),
            "typicality": float(levels[j]),
        }
        return self.transform(item) if self.transform is not None else item
