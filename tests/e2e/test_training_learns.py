"""A few minutes of real training: held-out verification accuracy must rise clearly above
what the untrained network scores on the same pairs."""

from __future__ import annotations

import pytest

from tests.conftest import prepare_subset
from tests.training.test_trainer import records
from training.config import TrainConfig
from training.trainer import Trainer


@pytest.mark.slow
def test_short_training_beats_the_untrained_network(tmp_path):
    # Identities disjoint from the other training tests' subset.
    faces = prepare_subset(tmp_path / "faces", identities=240, per_identity=8, offset=1000)
    config = TrainConfig(
        data=faces,
        out=tmp_path / "run",
        backbone="mobilefacenet",
        embedding_dim=128,
        head="cosface",
        head_params={"s": 30.0, "m": 0.2},
        batch_size=64,
        epochs=6,
        lr=0.1,
        warmup_epochs=1,
        held_out=0.25,
        val_pairs=1500,
        num_workers=2,
        device="cpu",
    )
    trainer = Trainer(config)
    after = trainer.fit()["val_accuracy"]
    validation = [r for r in records(config.out) if r["kind"] == "val"]
    before = validation[0]["val_accuracy"]
    assert validation[0]["epoch"] == 0 and len(validation) == config.epochs + 1
    print(f"held-out verification accuracy: untrained {before:.4f} -> trained {after:.4f}")
    # Measured with this seed: 0.5955 -> 0.6631 on faces aligned with YuNet landmarks,
    # 0.5765 -> 0.6726 with MTCNN's. The untrained score moves by about 0.02 with the crops and
    # the fold spread is 0.03-0.04, so 0.06 is twice the noise and still far above a network
    # that learned nothing.
    assert after >= before + 0.06
