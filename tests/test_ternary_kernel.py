"""The packed ternary kernel (vljepa/kernels/ternary_gemm.py, csrc/ternary_gemm.cpp) against the
plain-torch reference; malformed packings; the fallback where the kernel is unavailable; the
ternary model's answers through the fast path against the reference path."""
import warnings

import pytest
import torch

import vljepa
from conftest import TINY_PREDICTOR
from vljepa.kernels import bitlinear as T
from vljepa.kernels import ternary_gemm as K


def _kernel_or_skip():
    if K.kernel() is None:
        pytest.skip(f"compiled kernel unavailable here: {K.kernel_unavailable_reason()}")


def _layer(n, k, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
    b = torch.randn(n, generator=g) if bias else None
    return codes, T.pack_ternary(codes), torch.tensor(0.0123 + seed % 7 * 0.1), b


def _assert_within_rounding(fast, x, codes, scale, bias):
    """|fast - reference| <= 1e-5 * sum_k |Q8(x)_k w_k| elementwise (float32 rounding only)."""
    ref = K.reference_linear(x, T.pack_ternary(codes), tuple(codes.shape), scale, bias)
    q, s = K.quantize_int8(x.reshape(-1, x.shape[-1]))
    bound = 1e-5 * ((q / s).abs() @ (codes.abs().float() * scale).T).view(ref.shape) + 1e-7
    err = (fast - ref).abs()
    assert fast.shape == ref.shape and fast.dtype == torch.float32
    assert (err <= bound).all(), f"max error {err.max():.3g}, max excess {(err - bound).max():.3g}"


# out/in not divisible by 4 (rows start mid-byte), by 32, by 128 (the kernel's block), and tiny
SHAPES = [(1, 1), (5, 7), (33, 130), (64, 128), (100, 257), (17, 1000), (256, 192), (3, 384),
          (130, 129), (96, 64), (40, 3000)]


@pytest.mark.parametrize("batch", [1, 7, 16, 65, 99])  # 16+: the unpacked-tile path
@pytest.mark.parametrize("n,k", SHAPES)
def test_kernel_equals_the_reference_unpack_and_matmul(n, k, batch):
    _kernel_or_skip()
    codes, packed, scale, bias = _layer(n, k, seed=n + k + batch, bias=batch != 7)
    x = torch.randn(batch, k, generator=torch.Generator().manual_seed(batch)) * 3
    fast = K.ternary_linear(x, packed, (n, k), scale, bias)
    _assert_within_rounding(fast, x, codes, scale, bias)


def _permuted(q: torch.Tensor) -> torch.Tensor:
    """The kernel's activation layout: per 128-input block, x[4j + t] at slot 32t + j; a last
    block of at most 64 inputs in 16-byte slices (slot 16t + j); zero past K."""
    m, k = q.shape
    kp = -(-k // 128) * 128
    q = torch.nn.functional.pad(q, (0, kp - k))
    out = q.view(m, -1, 32, 4).transpose(2, 3).reshape(m, kp)
    if 0 < k % 128 <= 64:
        last = q[:, kp - 128:kp - 64].reshape(m, 16, 4).transpose(1, 2).reshape(m, 64)
        out[:, kp - 128:] = torch.nn.functional.pad(last, (0, 64))
    return out


@pytest.mark.parametrize("k", [300, 192, 256, 200, 64, 33])
def test_kernel_quantises_activations_exactly_as_the_reference(k):
    """Rounding ties (half to even), all-zero rows (the EPS floor), huge and tiny values: an int8
    value off by one would break the rounding bound by orders of magnitude."""
    _kernel_or_skip()
    n = 9
    codes, packed, scale, bias = _layer(n, k, seed=3)
    x = torch.zeros(6, k)
    x[0, :8] = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5])  # s = 1: ties
    x[1] = 1e-30  # below EPS: scale floored
    x[2] = torch.linspace(-1e6, 1e6, k)
    x[3] = torch.randn(k) * 1e-3
    x[4, 5] = -7.0  # one non-zero
    # row 5 stays all zero
    x = torch.cat([x, torch.randn(200, k) * torch.logspace(-4, 4, 200).unsqueeze(1)])
    xq, xsum, inv = K.kernel().quantize_rows(x)  # the kernel's int8 activations, permuted
    q, s = K.quantize_int8(x)
    assert torch.equal(xq, _permuted(q.to(torch.int8)))
    assert torch.equal(xsum, q.sum(1, dtype=torch.int32))
    assert torch.equal(inv, 1 / s.view(-1))
    fast = K.ternary_linear(x, packed, (n, k), scale, bias)
    _assert_within_rounding(fast, x, codes, scale, bias)
    assert torch.equal(fast[5], bias)


def test_kernel_takes_any_leading_shape_and_non_contiguous_input():
    _kernel_or_skip()
    codes, packed, scale, bias = _layer(24, 40)
    x = torch.randn(40, 3, 5).permute(1, 2, 0)  # (3, 5, 40), not contiguous
    fast = K.ternary_linear(x, packed, (24, 40), scale, bias)
    assert fast.shape == (3, 5, 24)
    _assert_within_rounding(fast, x, codes, scale, bias)


def test_malformed_packed_tensor_is_a_clear_error():
    codes, packed, scale, bias = _layer(6, 10)  # 60 codes -> 15 bytes
    x = torch.randn(2, 10)
    with pytest.raises(ValueError, match="uint8 tensor, got torch.int8"):
        K.ternary_linear(x, packed.to(torch.int8), (6, 10), scale, bias)
    with pytest.raises(ValueError, match=r"packs into uint8 \(15,\).*got \(14,\)"):
        K.ternary_linear(x, packed[:-1], (6, 10), scale, bias)
    with pytest.raises(ValueError, match=r"packs into uint8 \(15,\).*got \(3, 5\)"):
        K.ternary_linear(x, packed.view(3, 5), (6, 10), scale, bias)
    with pytest.raises(ValueError, match=r"shape \(6, 12\) packs into uint8 \(18,\)"):
        K.ternary_linear(torch.randn(2, 12), packed, (6, 12), scale, bias)  # wrong in_features
    with pytest.raises(ValueError, match="input has 11 features; the packed weight takes 10"):
        K.ternary_linear(torch.randn(2, 11), packed, (6, 10), scale, bias)
    with pytest.raises(ValueError, match="out_features, in_features"):
        K.ternary_linear(x, packed, (60,), scale, bias)


def test_packed_bitlinear_uses_the_kernel_without_autograd_and_the_reference_with_it():
    _kernel_or_skip()
    torch.manual_seed(0)
    m = T.BitLinear(40, 24, norm=True).eval()
    x = torch.randn(2, 5, 40)
    with torch.no_grad():
        latent = m(x)
        m.to_packed()
        fast = m(x)
        with K.reference_path():
            ref = m(x)
        expected = K.ternary_linear(m.norm(x), m.weight_packed, (24, 40), m.weight_scale, m.bias)
    assert torch.equal(ref, latent)  # the unpacking path stays bit-exact
    assert torch.equal(fast, expected) and not torch.equal(fast, ref)
    xg = x.clone().requires_grad_()
    assert torch.equal(m(xg).detach(), latent)  # autograd through a packed layer: reference path


def test_fallback_without_the_kernel_warns_once_and_computes_the_reference(monkeypatch):
    monkeypatch.setenv("VLJEPA_NO_KERNEL", "1")
    K._reset_for_tests()
    try:
        codes, packed, scale, bias = _layer(12, 50)
        x = torch.randn(3, 50)
        m = T.BitLinear(50, 12).eval()
        m.to_packed()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            y1 = K.ternary_linear(x, packed, (12, 50), scale, bias)
            with torch.no_grad():
                m(x.unsqueeze(0))
                m(x)
        msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(msgs) == 1 and "VLJEPA_NO_KERNEL" in msgs[0] and "plain-torch" in msgs[0]
        assert torch.equal(y1, K.reference_linear(x, packed, (12, 50), scale, bias))
        assert K.kernel_unavailable_reason() == "VLJEPA_NO_KERNEL is set"
    finally:
        monkeypatch.delenv("VLJEPA_NO_KERNEL")
        K._reset_for_tests()


@pytest.fixture(scope="module")
def packed_model(tmp_path_factory):
    """A tiny random full-precision model, quantised (``vljepa quantize``), saved and loaded
    packed, as the released ternary model is served."""
    torch.manual_seed(0)
    fp = vljepa.create_model({"predictor": TINY_PREDICTOR}).eval()
    d = tmp_path_factory.mktemp("tern")
    vljepa.quantize(fp).save_pretrained(d)
    m = vljepa.load(d)
    assert all(b.packed for b in T.bit_linears(m).values())
    return m


def test_ternary_model_answers_the_same_through_the_kernel_and_the_reference(
        packed_model, easy_vqa_test_image):
    """Item 4 of issue 16: accuracy figures cannot move if every answer is the same. Each layer
    agrees to float32 rounding (the tests above); through a stack of layers a rounding-level
    difference can move one 8-bit activation across a rounding boundary (one quantisation step
    of one value), so whole predictions are bounded looser: cosine >= 1 - 1e-5, relative L2
    error <= 1e-3 (seen here: 3e-4 on one of seven rows, 2e-7 on the others)."""
    _kernel_or_skip()
    m = packed_model
    g = torch.Generator().manual_seed(0)
    images = [easy_vqa_test_image] + [torch.rand(3, 64, 64, generator=g) for _ in range(6)]
    questions = ["what color is the shape?", "is there a circle?", "what shape is this?",
                 "is the shape red?", "what is it?", "is there a blue triangle?", "colour?"]
    cands = ["red", "blue", "green", "yellow", "circle", "triangle", "rectangle", "yes", "no"]
    with torch.no_grad():
        fast = m.predict(images, questions)
        ans_fast, sc_fast = m.answer(images, questions, candidates=cands)
        with K.reference_path():
            ref = m.predict(images, questions)
            ans_ref, sc_ref = m.answer(images, questions, candidates=cands)
    cos = torch.nn.functional.cosine_similarity(fast, ref, dim=-1)
    assert (cos >= 1 - 1e-5).all()
    assert ((fast - ref).norm(dim=-1) <= 1e-3 * ref.norm(dim=-1)).all()
    assert ans_fast == ans_ref
    assert torch.allclose(torch.as_tensor(sc_fast), torch.as_tensor(sc_ref), atol=1e-4)


def test_ternary_zero_shot_is_the_same_through_the_kernel_and_the_reference(packed_model):
    """Item 4 of issue 16, zero-shot: the query-free image embedding (the batch-of-sequences
    path: 16 images) and the classification probabilities agree to float32 rounding, and every
    top-1 label is the same."""
    _kernel_or_skip()
    m = packed_model
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(16)]
    labels = ["a red circle", "a blue square", "a green triangle", "a cat", "the digit seven"]
    with torch.no_grad():
        z_fast, p_fast = m.embed_image(images), m.classify(images, labels)
        with K.reference_path():
            z_ref, p_ref = m.embed_image(images), m.classify(images, labels)
    assert (torch.nn.functional.cosine_similarity(z_fast, z_ref, dim=-1) >= 1 - 1e-5).all()
    assert torch.allclose(p_fast, p_ref, atol=1e-4)
    assert torch.equal(p_fast.argmax(-1), p_ref.argmax(-1))
