"""The Triton sampling kernels against the ``torch`` backend, and the router's self-check.

With CUDA the tests run the compiled kernels. Without, they run in Triton's interpreter on
CPU tensors, in a subprocess: ``TRITON_INTERPRET=1`` has to be set before ``triton`` is
imported at all (``@triton.jit`` reads it when it decorates, and triton's own library
functions, ``tl.cdiv``, ``tl.sum``, are decorated at its import, which importing
``dck_lightning.layers`` already does), so :func:`test_kernels_in_the_triton_interpreter`
runs this file again in a fresh process with it set, and in this process the kernel tests
skip. Shapes are tiny: the interpreter runs every program in Python.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from dck_lightning.layers import deform_conv2d, resolve_backend, sampling

MODULE = "dck_lightning.layers.triton_sampling"

# (in_ch, out_ch, k, stride, padding, dilation, groups, offset_groups, modulated, bias)
CASES = {
    "plain": (4, 6, 3, 1, 1, 1, 1, 1, True, True),
    "stride2": (4, 4, 3, 2, 1, 1, 1, 1, False, True),
    "dilation2": (3, 5, 3, 1, 2, 2, 1, 1, True, False),
    "groups2_offset_groups2": (4, 6, 3, 1, 1, 1, 2, 2, True, True),
    "offset_groups2_odd": (6, 3, (3, 1), 1, (1, 0), 1, 1, 2, False, False),
    "groups3": (6, 3, 3, 1, 0, 1, 3, 1, True, True),
}


IN_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.skipif(DEVICE == "cuda" or IN_INTERPRETER, reason="the kernels run in-process")
def test_kernels_in_the_triton_interpreter(request):
    """This file's kernel tests in a fresh process with ``TRITON_INTERPRET=1``."""
    pytest.importorskip("triton")
    command = [sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider"]
    if request.config.getoption("markexpr"):
        command += ["-m", request.config.getoption("markexpr")]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout.splitlines()[-1], result.stdout[-2000:]


@pytest.fixture(scope="module")
def kernels():
    """``(module, device)``: the Triton module with kernels that run here."""
    pytest.importorskip("triton")
    if DEVICE == "cpu" and not IN_INTERPRETER:
        pytest.skip("runs in test_kernels_in_the_triton_interpreter's subprocess")
    module = importlib.import_module(MODULE)
    assert module.INTERPRETED == (DEVICE == "cpu")
    return module, DEVICE


@pytest.fixture
def triton_router(kernels, monkeypatch):
    """Route the ``torch`` backend on the test device through the Triton op (self-check
    passed), counting its calls; ``route(False)`` turns the route off again."""
    module, device = kernels
    calls = []
    op = module.sampled_conv

    def counted(*args):
        calls.append(args[0].shape)
        return op(*args)

    monkeypatch.setattr(module, "sampled_conv", counted)
    monkeypatch.setattr(sampling, "_triton_checks", {})
    monkeypatch.setattr(sampling, "_triton_self_check", lambda key: True)

    def route(on: bool) -> None:
        monkeypatch.setattr(sampling, "TRITON_DEVICES", (device,) if on else ())

    route(True)
    return device, calls, route


def random_inputs(case, batch=2, size=(5, 6), dtype=torch.float32, scale=2.0, seed=0):
    in_ch, out_ch, k, stride, padding, dilation, groups, offset_groups, modulated, bias = case
    kh, kw = (k, k) if isinstance(k, int) else k
    pad = (padding, padding) if isinstance(padding, int) else padding
    g = torch.Generator().manual_seed(seed)
    out_h = (size[0] + 2 * pad[0] - dilation * (kh - 1) - 1) // stride + 1
    out_w = (size[1] + 2 * pad[1] - dilation * (kw - 1) - 1) // stride + 1
    tensors = {
        "input": torch.randn(batch, in_ch, *size, generator=g),
        # Large offsets (many samples fall partly or fully outside the image), away from
        # integers: bilinear sampling has kinks there, where backends may differ.
        "offset": scale
        * torch.randn(batch, 2 * offset_groups * kh * kw, out_h, out_w, generator=g),
        "weight": torch.randn(out_ch, in_ch // groups, kh, kw, generator=g),
        "bias": torch.randn(out_ch, generator=g) if bias else None,
        "mask": torch.rand(batch, offset_groups * kh * kw, out_h, out_w, generator=g)
        if modulated
        else None,
    }
    offset = tensors["offset"].round()
    tensors["offset"] = offset + 0.25 + 0.5 * torch.rand(offset.shape, generator=g)
    tensors = {k: None if t is None else t.to(dtype) for k, t in tensors.items()}
    return tensors, {"stride": stride, "padding": padding, "dilation": dilation}


def conv_and_grads(tensors, kwargs, device, wanted=None):
    """``deform_conv2d(backend="torch")`` on ``device`` and the gradients of a fixed
    ``cos`` loss for the tensors in ``wanted`` (default: all), back on the CPU."""
    args = {k: None if t is None else t.to(device) for k, t in tensors.items()}
    wanted = [k for k, t in args.items() if t is not None and (wanted is None or k in wanted)]
    for k in wanted:
        args[k].requires_grad_(True)
    out = deform_conv2d(**args, backend="torch", **kwargs)
    weights = torch.cos(torch.arange(out.numel(), device=device, dtype=torch.float32))
    grads = torch.autograd.grad(
        out, [args[k] for k in wanted], weights.view(out.shape).to(out.dtype)
    )
    return {"output": out.detach().cpu(), **{k: g.cpu() for k, g in zip(wanted, grads)}}


def assert_relative_close(got, expected, tol):
    """Every tensor within ``tol`` of the expected one, relative to its largest entry."""
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name].shape == value.shape, name
        error = (got[name].float() - value).abs().max() / value.abs().max().clamp_min(1e-6)
        assert error <= tol, f"{name}: relative error {error:.2e} > {tol}"


@pytest.mark.parametrize("case", list(CASES))
def test_kernels_match_torch_backend(case, triton_router):
    device, calls, route = triton_router
    tensors, kwargs = random_inputs(CASES[case])
    got = conv_and_grads(tensors, kwargs, device)
    assert len(calls) == 1
    route(False)
    expected = conv_and_grads(tensors, kwargs, "cpu")
    assert_relative_close(got, expected, 1e-4)
    assert got["offset"].abs().max() > 0 and got["input"].abs().max() > 0


@pytest.mark.parametrize("wanted", ["input", "offset", "mask", "weight"])
def test_each_gradient_alone(wanted, triton_router):
    device, calls, route = triton_router
    tensors, kwargs = random_inputs(CASES["groups2_offset_groups2"])
    got = conv_and_grads(tensors, kwargs, device, wanted={wanted})
    route(False)
    expected = conv_and_grads(tensors, kwargs, "cpu", wanted={wanted})
    assert_relative_close(got, expected, 1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_within_its_tolerance(dtype, triton_router):
    device, calls, route = triton_router
    tensors, kwargs = random_inputs(CASES["plain"], dtype=dtype)
    got = conv_and_grads(tensors, kwargs, device)
    assert got["output"].dtype == dtype and got["input"].dtype == dtype
    route(False)  # the float32 reference of the same (rounded) values
    expected = conv_and_grads(
        {k: t if t is None else t.float() for k, t in tensors.items()}, kwargs, "cpu"
    )
    assert_relative_close(got, expected, 3e-2)


def test_several_tiles_and_a_split_weight_gradient(kernels, triton_router, monkeypatch):
    """Small blocks: 4 row blocks (the last partial), 3 channel blocks of one 40-channel
    segment, 2 output-channel blocks, and the weight gradient's rows split over 4 programs."""
    module, _ = kernels
    for name, value in (("BLOCK_M", 16), ("MAX_BLOCK_N", 16), ("MAX_BLOCK_C", 16)):
        monkeypatch.setattr(module, name, value)
    monkeypatch.setattr(module, "PROGRAMS_OFF_GPU", 64)
    monkeypatch.setattr(module, "PROGRAMS_PER_SM", 64)
    device, calls, route = triton_router
    tensors, kwargs = random_inputs((40, 20, 3, 1, 1, 1, 1, 1, True, True), size=(5, 5))
    got = conv_and_grads(tensors, kwargs, device)
    route(False)
    assert_relative_close(got, conv_and_grads(tensors, kwargs, "cpu"), 1e-4)


def test_deterministic_mode_runs_the_reference(triton_router):
    """The input gradient's atomics are not bitwise deterministic."""
    device, calls, route = triton_router
    tensors, kwargs = random_inputs(CASES["plain"])
    torch.use_deterministic_algorithms(True)
    try:
        conv_and_grads(tensors, kwargs, device)
    finally:
        torch.use_deterministic_algorithms(False)
    assert not calls


def test_empty_batch(triton_router):
    device, calls, route = triton_router
    tensors, kwargs = random_inputs(CASES["plain"], batch=0)
    got = conv_and_grads(tensors, kwargs, device)
    assert calls and got["output"].shape == (0, 6, 5, 6)
    assert got["weight"].abs().max() == 0 and got["bias"].abs().max() == 0


def test_non_contiguous_arguments(triton_router):
    """Strided input, offsets and mask sliced from one tensor (DCNv2's pattern), a weight
    transposed in memory: the same numbers as contiguous ones."""
    device, calls, route = triton_router
    tensors, kwargs = random_inputs(CASES["groups2_offset_groups2"])
    expected = conv_and_grads(tensors, kwargs, device)
    joint = torch.cat((tensors["offset"], tensors["mask"]), dim=1)
    joint = joint.transpose(2, 3).contiguous().transpose(2, 3).to(device)
    strided = {
        "input": torch.cat((tensors["input"],) * 2, dim=1)[:, ::2].to(device),
        "offset": joint[:, :36],
        "mask": joint[:, 36:],
        "weight": tensors["weight"].transpose(0, 3).contiguous().transpose(0, 3).to(device),
        "bias": tensors["bias"],
    }
    strided["input"].copy_(tensors["input"])
    assert not any(strided[k].is_contiguous() for k in ("input", "offset", "mask", "weight"))
    assert_relative_close(conv_and_grads(strided, kwargs, device), expected, 1e-6)


def test_nan_offsets_give_nan_outputs(triton_router):
    device, calls, route = triton_router
    tensors, kwargs = random_inputs(CASES["plain"])
    tensors["offset"][0, :, 0, 0] = float("nan")
    out = deform_conv2d(
        **{k: v if v is None else v.to(device) for k, v in tensors.items()},
        backend="torch",
        **kwargs,
    ).cpu()
    assert calls and out[0, :, 0, 0].isnan().all()
    assert torch.isfinite(out[1]).all()


def test_adaptive_dck_runs_the_kernels(triton_router):
    """The DCK's affine positions (``p + t + s·p_k``) reach the same op."""
    from dck_lightning.layers import DynamicConv2d

    device, calls, route = triton_router
    torch.manual_seed(0)
    layer = DynamicConv2d(4, 6, 3, backend="torch")
    with torch.no_grad():  # a shift and a scale that move the taps off the pixel grid
        layer.localization.conv.weight.normal_(0, 0.3)
    x = torch.randn(2, 4, 5, 6)
    results = []
    for on in (True, False):
        route(on)
        layer.zero_grad()
        out = layer.to(device)(x.to(device))
        out.backward(torch.cos(out.detach()))
        grads = {n: p.grad.cpu() for n, p in layer.named_parameters() if p.grad is not None}
        results.append({"output": out.detach().cpu(), **grads})
    assert len(calls) == 1
    assert_relative_close(*results, 1e-4)


def test_op_schema_fake_and_autograd(kernels):
    """``torch.library.opcheck``: the schema, the fake implementation (what
    :func:`torch.compile` traces), the autograd registration and AOT dispatch."""
    module, device = kernels
    g = torch.Generator().manual_seed(0)
    positions = [torch.rand(2, 3, 4, 9, 2, generator=g) * 8 - 2 for _ in range(2)]
    args = (
        torch.randn(2, 4, 5, 6, generator=g),
        *positions,
        torch.rand(2, 3, 4, 9, 2, generator=g),
        torch.randn(6, 2, 3, 3, generator=g),
        torch.randn(6, generator=g),
    )
    args = tuple(t.to(device).requires_grad_(True) for t in args)
    results = torch.library.opcheck(module.sampled_conv, args)
    assert set(results.values()) == {"SUCCESS"}, results


def test_compiled_model_keeps_the_op_and_checks_eagerly(triton_router, monkeypatch):
    """Under :func:`torch.compile` (``auto`` backend) the op is traced whole (its fake) and
    the self-check of a new class runs eagerly, once."""
    device, calls, route = triton_router
    checked = []
    monkeypatch.setattr(sampling, "_triton_self_check", lambda key: checked.append(key) or True)
    tensors, kwargs = random_inputs(CASES["plain"])
    args = {k: t.to(device) for k, t in tensors.items()}

    def conv(input, offset, mask):
        return deform_conv2d(input, offset, args["weight"], args["bias"], mask=mask, **kwargs)

    compiled = torch.compile(conv, backend="aot_eager")
    out = compiled(args["input"], args["offset"], args["mask"])
    compiled(args["input"], args["offset"], args["mask"])
    # ``auto``'s representative class (8 -> 8 channels), then this one; each once.
    assert [key[3:5] for key in checked] == [(8, 8), (4, 6)] and len(calls) == 2
    route(False)
    expected = conv(args["input"], args["offset"], args["mask"])
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


# The router's self-check: the real kernels pass, a wrong one warns once and falls back.


@pytest.fixture
def checked_router(kernels, monkeypatch):
    """The router on the test device with an empty record of checked classes (real checks)."""
    module, device = kernels
    monkeypatch.setattr(sampling, "TRITON_DEVICES", (device,))
    monkeypatch.setattr(sampling, "_triton_checks", {})
    return module, device


def run_plain(device):
    tensors, kwargs = random_inputs(CASES["plain"])
    return conv_and_grads(tensors, kwargs, device)


def test_self_check_passes_on_the_real_kernels(checked_router):
    module, device = checked_router
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_plain(device)
    assert list(sampling._triton_checks.values()) == [True]


@pytest.mark.parametrize("fault", ["forward", "backward", "compile"])
def test_a_wrong_kernel_warns_once_and_falls_back(fault, checked_router, monkeypatch):
    module, device = checked_router
    if fault == "forward":
        op = module.sampled_conv
        monkeypatch.setattr(module, "sampled_conv", lambda *args: op(*args) * 1.01)
    elif fault == "backward":  # the weight gradient doubled
        backward = module.sampled_conv_backward

        def doubled(*args):
            *grads, grad_weight = backward(*args)
            return (*grads, 2 * grad_weight)

        monkeypatch.setattr(module, "sampled_conv_backward", doubled)
    else:

        def broken(*args):
            raise RuntimeError("PassManager::run failed")

        monkeypatch.setattr(module, "sampled_conv", broken)
    message = {"forward": "output differs", "backward": "weight differs", "compile": "PassManager"}
    with pytest.warns(RuntimeWarning, match=rf"4->6 channels, groups=1, .*{message[fault]}"):
        got = run_plain(device)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per class
        again = run_plain(device)
    assert list(sampling._triton_checks.values()) == [False]
    monkeypatch.setattr(sampling, "TRITON_DEVICES", ())
    expected = run_plain(device)  # the reference
    assert_relative_close(got, expected, 1e-6)
    assert_relative_close(again, expected, 1e-6)


def test_without_triton_the_fallback_is_silent(checked_router, monkeypatch):
    module, device = checked_router
    monkeypatch.setattr(sampling, "_triton_import", [None])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_plain(device)
        assert not sampling.triton_ready(torch.device(device), torch.float32)
    checks = list(sampling._triton_checks.values())
    assert checks and not any(checks)


def test_auto_takes_the_kernels_for_float32_when_they_pass(checked_router, monkeypatch):
    """``auto`` for float32 on a Triton device: the ``torch`` backend when the kernels pass
    their check, else the device's table (torchvision on CUDA, simulated here)."""
    module, device = checked_router
    monkeypatch.setattr(sampling, "_AUTO_BACKEND_BY_DEVICE", {device: "torchvision"})
    x = torch.zeros(1, 1, 4, 4, device=device)
    assert resolve_backend("auto", x) == "torch"
    assert resolve_backend("auto", x.double()) == "torchvision"
    monkeypatch.setattr(sampling, "_triton_checks", {})
    monkeypatch.setattr(module, "sampled_conv", lambda *args: 1 / 0)
    with pytest.warns(RuntimeWarning, match="ZeroDivisionError"):
        assert resolve_backend("auto", x) == "torchvision"
