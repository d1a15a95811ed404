"""ONNX export of the ``torch`` sampling backend: the graph is valid and, with onnxruntime, runs
to the same numbers as PyTorch."""

from __future__ import annotations

import inspect
import io
import math
import warnings

import pytest
import torch

from dck_lightning.layers import DeformConv2d, DynamicConv2d

onnx = pytest.importorskip("onnx")


def perturbed(layer: torch.nn.Module, sigma: float | None = None) -> torch.nn.Module:
    """Non-zero offsets (the localisation/offset convs are zero at init), in eval mode."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
        if sigma is not None:
            layer.extent.fill_(math.log(math.expm1(sigma)))
    return layer.eval()


LAYERS = {
    "dck": lambda: perturbed(DynamicConv2d(4, 6, 5, backend="torch")),
    "dck_cropped": lambda: perturbed(
        DynamicConv2d(4, 6, 7, backend="torch"), sigma=0.6
    ),  # runs 3x3
    "deform": lambda: perturbed(DeformConv2d(4, 6, 3, offset_groups=2, backend="torch")),
}


def export(layer: torch.nn.Module, x: torch.Tensor, exporter: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            buffer = io.BytesIO()
            torch.onnx.export(
                layer, (x,), buffer, dynamo=False, opset_version=17, input_names=["input"]
            )
            return onnx.load_from_string(buffer.getvalue())
        pytest.importorskip("onnxscript")
        return torch.onnx.export(layer, (x,), dynamo=True).model_proto


@pytest.mark.parametrize(
    "name, exporter",
    # The dynamo exporter is slow: once for each layer type (the DCK with a cropped kernel).
    [(name, "torchscript") for name in sorted(LAYERS)]
    + [("dck_cropped", "dynamo"), ("deform", "dynamo")],
)
def test_torch_backend_exports_to_onnx(name, exporter):
    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        pytest.skip("this torch.onnx.export has no choice of exporter")
    layer = LAYERS[name]()
    x = torch.randn(2, 4, 9, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = layer(x)
    model = export(layer, x, exporter)
    onnx.checker.check_model(model, full_check=True)
    ops = {node.op_type for node in model.graph.node}
    assert "Gather" in ops and "GridSample" not in ops  # bilinear sampling as gathers
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), expected, atol=1e-4, rtol=1e-4)
