"""MTCNN's three networks in PyTorch, loaded from the facenet-pytorch wheel and written to ONNX.

The weights are the ones that ship inside `facenet_pytorch-2.6.0-py3-none-any.whl` (MIT
licence). We read them straight out of the wheel (a zip file) so the package itself, whose
torch pin is too old for us, is never installed. The service runs the ONNX files without torch.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import torch
from torch import nn

NETS = ("pnet", "rnet", "onet")


class PNet(nn.Module):
    """Proposal net: fully convolutional, 12x12 receptive field, stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.prelu1(self.conv1(x))
        x = self.pool1(x)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    """Refinement net on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        # The weights were converted from a (W, H)-ordered framework; the dense layer expects
        # that flattening order, so transpose before flattening exactly as facenet-pytorch does.
        x = x.permute(0, 3, 2, 1).contiguous().flatten(1)
        x = self.prelu4(self.dense4(x))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """Output net on 48x48 crops: box refinement, score and five landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous().flatten(1)
        x = self.prelu5(self.dense5(x))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


_CLASSES: dict[str, type[nn.Module]] = {"pnet": PNet, "rnet": RNet, "onet": ONet}
# Input side of the crop nets; PNet takes any size of at least 12.
_CROP = {"rnet": 24, "onet": 48}
_OUTPUTS = {
    "pnet": ["regression", "probability"],
    "rnet": ["regression", "probability"],
    "onet": ["regression", "landmarks", "probability"],
}


def read_state_dicts(wheel: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Read pnet/rnet/onet state dicts from the wheel file or an unpacked copy of it."""
    states: dict[str, dict[str, torch.Tensor]] = {}
    for name in NETS:
        member = f"facenet_pytorch/data/{name}.pt"
        if wheel.is_dir():
            raw = (wheel / member).read_bytes()
        else:
            with zipfile.ZipFile(wheel) as archive:
                raw = archive.read(member)
        states[name] = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    return states


def load_nets(wheel: Path) -> dict[str, nn.Module]:
    nets: dict[str, nn.Module] = {}
    for name, state in read_state_dicts(wheel).items():
        net = _CLASSES[name]()
        # The wheel stores softmax modules that hold no parameters; strict loading still
        # catches any missing or misnamed weight.
        net.load_state_dict(state, strict=True)
        nets[name] = net.eval()
    return nets


def export_nets(nets: dict[str, nn.Module], out_dir: Path, opset: int = 18) -> list[Path]:
    """Write mtcnn_{pnet,rnet,onet}.onnx with dynamic batch (and dynamic H, W for PNet)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=65536)
    side = {
        "height": torch.export.Dim("height", min=12),
        "width": torch.export.Dim("width", min=12),
    }
    written: list[Path] = []
    for name, net in nets.items():
        # Trace with batch 2: a batch of 1 would be specialised away as a constant.
        size = _CROP.get(name, 48)
        dummy = torch.zeros(2, 3, size, size)
        axes = {0: batch, 2: side["height"], 3: side["width"]} if name == "pnet" else {0: batch}
        path = out_dir / f"mtcnn_{name}.onnx"
        program = torch.onnx.export(
            net,
            (dummy,),
            dynamo=True,
            dynamic_shapes={"x": axes},
            input_names=["input"],
            output_names=_OUTPUTS[name],
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
        program.save(str(path), external_data=False)
        written.append(path)
    return written
