"""The model contract the service trusts: strict, versioned, read from metadata."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from service.contract import (
    CONTRACT_KEY,
    Calibration,
    ModelContract,
    OperatingPoint,
    parse_contract,
)


def contract(**changes) -> ModelContract:
    values = {
        "model_id": "0123456789abcdef",
        "embedding_dim": 128,
        "alignment_template": "arcface-112-5pt",
        "backbone": "mobilefacenet",
        "source": "checkpoint.pt",
        "exported_at": datetime(2026, 11, 23, tzinfo=UTC),
        "exporter": "facemargin test",
        "calibration": Calibration(
            protocol="p",
            description="d",
            n_images=10,
            n_images_without_face=0,
            n_genuine=10,
            n_impostor=10_000,
            operating_points=[
                OperatingPoint(far=1e-2, threshold=0.2, far_achieved=0.01, tar=0.99),
                OperatingPoint(far=1e-3, threshold=0.3, far_achieved=0.001, tar=0.9),
            ],
            unsupported_fars=[1e-4],
            eer=0.01,
            eer_threshold=0.15,
        ),
    }
    return ModelContract(**(values | changes))


def test_round_trip_through_metadata():
    original = contract()
    assert parse_contract({CONTRACT_KEY: original.model_dump_json()}) == original
    assert parse_contract({"other": "x"}) is None


def test_threshold_lookup_is_by_operating_point():
    c = contract()
    assert c.threshold_at(1e-3) == 0.3
    assert c.threshold_at(0.001) == 0.3
    assert c.threshold_at(1e-4) is None  # not calibrated: the caller must decide
    assert contract(calibration=None).threshold_at(1e-2) is None


def test_unknown_fields_and_formats_are_refused():
    raw = contract().model_dump()
    with pytest.raises(ValidationError):
        ModelContract.model_validate(raw | {"surprise": 1})
    with pytest.raises(ValidationError):
        ModelContract.model_validate(raw | {"format": "facemargin-model-2"})
    with pytest.raises(ValidationError):
        ModelContract.model_validate(raw | {"embedding_dim": 0})
