"""Cross attention (ULCA, Eq. 2-3): identity at alpha=0, gradients, policies, sdpa == naive."""

from __future__ import annotations

import pytest
import torch

from nightseg.models import CrossAttention, build_segmenter
from nightseg.models.cross_attention import CrossAttentionSegmenter


def _naive(module: CrossAttention, night: torch.Tensor, day: torch.Tensor) -> torch.Tensor:
    """Eq. 2-3 with an explicit N x M attention map."""
    b, c, h, w = night.shape
    q = module.query(night).flatten(2)  # [B, C', N]
    k = module.key(day).flatten(2)  # [B, C', M]
    v = module.value(night if module.value_source == "night" else day).flatten(2)  # [B, C, M]
    s = torch.softmax(torch.einsum("bcj,bci->bji", q, k), dim=-1)  # s_ji, softmax over i (day positions)
    e = torch.einsum("bji,bci->bcj", s, v).reshape(b, c, h, w)
    return module.alpha * e + night


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 16, 5, 7, generator=g), torch.randn(2, 16, 5, 7, generator=g)


@pytest.mark.parametrize("value", ["night", "day"])
def test_alpha_zero_is_identity(pair, value):
    night, day = pair
    module = CrossAttention(16, value=value)
    assert module.alpha.item() == 0.0
    assert torch.equal(module(night, day), night)
    assert torch.equal(module(night, policy="self"), night)


def test_gradient_reaches_alpha_then_projections(pair):
    night, day = pair
    module = CrossAttention(16)
    module(night, day).pow(2).sum().backward()
    assert module.alpha.grad is not None and module.alpha.grad.abs().item() > 0
    # at alpha = 0 the projections get no gradient yet; once alpha moves, they do
    assert module.query.weight.grad.abs().sum().item() == 0
    with torch.no_grad():
        module.alpha.fill_(0.5)
    module.zero_grad()
    module(night, day).pow(2).sum().backward()
    for conv in (module.query, module.key, module.value):
        assert conv.weight.grad.abs().sum().item() > 0


@pytest.mark.parametrize("qk", ["reduced", "full"])
@pytest.mark.parametrize("value", ["night", "day"])
@pytest.mark.parametrize("chunk", [None, 8])
def test_sdpa_matches_naive(pair, value, chunk, qk):
    night, day = pair
    module = CrossAttention(16, reduction=4, value=value, chunk_size=chunk, qk_channels=qk)
    with torch.no_grad():
        module.alpha.fill_(0.7)
        got = module(night, day)
        want = _naive(module, night, day)
    assert not torch.allclose(got, night)  # attention changed something
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_automatic_chunking_with_recompute_matches_unchunked(monkeypatch):
    import nightseg.models.cross_attention as ca

    g = torch.Generator().manual_seed(1)
    night, day = torch.randn(1, 16, 9, 10, generator=g), torch.randn(1, 16, 9, 10, generator=g)
    monkeypatch.setattr(ca, "CHUNK_ELEMENTS", 1)  # -> chunks of 64 query positions (of 90)
    assert ca.auto_chunk(torch.zeros(1, 1, 90, 2), torch.zeros(1, 1, 90, 16)) == 64
    chunked = CrossAttention(16, reduction=8)
    whole = CrossAttention(16, reduction=8, chunk_size=10**6)
    whole.load_state_dict(chunked.state_dict())
    grads = []
    for module in (chunked, whole):
        with torch.no_grad():
            module.alpha.fill_(0.4)
        out = module(night, day)
        out.pow(2).sum().backward()
        grads.append((out.detach(), module.query.weight.grad.clone(), module.value.weight.grad.clone()))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    assert grads[0][1].abs().sum() > 0


@pytest.mark.parametrize("chunk", [None, 8])
def test_sdpa_gets_unit_last_stride_so_cuda_can_use_a_fused_kernel(pair, chunk, monkeypatch):
    """CUDA's fused sdpa kernels need stride 1 in the last dim, else the math kernel builds the N x M map in
    fp32 (what the H200 check measured for ULCA at 960x960); the strides are checked here on the CPU."""
    import nightseg.models.cross_attention as ca

    seen = []
    real = ca.F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        seen.append([t.stride(-1) for t in (q, k, v)])
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(ca.F, "scaled_dot_product_attention", spy)
    night, day = pair
    module = CrossAttention(16, reduction=4, chunk_size=chunk)
    with torch.no_grad():
        module.alpha.fill_(0.5)
    module(night, day).sum().backward()
    # 35 query positions in chunks of 8: 5 calls, and 5 more when backward recomputes the checkpointed chunks
    assert len(seen) == (1 if chunk is None else 10)
    assert all(strides == [1, 1, 1] for strides in seen), seen


def test_value_source_matters(pair):
    night, day = pair
    a = CrossAttention(16, value="night")
    b = CrossAttention(16, value="day")
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        a.alpha.fill_(1.0)
        b.alpha.fill_(1.0)
        assert not torch.allclose(a(night, day), b(night, day))


def test_policies(pair):
    night, _ = pair
    module = CrossAttention(16, policy="bypass")
    with torch.no_grad():
        module.alpha.fill_(0.3)
        assert module(night) is night
        self_out = module(night, policy="self")
        assert self_out.shape == night.shape
        assert torch.allclose(self_out, _naive(module, night, night), atol=1e-5)
        # reference: a day image's features of another size work with value="day"
        reference = torch.randn(2, 16, 3, 4)
        ref_module = CrossAttention(16, value="day", policy="reference")
        ref_module.alpha.fill_(0.3)
        assert ref_module(night, reference).shape == night.shape
        with pytest.raises(ValueError, match="reference"):
            ref_module(night)
        with pytest.raises(ValueError, match="same size"):
            module(night, reference)
    with pytest.raises(ValueError, match="policy"):
        CrossAttention(16, policy="dream")


def test_segmenter_with_cross_attention():
    model = build_segmenter("pspnet_tiny", num_classes=5, cross_attention={"value": "day", "policy": "self"})
    assert isinstance(model, CrossAttentionSegmenter)
    plain = build_segmenter("pspnet_tiny", num_classes=5)
    plain.load_state_dict(model.segmenter.state_dict())
    model.eval()
    plain.eval()
    night, day = torch.rand(2, 3, 48, 64), torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        # alpha = 0: identical to the plain segmenter whatever the policy
        assert torch.allclose(model(night), plain(night))
        night_logits, day_logits = model.forward_pair(night, day)
        assert night_logits.shape == day_logits.shape == (2, 5, 48, 64)
        assert torch.allclose(day_logits, plain(day))
        model.attention.alpha.fill_(0.5)
        assert not torch.allclose(model(night, day), plain(night))
        assert model(night, torch.rand(2, 3, 32, 40)).shape == (2, 5, 48, 64)  # reference of another size
    again = build_segmenter(**model.config)
    assert again.state_dict().keys() == model.state_dict().keys()
    assert again.config["cross_attention"] == {"value": "day", "policy": "self", "reduction": 8,
                                               "qk_channels": "reduced"}
    model.train()
    night_logits, _ = model.forward_pair(night, day)
    night_logits.mean().backward()
    assert model.attention.alpha.grad is not None


def test_qk_channels_full_is_the_papers_width_and_reduced_is_c_over_8(pair):
    night, day = pair
    full, reduced = CrossAttention(16, qk_channels="full"), CrossAttention(16, qk_channels="reduced")
    assert full.query.weight.shape == full.key.weight.shape == (16, 16, 1, 1)  # Eq. 2: W_q, W_k map C to C
    assert reduced.query.weight.shape == reduced.key.weight.shape == (2, 16, 1, 1)  # SAGAN: C/8
    assert full.value.weight.shape == reduced.value.weight.shape == (16, 16, 1, 1)
    # parameters: 2 (C*C' + C') + C*C + C + 1
    assert sum(p.numel() for p in full.parameters()) == 2 * (16 * 16 + 16) + 16 * 16 + 16 + 1
    assert sum(p.numel() for p in reduced.parameters()) == 2 * (16 * 2 + 2) + 16 * 16 + 16 + 1
    # same value projection, different Q/K widths: different attention maps, so different outputs
    full.value.load_state_dict(reduced.value.state_dict())
    with torch.no_grad():
        full.alpha.fill_(1.0)
        reduced.alpha.fill_(1.0)
        assert not torch.allclose(full(night, day), reduced(night, day))
    with pytest.raises(ValueError, match="qk_channels"):
        CrossAttention(16, qk_channels="half")


def test_qk_channels_round_trips_and_old_configs_mean_reduced():
    model = build_segmenter("pspnet_tiny", num_classes=5, cross_attention={"qk_channels": "full"})
    c = model.feature_channels
    assert model.attention.query.weight.shape[0] == c
    again = build_segmenter(**model.config)
    assert again.attention.query.weight.shape[0] == c and again.config["cross_attention"]["qk_channels"] == "full"
    # a checkpoint config written before the option existed ({"value", "policy", "reduction"}) is C/8
    old = build_segmenter("pspnet_tiny", num_classes=5,
                          cross_attention={"value": "night", "policy": "bypass", "reduction": 8})
    assert old.attention.query.weight.shape[0] == c // 8
