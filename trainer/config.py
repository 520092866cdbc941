"""``TrainConfig``: every setting of a training run in one frozen value (the CLI builds it from
its flags; ``trainer.train.train`` takes it)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bigearthnet_beam.transforms.storage import Storage

STRATEGIES = ("default", "mirrored")
# The settings a run records in its state file (and reports in its metrics).
RECORDED = (
    "epochs",
    "batch",
    "lr",
    "augment",
    "steps_per_epoch",
    "max_train_patches",
    "max_val_patches",
    "class_weights",
    "mixed_precision",
    "strategy",
    "seed",
    "val_split",
    "shuffle_buffer",
)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of ``benbeam train`` (fields named as its flags).

    ``class_weights``: None, ``"inv_sqrt"`` or ``"median_freq"`` (from the train split's
    ``class_pixel_counts``). ``epochs`` is the total epoch count: a resumed run trains
    epochs ``state.epoch + 1 … epochs``. ``verbose``: Keras's fit verbosity, ``"auto"`` =
    a progress bar on a terminal, one line per epoch elsewhere.
    """

    data: str
    save: str = "model.keras"
    epochs: int = 10
    batch: int = 32
    lr: float = 1e-3
    modalities: str = "s2,s1"
    augment: bool = False
    steps_per_epoch: int | None = None
    max_train_patches: int | None = None
    max_val_patches: int | None = None
    width: int = 24
    depth: int = 3
    task: str = "seg"
    class_weights: str | None = None
    resume: bool = False
    mixed_precision: bool = False
    strategy: str = "default"
    seed: int = 0
    val_split: str = "validation"
    shuffle_buffer: int = 256
    tensorboard: bool = True
    deterministic: bool = False
    verbose: int | str = "auto"
    storage: Storage = Storage()  # where --data is read and --save written (never recorded: it may hold secrets)

    def checked(self) -> TrainConfig:
        """This config with ``modalities`` and ``val_split`` canonical; ValueError (with the fix)
        for a value no run can use. Touches nothing on disk."""
        from bigearthnet_beam.schemas.manifest import check_split
        from bigearthnet_beam.trainer.model import TASKS, check_depth

        for name in ("epochs", "batch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        for name in ("steps_per_epoch", "max_train_patches", "max_val_patches"):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise ValueError(f"--{name} must be at least 1, got {v}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"--strategy must be 'default' or 'mirrored', got {self.strategy!r}")
        if self.task not in TASKS:
            raise ValueError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        modalities = canonical_modalities(self.modalities)
        val_split = check_split(self.val_split)
        check_depth(self.depth)
        return dataclasses.replace(self, modalities=modalities, val_split=val_split)

    def settings(self) -> dict:
        """The settings a run records in its state and metrics files."""
        return {k: getattr(self, k) for k in RECORDED}


def canonical_modalities(modalities) -> str:
    """``"s1,s2"`` / ``("s2",)`` … as the canonical comma list in schemas.bands order (``"s2,s1"``)."""
    from bigearthnet_beam.schemas.bands import MODALITIES, channels_for

    chans = channels_for(modalities)
    return ",".join(m for m, names in MODALITIES.items() if any(c in names for c in chans))
