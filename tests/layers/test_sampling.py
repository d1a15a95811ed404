"""The deformable sampling op: backends agree, gradcheck, low precision, backend selection."""

from __future__ import annotations

import pytest
import torch

from dck_lightning.layers import (
    deform_conv2d,
    get_default_backend,
    resolve_backend,
    sampling,
    sampling_backend,
)

CASES = [
    # (in_ch, out_ch, k, stride, padding, dilation, groups, offset_groups, modulated)
    (4, 6, 3, 1, 1, 1, 1, 1, True),
    (4, 6, 3, 2, 1, 1, 2, 2, True),
    (4, 4, 5, 1, 2, 2, 1, 4, False),
    (2, 3, (3, 1), 1, (1, 0), 1, 1, 1, True),
]


@pytest.fixture(params=["table", "grid_sample", "reference"])
def torch_path(request, monkeypatch):
    """Run the ``torch`` backend through each of its paths: the fused CPU op on the input's
    table (in several chunks, the last one partial), grid_sample (the CPU path of inputs with
    few channels), or the autograd composition used off the CPU and for export."""
    if request.param == "table":
        monkeypatch.setattr(sampling, "GRID_SAMPLE_MAX_CHANNELS", 0)
        monkeypatch.setattr(
            sampling, "CHUNK_BYTES", 5 * 9 * 4 * 4
        )  # 5 im2col rows of 3x3 taps, 4 channels
    elif request.param == "grid_sample":
        monkeypatch.setattr(sampling, "GRID_SAMPLE_MAX_CHANNELS", 2**31)
    else:
        monkeypatch.setattr(sampling, "_fused_cpu_path", lambda input: False)
    return request.param


def random_inputs(case, seed=0, dtype=torch.float32, scale=3.0):
    in_ch, out_ch, k, stride, padding, dilation, groups, offset_groups, modulated = case
    kh, kw = (k, k) if isinstance(k, int) else k
    pad = (padding, padding) if isinstance(padding, int) else padding
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, in_ch, 7, 8, generator=g, dtype=dtype)
    out_h = (7 + 2 * pad[0] - dilation * (kh - 1) - 1) // stride + 1
    out_w = (8 + 2 * pad[1] - dilation * (kw - 1) - 1) // stride + 1
    # Large offsets: many samples fall partly or fully outside the image.
    offset = scale * torch.randn(
        2, 2 * offset_groups * kh * kw, out_h, out_w, generator=g, dtype=dtype
    )
    weight = torch.randn(out_ch, in_ch // groups, kh, kw, generator=g, dtype=dtype)
    bias = torch.randn(out_ch, generator=g, dtype=dtype)
    mask = (
        torch.rand(2, offset_groups * kh * kw, out_h, out_w, generator=g, dtype=dtype)
        if modulated
        else None
    )
    kwargs = {"stride": stride, "padding": padding, "dilation": dilation}
    return x, offset, weight, bias, mask, kwargs


@pytest.mark.parametrize("case", CASES)
def test_backends_agree_forward_and_backward(case, torch_path):
    results = {}
    for backend in ("torch", "torchvision"):
        x, offset, weight, bias, mask, kwargs = random_inputs(case)
        tensors = [t for t in (x, offset, weight, bias, mask) if t is not None]
        for t in tensors:
            t.requires_grad_(True)
        out = deform_conv2d(x, offset, weight, bias, mask=mask, backend=backend, **kwargs)
        out.backward(torch.cos(out.detach()))
        results[backend] = [out.detach()] + [t.grad for t in tensors]
    assert any((o.abs() > 0).any() for o in results["torch"][2:3])  # offsets receive gradient
    for a, b in zip(results["torch"], results["torchvision"]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("needs_grad", ["input", "offset", "weight", "mask"])
def test_backends_agree_when_one_input_needs_grad(needs_grad, torch_path):
    grads = {}
    for backend in ("torch", "torchvision"):
        x, offset, weight, bias, mask, kwargs = random_inputs(CASES[1])
        tensor = {"input": x, "offset": offset, "weight": weight, "mask": mask}[needs_grad]
        tensor.requires_grad_(True)
        out = deform_conv2d(x, offset, weight, bias, mask=mask, backend=backend, **kwargs)
        (grads[backend],) = torch.autograd.grad(out, tensor, torch.cos(out.detach()))
    torch.testing.assert_close(grads["torch"], grads["torchvision"], atol=1e-4, rtol=1e-4)


def test_channels_last_input_gives_channels_last_output(torch_path):
    x, offset, weight, bias, mask, kwargs = random_inputs(CASES[0])
    expected = deform_conv2d(x, offset, weight, bias, mask=mask, backend="torch", **kwargs)
    out = deform_conv2d(
        x.to(memory_format=torch.channels_last),
        offset,
        weight,
        bias,
        mask=mask,
        backend="torch",
        **kwargs,
    )
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert expected.is_contiguous()
    torch.testing.assert_close(out, expected)


def test_gradcheck_float64_non_integer_offsets(torch_path):
    case = (2, 2, 3, 1, 1, 1, 1, 1, True)
    x, offset, weight, bias, mask, kwargs = random_inputs(case, dtype=torch.float64, scale=0.7)
    x, weight, bias = x[:1, :, :4, :5], weight, bias
    offset, mask = offset[:1, :, :4, :5], mask[:1, :, :4, :5]
    # Keep offsets away from integers, where bilinear interpolation has kinks.
    offset = offset.round() + 0.3 + 0.4 * torch.rand_like(offset)
    inputs = tuple(t.clone().requires_grad_(True) for t in (x, offset, weight, bias, mask))
    assert torch.autograd.gradcheck(
        lambda a, o, w, b, m: deform_conv2d(a, o, w, b, mask=m, backend="torch", **kwargs),
        inputs,
        eps=1e-6,
        atol=1e-5,
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_torch_backend_runs_in_half_precision(dtype, torch_path):
    x, offset, weight, bias, mask, kwargs = random_inputs(CASES[0])
    ref = deform_conv2d(x, offset, weight, bias, mask=mask, backend="torch", **kwargs)
    out = deform_conv2d(
        x.to(dtype),
        offset.to(dtype),
        weight.to(dtype),
        bias.to(dtype),
        mask=mask.to(dtype),
        backend="torch",
        **kwargs,
    )
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=0.5, rtol=0.05)


def test_torch_backend_under_cpu_autocast_bfloat16(torch_path):
    from dck_lightning.layers import DCB

    block = DCB(4, 8, backend="torch")
    x = torch.randn(2, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
        assert resolve_backend(None, x) == "torch"
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()
    assert block.deform[0].offset_conv.weight.grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_torch_backend_trains_under_cuda_autocast(dtype):
    """CUDA autocast (``bf16-mixed``/``16-mixed``) picks the ``torch`` backend; its backward
    has to run there (CUDA's embedding_bag has no bfloat16 per-sample-weight backward)."""
    from dck_lightning.layers import DCB

    block = DCB(4, 8).cuda()
    x = torch.randn(2, 4, 8, 8, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        out = block(x)
        assert resolve_backend(None, x) == "torch"
    out.float().sum().backward()
    assert out.dtype == dtype
    assert torch.isfinite(block.deform[0].offset_conv.weight.grad).all()


def test_nan_offsets_give_nan_outputs_not_an_index_error(torch_path):
    x, offset, weight, bias, mask, kwargs = random_inputs(CASES[0])
    offset = offset.clone()
    offset[0, :, 0, 0] = float("nan")
    out = deform_conv2d(x, offset, weight, bias, mask=mask, backend="torch", **kwargs)
    assert out[0, :, 0, 0].isnan().all()
    assert torch.isfinite(out[1]).all()  # the other image is untouched


def test_backend_selection():
    x = torch.randn(1, 1, 4, 4)
    assert resolve_backend("auto", x) == "torch"  # CPU
    assert resolve_backend("torchvision", x) == "torchvision"
    assert resolve_backend(None, x.to(torch.bfloat16)) == "torch"
    with sampling_backend("torchvision"):
        assert get_default_backend() == "torchvision"
        assert resolve_backend(None, x) == "torchvision"
    assert get_default_backend() == "auto"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("cuda-magic", x)


def strided_layouts(x, offset, weight, mask, layout):
    """The same values as ``x, offset, weight, mask`` in non-contiguous layouts (issue 22).

    ``sliced``: offset and mask sliced from one conv output, DCNv2's usual pattern; ``permuted``:
    both channels-last views of that output; ``transposed``: their spatial axes swapped in
    memory (no height/width merge is a view); plus a strided input and a transposed weight.
    """
    joint = torch.cat((offset, mask), dim=1)
    n_offset = offset.shape[1]
    if layout == "sliced":
        pass
    elif layout == "permuted":
        joint = joint.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    elif layout == "transposed":
        joint = joint.transpose(2, 3).contiguous().transpose(2, 3)
    x = torch.cat((x, torch.zeros_like(x)), dim=1)[:, : x.shape[1]]  # channel stride 2·HW
    x = x.transpose(2, 3).contiguous().transpose(2, 3) if layout == "transposed" else x
    weight = weight.transpose(0, 3).contiguous().transpose(0, 3)
    return x, joint[:, :n_offset], weight, joint[:, n_offset:]


@pytest.mark.parametrize("layout", ["sliced", "permuted", "transposed"])
def test_non_contiguous_arguments_match_torchvision(layout, torch_path):
    x, offset, weight, bias, mask, kwargs = random_inputs(CASES[1])
    expected = deform_conv2d(x, offset, weight, bias, mask=mask, backend="torchvision", **kwargs)
    x, offset, weight, mask = strided_layouts(x, offset, weight, mask, layout)
    assert not (offset.is_contiguous() or mask.is_contiguous() or weight.is_contiguous())
    out = deform_conv2d(x, offset, weight, bias, mask=mask, backend="torch", **kwargs)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("layout", ["sliced", "transposed"])
def test_gradcheck_non_contiguous_arguments(layout, torch_path):
    case = (2, 2, 3, 1, 1, 1, 1, 1, True)
    x, offset, weight, bias, mask, kwargs = random_inputs(case, dtype=torch.float64, scale=0.7)
    x, offset, mask = x[:1, :, :4, :5], offset[:1, :, :4, :5], mask[:1, :, :4, :5]
    offset = offset.round() + 0.3 + 0.4 * torch.rand_like(offset)
    raw = torch.cat((offset, torch.logit(mask.clamp(0.1, 0.9))), dim=1).requires_grad_(True)
    x, weight = x.clone().requires_grad_(True), weight.clone().requires_grad_(True)

    def conv(a, r, w):
        a, o, w, m = strided_layouts(a, r[:, :18], w, r[:, 18:], layout)
        return deform_conv2d(a, o, w, bias, mask=m.sigmoid(), backend="torch", **kwargs)

    assert torch.autograd.gradcheck(conv, (x, raw, weight), eps=1e-6, atol=1e-5)
