"""`facemargin export omz`: an Open Model Zoo face embedder (OpenVINO IR) as a contract model.

The IR is converted by our own code (`export.openvino_ir`), wrapped with our input and outputs
(uint8 RGB faces on the model's template; the BGR swap is done inside the graph, and OMZ
networks scale 0-255 pixels themselves), proved equal to the OpenVINO runtime on real aligned
faces, and calibrated through the service's own detection and alignment. OpenVINO is needed
only here, for the parity proof; the service runs the ONNX file with onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.calibration import ValidationData
from export.wrap import ForeignConvention, Reference, contract_model
from service.vision.alignment import OMZ_128, Template
from service.vision.contract import ModelContract, TrainingSummary

# OMZ embedders take BGR 0-255 pixels; the scaling is inside their graph.
OMZ_CONVENTION = ForeignConvention(mean=0.0, std=1.0, bgr=True)


class OpenVinoMissing(RuntimeError):
    pass


def openvino_reference(xml: Path, convention: ForeignConvention) -> tuple[Reference, str]:
    """The IR run by the OpenVINO runtime in float32, face by face, and what to call it."""
    try:
        import openvino as ov
    except ImportError as error:
        raise OpenVinoMissing(
            "the parity proof runs the IR in OpenVINO: pip install openvino"
        ) from error
    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(str(xml)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    output = compiled.output(0)

    def run(faces: np.ndarray) -> np.ndarray:
        blobs = convention.preprocess(faces)
        return np.concatenate([compiled([blob[None]])[output].reshape(1, -1) for blob in blobs])

    version = ov.__version__.split("-")[0]
    return run, f"{xml.name} in OpenVINO {version} (CPU, f32)"


def convert_omz(
    xml: Path,
    out: Path,
    validation: ValidationData | None,
    *,
    template: Template = OMZ_128,
    training_data: str = "VGGFace2",
    parity_root: Path | None = None,
    progress: bool = True,
) -> ModelContract:
    from export.openvino_ir import convert_ir

    reference, reference_name = openvino_reference(xml, OMZ_CONVENTION)
    return contract_model(
        convert_ir(xml),
        out,
        template=template,
        convention=OMZ_CONVENTION,
        reference=reference,
        reference_name=reference_name,
        validation=validation,
        source=xml.name,
        exporter="facemargin export omz",
        backbone=f"{xml.stem} (OpenVINO IR, converted)",
        training=TrainingSummary(data=training_data),
        parity_root=parity_root,
        progress=progress,
    )
