"""The model contract the service trusts: strict, versioned, read from metadata."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from service.vision.alignment import ARCFACE_112, OMZ_128, Template
from service.vision.contract import (
    CONTRACT_KEY,
    AlignmentSpec,
    Calibration,
    InputSpec,
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


def test_a_contract_carries_its_alignment_template_as_data():
    omz = OMZ_128
    c = contract(
        input=InputSpec(height=128, width=128, network_color="BGR", network_mean=0, network_std=1),
        alignment_template=omz.name,
        alignment=AlignmentSpec.of(omz),
    )
    again = parse_contract({CONTRACT_KEY: c.model_dump_json()})
    assert again is not None and again.template() == omz
    # A template the service has never heard of still works: the points travel in the file.
    custom = Template("someone-96", 96, tuple((x * 0.75, y * 0.75) for x, y in omz.points))
    c = contract(
        input=InputSpec(height=96, width=96),
        alignment_template=custom.name,
        alignment=AlignmentSpec.of(custom),
    )
    assert parse_contract({CONTRACT_KEY: c.model_dump_json()}).template() == custom


def test_files_from_before_templates_were_data_resolve_theirs_by_name():
    old = contract().model_dump(mode="json")
    old.pop("alignment")
    for key in ("network_color", "network_mean", "network_std"):
        old["input"].pop(key)
    c = parse_contract({CONTRACT_KEY: json.dumps(old)})
    assert c is not None and c.template() == ARCFACE_112


def test_a_template_that_does_not_fit_the_input_is_refused():
    with pytest.raises(ValidationError, match="128x128 crops but the input is 112x112"):
        contract(alignment_template=OMZ_128.name, alignment=AlignmentSpec.of(OMZ_128))
    with pytest.raises(ValidationError, match="unknown alignment template"):
        contract(alignment_template="nobody-knows-5pt")
    with pytest.raises(ValidationError):
        AlignmentSpec(name="x", size=112, points=((1.0, 2.0),) * 4)
