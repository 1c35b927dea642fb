"""The contract an embedding model carries inside its ONNX file.

`facemargin export` writes it as JSON under one metadata key; the service reads it back through
onnxruntime and refuses to guess anything the file does not state: input layout and colour
order, alignment template, embedding size, and the cosine thresholds measured for this exact
file. Torch-free: the service imports it.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.vision.alignment import Template, template_named

CONTRACT_KEY = "facemargin.contract"
CONTRACT_FORMAT = "facemargin-model-1"
INPUT_NAME = "faces"
EMBEDDING_OUTPUT = "embedding"
NORM_OUTPUT = "norm"
# The operating points a contract is calibrated at, strictest last.
FAR_TARGETS = (1e-2, 1e-3, 1e-4)
# A FAR is calibrated only when the protocol has enough impostor pairs for this many false
# accepts at that rate: a threshold set by one or two impostor scores is noise.
MIN_FALSE_ACCEPTS = 10


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """What the graph's input is: exactly the aligner's output, unscaled."""

    name: str = INPUT_NAME
    dtype: Literal["uint8"] = "uint8"
    layout: Literal["NHWC"] = "NHWC"
    height: int = 112
    width: int = 112
    channels: Literal[3] = 3
    color: Literal["RGB"] = "RGB"
    normalisation: str = Field(
        "(x - 127.5) / 127.5, inside the graph",
        description="Done by the graph itself; callers pass raw aligned pixels.",
    )
    network_color: Literal["RGB", "BGR"] = Field(
        "RGB",
        description="Channel order the network inside was trained on; the graph swaps RGB "
        "input to it itself.",
    )
    network_mean: float = Field(127.5, description="Subtracted inside the graph.")
    network_std: float = Field(127.5, description="Divided by inside the graph.")


class AlignmentSpec(_Strict):
    """The alignment template as data: five (x, y) points in a size x size crop."""

    name: str
    size: int = Field(gt=0)
    points: tuple[tuple[float, float], ...] = Field(min_length=5, max_length=5)

    @classmethod
    def of(cls, template: Template) -> AlignmentSpec:
        return cls(name=template.name, size=template.size, points=template.points)

    def template(self) -> Template:
        return Template(self.name, self.size, self.points)


class Objective(_Strict):
    head: str | None
    head_params: dict[str, float] = Field(default_factory=dict)
    loss: str | None = None
    loss_params: dict[str, float | str] = Field(default_factory=dict)


class TrainingSummary(_Strict):
    data: str = Field(description="Training set, as named by whoever trained the model.")
    identities: int | None = None
    images: int | None = None
    epochs: float | None = None
    steps: int | None = None
    seed: int | None = None
    checkpoint_sha256: str | None = None
    initialised_from: str | None = Field(
        None, description="Model id of the exported model the run started from, if any."
    )


class OperatingPoint(_Strict):
    far: float = Field(description="Target false-accept rate.")
    threshold: float = Field(description="Accept a pair when cosine >= threshold.")
    far_achieved: float | None = Field(None, description="None when the user set it.")
    tar: float | None = Field(None, description="Genuine pairs accepted; None when not measured.")


class FarPoint(_Strict):
    far: float
    threshold: float


# The FAR grid of a calibration's curve: four points per decade from 1e-1 down to the smallest
# FAR its impostor pairs support.
CURVE_POINTS_PER_DECADE = 4
CURVE_LARGEST_FAR = 1e-1


class Calibration(_Strict):
    protocol: str
    description: str
    n_images: int
    n_images_without_face: int = Field(
        description="Images the detector found no face in; their pairs are left out of the "
        "thresholds and reported here instead, because a threshold cannot fix a missed face."
    )
    n_genuine: int
    n_impostor: int
    operating_points: list[OperatingPoint]
    unsupported_fars: list[float] = Field(
        default_factory=list,
        description=f"Targets with fewer than {MIN_FALSE_ACCEPTS}/FAR impostor pairs.",
    )
    far_curve: list[FarPoint] = Field(
        default_factory=list,
        description="Thresholds on a log grid of FARs (largest first), from 1e-1 to the "
        "smallest FAR the impostor pairs support: what a gallery-size-aware identification "
        "threshold is interpolated on. Empty in files calibrated before it existed.",
    )
    eer: float | None = Field(None, description="Equal error rate; None when not measured.")
    norm_percentiles: dict[str, float] = Field(
        default_factory=dict,
        description="Percentiles p1, p5, p50 of the embedding norm over the protocol's faces: "
        "the scale of the quality signal.",
    )
    eer_threshold: float | None = None


class Validation(_Strict):
    """A published protocol run on this exact file (10-fold accuracy, pairs with a missed
    face counted as errors)."""

    protocol: str
    n_pairs: int
    n_missing: int
    accuracy: float
    accuracy_std: float
    tar_at_far_1e3: float | None


class Parity(_Strict):
    reference: str = Field(description="What this file was compared against.")
    faces: int
    min_cosine: float
    max_abs_diff: float
    batch_sizes: list[int]


class AccuracyChange(_Strict):
    protocol: str
    accuracy_fp32: float
    accuracy: float
    change_pp: float = Field(description="Percentage points, this variant minus fp32.")


class Quantization(_Strict):
    method: str
    calibration_faces: int
    faces_compared: int
    min_cosine_to_fp32: float
    median_cosine_to_fp32: float
    accuracy: list[AccuracyChange]
    tolerance_pp: float = Field(description="Largest accuracy drop accepted, percentage points.")


class ModelContract(_Strict):
    format: Literal["facemargin-model-1"] = CONTRACT_FORMAT
    model_id: str = Field(
        description="sha256 of the weights (and of the precision, for a bf16 variant), first "
        "16 hex digits."
    )
    parent_model_id: str | None = Field(
        None, description="For variants: the fp32 model they were made from."
    )
    variant: Literal["fp32", "fp16", "int8", "bf16"] = Field(
        "fp32",
        description="fp32; fp16 (for GPUs); int8 (static quantisation, for CPUs); bf16 (the "
        "fp32 weights run by OpenVINO at bfloat16 precision, for CPUs with native bfloat16).",
    )
    embedding_dim: int = Field(gt=0)
    input: InputSpec = InputSpec()
    outputs: dict[str, str] = Field(
        default_factory=lambda: {
            EMBEDDING_OUTPUT: "float32 (N, d), L2-normalised; cosine = dot product",
            NORM_OUTPUT: "float32 (N,), the embedding's norm before normalisation "
            "(low for blurred, occluded or non-face crops)",
        }
    )
    alignment_template: str
    alignment: AlignmentSpec | None = Field(
        None,
        description="The template's points; files written before it existed name a built-in "
        "template in alignment_template instead.",
    )
    backbone: str
    parameters: int | None = None
    macs: int | None = None
    objective: Objective | None = None
    training: TrainingSummary | None = None
    source: str = Field(description="What was exported: checkpoint or foreign ONNX file name.")
    exported_at: datetime
    exporter: str
    calibration: Calibration | None = None
    validation: list[Validation] = Field(default_factory=list)
    parity: Parity | None = None
    quantization: Quantization | None = None

    @model_validator(mode="after")
    def _template_fits_input(self) -> ModelContract:
        size = self.template().size
        if (self.input.height, self.input.width) != (size, size):
            raise ValueError(
                f"alignment template {self.alignment_template!r} makes {size}x{size} crops "
                f"but the input is {self.input.height}x{self.input.width}"
            )
        return self

    def template(self) -> Template:
        """Where the aligner must put the landmarks for this model."""
        if self.alignment is not None:
            return self.alignment.template()
        return template_named(self.alignment_template)

    def quality(self, norm: float) -> float | None:
        """The norm relative to the calibration faces' median (1.0 = a typical face)."""
        median = self.calibration.norm_percentiles.get("p50") if self.calibration else None
        return norm / median if median else None

    def default_min_quality(self) -> float | None:
        """The 1st percentile of the calibration faces' quality: poorer faces are refused."""
        if self.calibration is None:
            return None
        low = self.calibration.norm_percentiles.get("p1")
        return self.quality(low) if low is not None else None

    def threshold_at(self, far: float) -> float | None:
        """The calibrated threshold for exactly this FAR target, if it was measured."""
        if self.calibration is None:
            return None
        for point in self.calibration.operating_points:
            if math.isclose(point.far, far, rel_tol=1e-9):
                return point.threshold
        return None

    def threshold_on_curve(self, far: float) -> float | None:
        """The threshold for any FAR within the calibrated curve, linear in log FAR between
        its points (exact at the operating points); None outside it or without a curve."""
        exact = self.threshold_at(far)
        if exact is not None:
            return exact
        curve = self.calibration.far_curve if self.calibration else []
        if not curve or not curve[-1].far <= far <= curve[0].far:
            return None
        logs = [math.log10(p.far) for p in reversed(curve)]
        thresholds = [p.threshold for p in reversed(curve)]
        return float(np.interp(math.log10(far), logs, thresholds))

    def far_on_curve(self, threshold: float) -> float | None:
        """The FAR a threshold stands for, within the calibrated curve; None outside it."""
        curve = self.calibration.far_curve if self.calibration else []
        if not curve or not curve[0].threshold <= threshold <= curve[-1].threshold:
            return None
        logs = [math.log10(p.far) for p in curve]
        return float(10 ** np.interp(threshold, [p.threshold for p in curve], logs))

    def threshold_for_fpir(self, fpir: float, comparisons: int) -> tuple[float, float] | None:
        """(threshold, FAR per comparison) that lets a stranger compared with `comparisons`
        gallery entries be matched with probability `fpir`: FAR = 1 - (1 - fpir)^(1/n). Past
        the curve's strictest FAR (a very large gallery) the threshold stops there; None
        without a curve."""
        curve = self.calibration.far_curve if self.calibration else []
        if not curve:
            return None
        per_comparison = 1 - (1 - fpir) ** (1 / max(comparisons, 1))
        far = min(max(per_comparison, curve[-1].far), curve[0].far)
        threshold = self.threshold_on_curve(far)
        assert threshold is not None  # far is inside the curve
        return threshold, far

    @property
    def strictest_far(self) -> float | None:
        """The smallest FAR the curve reaches."""
        curve = self.calibration.far_curve if self.calibration else []
        return curve[-1].far if curve else None


def parse_contract(metadata: dict[str, str]) -> ModelContract | None:
    """The contract from an ONNX file's metadata map; None when the file has none (a foreign
    model: wrap it with `facemargin export wrap` first)."""
    raw = metadata.get(CONTRACT_KEY)
    return None if raw is None else ModelContract.model_validate_json(raw)
