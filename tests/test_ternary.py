"""Ternary (BitNet b1.58) predictor: quantisers, STE, 2-bit packing, packed checkpoints."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import vljepa
from conftest import TINY_PREDICTOR
from vljepa.kernels import bitlinear as T
from vljepa.kernels import ternary_gemm as K
from vljepa.quantize import quantize

TERNARY = {**TINY_PREDICTOR, "quant": "ternary"}


def test_weight_quantizer_gives_three_values_times_the_absmean_scale():
    w = torch.randn(64, 48) * 0.3
    codes, scale = T.ternary_weight(w)
    assert codes.dtype == torch.int8 and set(codes.unique().tolist()) == {-1, 0, 1}
    assert torch.isclose(scale, w.abs().mean())
    dq = BitLinearWithWeight(w).dequantized_weight().detach()
    assert torch.equal(dq.unique(), torch.stack([-scale, scale.new_zeros(()), scale]))
    # absmean rounding: |w| < scale/2 -> 0, otherwise the sign
    assert torch.equal(codes, torch.where(w.abs() < scale / 2, 0, w.sign()).to(torch.int8))


def BitLinearWithWeight(w: torch.Tensor) -> T.BitLinear:
    m = T.BitLinear(w.shape[1], w.shape[0])
    with torch.no_grad():
        m.weight.copy_(w)
    return m


def test_activation_quantizer_uses_at_most_256_levels_per_token():
    x = torch.randn(3, 7, 100) * torch.tensor([0.01, 1.0, 50.0]).view(3, 1, 1)
    q = T.quantize_activations(x)
    step = x.abs().amax(-1, keepdim=True) / 127
    levels = q / step
    assert torch.allclose(levels, levels.round(), atol=1e-3)  # on the per-token grid
    assert (q - x).abs().le(step / 2 + 1e-6).all()  # round to nearest
    assert torch.equal(T.quantize_activations(torch.zeros(2, 4)), torch.zeros(2, 4))


def test_gradients_flow_through_the_straight_through_estimator():
    torch.manual_seed(0)
    m = T.BitLinear(16, 8, norm=True)
    x = torch.randn(4, 16, requires_grad=True)
    m(x).pow(2).sum().backward()
    for name, g in [("x", x.grad), ("weight", m.weight.grad), ("norm", m.norm.weight.grad)]:
        assert g is not None and g.abs().sum() > 0, name
    # STE: d(sum(W_q x_q))/dW is x_q summed over the batch, as if quantisation were the identity
    m.zero_grad()
    x = torch.randn(4, 16)
    m.norm = None
    m(x).sum().backward()
    expected = T.quantize_activations(x).sum(0).expand(8, 16)
    assert torch.allclose(m.weight.grad, expected, atol=1e-5)


@pytest.mark.parametrize("numel", [1, 3, 4, 5, 4 * 97 + 2])
def test_pack_unpack_round_trip_is_exact(numel):
    codes = torch.randint(-1, 2, (numel,), dtype=torch.int8)
    packed = T.pack_ternary(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-numel // 4)  # four per byte
    assert torch.equal(T.unpack_ternary(packed, (numel,)), codes)


def test_pack_rejects_non_ternary_and_unpack_rejects_bad_bytes():
    with pytest.raises(ValueError, match="only -1, 0 and"):
        T.pack_ternary(torch.tensor([0, 2], dtype=torch.int8))
    packed = T.pack_ternary(torch.zeros(6, 4, dtype=torch.int8))
    with pytest.raises(ValueError, match=r"'w' .*needs uint8 \(6,\)"):
        T.unpack_ternary(packed[:-1], (6, 4), "w")
    with pytest.raises(ValueError, match="code 3"):
        T.unpack_ternary(torch.full((6,), 255, dtype=torch.uint8), (6, 4), "w")


def test_packed_layer_matches_the_latent_layer_bit_for_bit():
    torch.manual_seed(0)
    m = T.BitLinear(40, 24, norm=True).eval()
    x = torch.randn(2, 5, 40)
    with torch.no_grad(), K.reference_path():  # the kernel: tests/test_ternary_kernel.py
        before = m(x)
        m.to_packed()
        after = m(x)
    assert m.packed and "weight" not in dict(m.named_parameters())
    assert m.weight_packed.numel() == 24 * 40 // 4
    assert torch.equal(before, after)


@pytest.fixture(scope="module")
def ternary_model():
    torch.manual_seed(0)
    return vljepa.create_model({"predictor": TERNARY}).eval()


def _inputs(model):
    torch.manual_seed(1)
    ids, mask = model.tokenize_queries(["what color is the shape?", "is there a circle?"])
    return torch.randn(2, 49, 320), ids, mask


def test_ternary_checkpoint_saves_packed_and_loads_with_identical_outputs(ternary_model, tmp_path):
    m = ternary_model
    # The export keeps non-ternary predictor tensors in float16: round them first, so the
    # comparison below checks the packing alone, exactly.
    with torch.no_grad():
        for name, p in m.predictor.named_parameters():
            if not name.endswith(".weight") or not isinstance(
                    m.predictor.get_submodule(name.rsplit(".", 1)[0]), T.BitLinear):
                p.copy_(p.half().float())
    m.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    qkv = "predictor.blocks.layers.0.qkv."
    assert state[qkv + "weight_packed"].dtype == torch.uint8 and qkv + "weight" not in state
    assert state[qkv + "weight_packed"].numel() == 3 * 32 * 32 // 4
    assert state["predictor.head.weight"].dtype == torch.float16
    assert json.loads((tmp_path / "config.json").read_text())["model"]["predictor"]["quant"] == "ternary"

    loaded = vljepa.load(tmp_path)
    assert all(b.packed for b in T.bit_linears(loaded).values())
    with torch.no_grad(), K.reference_path():  # bit-exact through the unpacking path
        assert torch.equal(m(*_inputs(m)), loaded(*_inputs(loaded)))
    loaded.save_pretrained(tmp_path / "again")  # a packed model saves as it is
    again = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)


def test_corrupt_packed_tensor_is_a_clear_error(ternary_model, tmp_path):
    ternary_model.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    state = load_file(str(path))
    key = "predictor.blocks.layers.0.fc1.weight_packed"
    state[key] = state[key][:-3]
    save_file(state, str(path))
    with pytest.raises(ValueError, match=f"{key}.*shape \\(128, 32\\) needs uint8 \\(1024,\\)"):
        vljepa.load(tmp_path)


def test_quantize_converts_a_full_precision_model(model):
    q = quantize(model)
    assert q.config.predictor.quant == "ternary" and model.config.predictor.quant == "none"
    fp, tq = model.trained_state_dict(), q.trained_state_dict()
    assert torch.equal(fp["predictor.blocks.layers.0.linear1.weight"],
                       tq["predictor.blocks.layers.0.fc1.weight"])
    assert torch.equal(fp["predictor.head.weight"], tq["predictor.head.weight"])
    with torch.no_grad():  # close to the full-precision model, not equal (quantised)
        a, b = model(*_inputs(model)), q.eval()(*_inputs(q))
    assert a.shape == b.shape and not torch.equal(a, b)
    with pytest.raises(ValueError, match="quant='none'"):
        quantize(q)


def test_unknown_quant_mode_is_an_error():
    with pytest.raises(ValueError, match="predictor.quant must be one of"):
        vljepa.create_model({"predictor": {**TINY_PREDICTOR, "quant": "int4"}})


def test_a_ternary_predictor_learns_from_scratch_with_qat():
    torch.manual_seed(0)
    m = vljepa.create_model({"predictor": TERNARY}).train()
    visual = torch.randn(16, 49, 320)
    ids, mask = m.tokenize_queries(["what color is the shape?"] * 16)
    answers = ["red", "blue", "green", "yellow"] * 4
    target_ids = torch.arange(16) % 4
    opt = torch.optim.AdamW(m.param_groups(3e-3, 0.0))

    def loss():
        return m.loss(m(visual, ids, mask), m.target_embed(answers), target_ids)

    first = loss().item()
    for _ in range(30):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.5 * first


def test_experiment_config_selects_the_ternary_predictor():
    from conftest import compose
    cfg = compose(["experiment=ternary"])
    assert cfg.model.config.predictor.quant == "ternary"
    assert cfg.init_from is None


@pytest.mark.slow
def test_train_py_qat_fine_tune_from_a_full_precision_export(tmp_path, cache_dir):
    from conftest import compose, tiny_overrides
    from train import train

    fp_dir = tmp_path / "fp"
    train(compose(tiny_overrides(fp_dir, cache_dir)))
    metrics = train(compose(tiny_overrides(tmp_path / "qat", cache_dir)
                            + ["model.config.predictor.quant=ternary", f"init_from={fp_dir / 'model'}"]))
    assert 0.0 <= metrics["test/acc"] <= 1.0
    loaded = vljepa.load(tmp_path / "qat" / "model")
    assert loaded.config.predictor.quant == "ternary"
    assert all(b.packed for b in T.bit_linears(loaded).values())
