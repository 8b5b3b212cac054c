"""Synthetic samples as a MONAI dataset, for augmentation without writing files."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from monai.data import MetaTensor
from torch.utils.data import Dataset

from neurosql_med.io.model import load_model
from neurosql_med.synthesis.options import SampleOptions
from neurosql_med.synthesis.sampling import COMPUTE_BLOCK, Draw, decode_block, synthesis_job, synthetic_id


class SyntheticDataset(Dataset):
    """Yields dictionaries shaped like the real pipeline's: ``{"image", "id", ...}``.

    ``image`` is a channel-first MetaTensor in [0, 1] carrying the training affine, so
    it concatenates with real samples (``torch.utils.data.ConcatDataset``) and flows
    through the same MONAI transforms. Item i is sample index i + 1 of the seed: the
    same image ``nsql-med synthesize`` would write for it. A labelled model's items also
    carry ``label``: the channel-first int64 MetaTensor of tissue classes, on the same
    affine, equal to the dseg ``synthesize`` writes, so (image, label) pairs feed a
    segmentation pipeline. A conditional model's items carry ``condition``: the covariate
    values asked for (``condition``, ``condition_table``, ``balance`` as in ``synthesize``).
    ``options`` are `synthesize`'s sample options (`SampleOptions`: model, n, seed, typicality,
    texture, near_codes, ...), or a model folder with those options as keywords: ``SyntheticDataset("nsql-model",
    n=500, seed=0)``. ``device`` is where the model decodes.
    """

    def __init__(
        self, options: SampleOptions | str | Path, *, transform: Callable | None = None, device: str = "cpu", **draws: Any,
    ) -> None:
        if not isinstance(options, SampleOptions):  # a model folder, the other options as keywords
            options = SampleOptions(model=Path(options), **draws)
        elif draws:
            raise TypeError(f"options are given twice: as SampleOptions and as keywords {sorted(draws)}")
        self.job = synthesis_job(load_model(options.model, device), options)
        self.n, self.transform = self.job.n, transform
        self.affine = torch.as_tensor(self.job.geometry.sample_affine())
        self._block: tuple[int, list[Draw]] | None = None

    def __len__(self) -> int:
        return self.n

    def _decoded(self, block: int) -> list[Draw]:
        if self._block is None or self._block[0] != block:  # sequential access decodes each block once
            self._block = (block, decode_block(self.job, block))
        return self._block[1]

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(i)
        draw = self._decoded(i // COMPUTE_BLOCK)[i % COMPUTE_BLOCK]
        item = {
            "image": MetaTensor(draw.image.clone(), affine=self.affine.clone()),
            "id": synthetic_id(i + 1, self.n),
            "subject": synthetic_id(i + 1, self.n),
            "synthetic": True,
            "latent": torch.as_tensor(draw.latent, dtype=torch.float32),
            "typicality": draw.level,
        }
        if draw.condition is not None:
            item["condition"] = dict(draw.condition)
        if draw.code_index is not None:  # near_codes: the training code the latent was drawn near
            item["code_index"] = draw.code_index
        if draw.labels is not None:
            item["label"] = MetaTensor(draw.labels.clone(), affine=self.affine.clone())
        return self.transform(item) if self.transform is not None else item
