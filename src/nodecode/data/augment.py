"""App. A.4 pre-processing on the device: per-channel mean centering, random mirror, random crop; seeded batches.

Centering: minus per-channel means of the training set of the same input kind; pixels stay on the 0..255 scale
(as Slim's vgg_preprocessing, which the paper's ResNet code uses), latents in ŷ units. No division by a std.

Crop policy: the paper random-crops 224x224 RGB / 28x28 latent windows from larger ImageNet images. Imagenette-224
images are exactly 224 (latents exactly 28), so training crops come from a reflect-padded copy: PAD = 1/7 of the
side (32 px RGB, 4 latent px; a 4-px latent shift is a 32-px image shift), offsets uniform in [0, 2*PAD], then a
horizontal mirror with probability 1/2. Evaluation uses the whole image, i.e. the centre crop (§4.3).

Batches: epoch e visits the training set in a permutation seeded by (seed, e), dropping the last partial batch;
step s of the run is batch s % steps_per_epoch of epoch s // steps_per_epoch, and its crop/mirror draws are seeded
by (seed, s). Both depend on the step only, so a resumed run sees exactly the batches it would have seen. Under
DDP every rank draws the same global batch and keeps its contiguous slice of batch_size / world rows.
"""
from __future__ import annotations

import numpy as np
import torch

PAD_FRACTION = 7  # pad = side / 7: 32 of 224, 4 of 28


def generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of integers (no collisions between (seed, epoch) pairs)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> 1))


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Indices into a side of n that reflect padding (no edge repeat) maps i in [-n+1, 2n-2] to."""
    i = i.abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


class InputPipeline:
    """uint8 rows -> centred float network inputs; with crop params, mirrored and cropped from a reflect-padded copy."""

    def __init__(self, kind: str, mean: torch.Tensor, codec=None, pad: int | None = None, channels_last: bool = False):
        self.kind, self.codec, self.pad, self.channels_last = kind, codec, pad, channels_last
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        if kind == "latent" and codec is None:
            raise ValueError("the latent input kind needs the codec (ŷ = codec.latent(z))")

    def to_float(self, u8: torch.Tensor) -> torch.Tensor:
        """ŷ = codec.latent(z) for symbols, the 0..255 values for pixels; then minus the training-set channel means."""
        x = self.codec.latent(u8) if self.kind == "latent" else u8.float()
        if self.mean.device != x.device:
            self.mean = self.mean.to(x.device)
        return x - self.mean

    def crop_params(self, n: int, size: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        """(mirror, y offset, x offset) for n crops of a size x size input."""
        pad = size // PAD_FRACTION if self.pad is None else self.pad
        return (torch.rand(n, generator=gen) < 0.5, torch.randint(0, 2 * pad + 1, (n,), generator=gen),
                torch.randint(0, 2 * pad + 1, (n,), generator=gen), torch.full((n,), pad))

    def __call__(self, u8: torch.Tensor, params: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """(B, C, H, W) uint8 -> float (B, C, H, W); params from crop_params (None: the whole image, evaluation)."""
        if params is not None:
            b, _, h, w = u8.shape
            flip, ys, xs, pad = (p.to(u8.device) for p in params)
            iy = _reflect(ys[:, None] - pad[:, None] + torch.arange(h, device=u8.device), h)
            ix = _reflect(xs[:, None] - pad[:, None] + torch.arange(w, device=u8.device), w)
            ix = torch.where(flip[:, None], ix.flip(1), ix)
            rows = torch.arange(b, device=u8.device)[:, None, None]
            u8 = u8[rows, :, iy[:, :, None], ix[:, None, :]].permute(0, 3, 1, 2)  # gather -> (B, H, W, C) -> NCHW view
        x = self.to_float(u8)
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)


class Batches:
    """batch_fn(step) -> (inputs, labels) for the Engine: seeded per-epoch permutations, augmentation, DDP slices."""

    def __init__(self, data: torch.Tensor, labels: torch.Tensor, pipeline: InputPipeline, batch_size: int,
                 seed: int = 0, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ValueError(f"global batch {batch_size} is not divisible by the {world} processes")
        if len(data) < batch_size:
            raise ValueError(f"{len(data)} training images are fewer than one batch of {batch_size}")
        self.data, self.labels, self.pipeline = data, labels.to(data.device), pipeline
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.steps_per_epoch = len(data) // batch_size
        self._perm: tuple[int, torch.Tensor] | None = None

    def global_indices(self, step: int) -> torch.Tensor:
        """Dataset rows of the whole (all-rank) batch of this step."""
        epoch, i = divmod(step, self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = epoch, torch.randperm(len(self.data), generator=generator(self.seed, 0, epoch))
        return self._perm[1][i * self.batch_size: (i + 1) * self.batch_size]

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.global_indices(step)
        params = self.pipeline.crop_params(len(idx), self.data.shape[-1], generator(self.seed, 1, step))
        n = self.batch_size // self.world
        mine = slice(self.rank * n, (self.rank + 1) * n)
        idx = idx[mine].to(self.data.device)
        return self.pipeline(self.data[idx], tuple(p[mine] for p in params)), self.labels[idx]
