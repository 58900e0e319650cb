"""Each loss against a small independent computation (numpy / plain loops)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from radforge.trainer.heads import DINOHead
from radforge.trainer.losses import (
    Centering,
    DINOLoss,
    IBOTLoss,
    KoLeoLoss,
    SigRegLoss,
    crop_pairs,
    sinkhorn_knopp,
)

torch.set_num_threads(2)


def numpy_sinkhorn(scores: np.ndarray, temperature: float, iterations: int) -> np.ndarray:
    q = np.exp(scores.astype(np.float64) / temperature).T  # (K, N)
    k, n = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(axis=1, keepdims=True) * k
        q /= q.sum(axis=0, keepdims=True) * n
    return (q * n).T


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_sinkhorn_matches_reference_and_has_the_right_marginals() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(48, 16, generator=gen) * 2 - 1  # cosine-like scores in [-1, 1]
    q = sinkhorn_knopp(scores, temperature=0.05, iterations=3)
    np.testing.assert_allclose(q.numpy(), numpy_sinkhorn(scores.numpy(), 0.05, 3), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(48))  # each sample is a distribution
    # each prototype receives N/K of the mass in the limit of iterations
    q_many = sinkhorn_knopp(scores, temperature=0.05, iterations=200)
    torch.testing.assert_close(q_many.sum(dim=0), torch.full((16,), 3.0), rtol=1e-3, atol=1e-3)


def test_sinkhorn_survives_very_low_temperature_and_empty_batches() -> None:
    scores = torch.tensor([[1.0, -1.0], [0.9, -0.5]])
    q = sinkhorn_knopp(scores, temperature=1e-3, iterations=3)  # exp(1000) would overflow
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(2))
    assert sinkhorn_knopp(torch.empty(0, 8), temperature=0.07).shape == (0, 8)


def test_ema_centering_uses_then_updates_the_centre() -> None:
    centering = Centering(4, method="ema", momentum=0.9)
    scores = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    probs = centering(scores, temperature=0.5)
    torch.testing.assert_close(probs, torch.softmax(scores / 0.5, dim=-1))  # centre was 0
    torch.testing.assert_close(centering.center, 0.1 * scores.mean(0, keepdim=True))
    probs2 = centering(scores, temperature=0.5)
    torch.testing.assert_close(probs2, torch.softmax((scores - 0.1 * scores.mean(0)) / 0.5, dim=-1))


def test_centering_refuses_unknown_method() -> None:
    with pytest.raises(ValueError, match="sinkhorn, ema"):
        Centering(4, method="softmax")  # type: ignore[arg-type]


def test_dino_loss_matches_a_loop_over_crop_pairs() -> None:
    rng = np.random.default_rng(0)
    n_global, n_local, b, k = 2, 3, 4, 10
    student = rng.normal(size=(n_global + n_local, b, k))
    teacher = rng.dirichlet(np.ones(k), size=(n_global, b))
    expected, pairs = 0.0, 0
    for s in range(n_global + n_local):
        for t in range(n_global):
            if s == t:
                continue
            expected += -(teacher[t] * log_softmax(student[s] / 0.1)).sum(-1).mean()
            pairs += 1
    loss = DINOLoss(student_temp=0.1)(torch.tensor(student), torch.tensor(teacher))
    assert loss.item() == pytest.approx(expected / pairs, rel=1e-5)
    assert crop_pairs(n_global=2, n_local=3).sum().item() == pairs == 8


def test_ibot_loss_counts_masked_patches_only_and_weighs_images_equally() -> None:
    rng = np.random.default_rng(1)
    b, n, k = 3, 6, 5
    student_all = torch.tensor(rng.normal(size=(b, n, k)))
    teacher_all = torch.tensor(rng.dirichlet(np.ones(k), size=(b, n)))
    masks = torch.zeros(b, n, dtype=torch.bool)
    masks[0, :1] = True  # one masked patch
    masks[1, :4] = True  # four; image 2 has none
    loss_fn = IBOTLoss(student_temp=0.1)
    loss = loss_fn(student_all[masks], teacher_all[masks], masks=masks)
    per_image = []
    for i in range(b):
        idx = masks[i].numpy()
        if idx.any():
            ce = -(teacher_all[i].numpy()[idx] * log_softmax(student_all[i].numpy()[idx] / 0.1)).sum(-1)
            per_image.append(ce.mean())
    assert loss.item() == pytest.approx(sum(per_image) / b, rel=1e-6)
    # changing predictions or targets of unmasked patches changes nothing
    student_all[~masks] = 100.0
    teacher_all[~masks] = 1.0 / k
    assert loss_fn(student_all[masks], teacher_all[masks], masks=masks).item() == pytest.approx(loss.item())


def test_koleo_on_known_points() -> None:
    square = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    loss = KoLeoLoss()(square * 3.0)  # scale is removed by the L2 normalisation
    assert loss.item() == pytest.approx(-math.log(math.sqrt(2.0)), abs=1e-6)
    pair = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])  # nearest distances 0, 0, 2
    expected = -(2 * math.log(2e-8) + math.log(2.0 + 1e-8)) / 3
    assert KoLeoLoss()(pair).item() == pytest.approx(expected, rel=1e-5)


def test_koleo_is_finite_with_duplicates_and_zero_for_one_sample() -> None:
    x = torch.ones(4, 8, requires_grad=True)
    loss = KoLeoLoss()(x)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    single = torch.randn(1, 8, requires_grad=True)
    out = KoLeoLoss()(single)
    out.backward()
    assert out.item() == 0.0 and torch.equal(single.grad, torch.zeros(1, 8))


def numpy_sigreg(z: np.ndarray, directions: np.ndarray, t_max: float = 3.0, points: int = 17) -> float:
    x = z @ directions  # (N, M)
    t = np.linspace(-t_max, t_max, 2 * points - 1)  # the symmetric integral on [-t_max, t_max]
    phi = np.exp(1j * x[:, :, None] * t).mean(0)  # (M, T)
    integrand = np.abs(phi - np.exp(-(t**2) / 2)) ** 2 * np.exp(-(t**2) / 2)
    return float((np.trapezoid(integrand, t, axis=1) * len(z)).mean())


def test_sigreg_matches_a_complex_reference_and_separates_gaussian_from_collapsed() -> None:
    loss_fn = SigRegLoss(num_directions=64)
    gen = torch.Generator().manual_seed(0)
    gaussian = torch.randn(512, 32, generator=gen)
    value = loss_fn(gaussian, step=7)
    directions = loss_fn.directions(32, step=7, device=torch.device("cpu")).numpy()
    assert value.item() == pytest.approx(
        numpy_sigreg(gaussian.numpy().astype(np.float64), directions), rel=1e-4
    )
    assert value.item() < 1.5  # the statistic's expectation for exactly Gaussian data is ~1.05
    collapsed = torch.ones(512, 32) * 0.3
    assert loss_fn(collapsed, step=7).item() > 100.0
    shrunk = gaussian * 0.1  # right shape, wrong scale: still far from N(0, I)
    assert loss_fn(shrunk, step=7).item() > 20 * value.item()


def test_sigreg_directions_depend_on_the_step_only() -> None:
    loss_fn = SigRegLoss(num_directions=16)
    a = loss_fn.directions(8, step=3, device=torch.device("cpu"))
    assert torch.equal(a, loss_fn.directions(8, step=3, device=torch.device("cpu")))
    assert not torch.equal(a, loss_fn.directions(8, step=4, device=torch.device("cpu")))
    torch.testing.assert_close(a.norm(dim=0), torch.ones(16))


def test_sigreg_gradient_pulls_toward_the_gaussian() -> None:
    z = (torch.randn(256, 16) * 0.2).requires_grad_()
    loss_fn = SigRegLoss(num_directions=128)
    opt = torch.optim.Adam([z], lr=2e-2)
    start = loss_fn(z, step=0).item()
    for step in range(50):
        opt.zero_grad()
        loss_fn(z, step=step).backward()
        opt.step()
    assert loss_fn(z, step=0).item() < 0.5 * start
    assert z.detach().std().item() > 0.3  # spread out toward unit variance


def test_dino_head_outputs_cosines_to_normalised_prototypes() -> None:
    head = DINOHead(16, num_prototypes=32, hidden_dim=24, bottleneck_dim=8)
    with torch.no_grad():
        head.last_layer.weight.mul_(torch.linspace(0.1, 10, 32)[:, None])  # row norms do not matter
    logits = head(torch.randn(5, 16))
    assert logits.shape == (5, 32)
    assert logits.abs().max().item() <= 1.0 + 1e-6


def _loss_cases() -> dict[str, tuple[torch.nn.Module, tuple, dict]]:
    gen = torch.Generator().manual_seed(3)
    b, k, d = 12, 64, 48
    masks = torch.rand(b, 16, generator=gen) < 0.4
    m = int(masks.sum())
    teacher = torch.softmax(torch.randn(2, b, k, generator=gen), -1)
    scores = torch.randn(b, k, generator=gen)
    return {
        "dino": (DINOLoss(), (torch.randn(6, b, k, generator=gen) * 3, teacher), {}),
        "ibot": (
            IBOTLoss(),
            (torch.randn(m, k, generator=gen) * 3, torch.softmax(torch.randn(m, k, generator=gen), -1)),
            {"masks": masks},
        ),
        "koleo": (KoLeoLoss(), (torch.randn(b, d, generator=gen),), {}),
        "sigreg": (SigRegLoss(num_directions=32), (torch.randn(b, d, generator=gen),), {"step": 5}),
        "sinkhorn": (Centering(k, method="sinkhorn"), (scores,), {"temperature": 0.04}),
        "ema_centre": (Centering(k, method="ema"), (scores,), {"temperature": 0.04}),
    }


@pytest.mark.parametrize("name", list(_loss_cases()))
def test_losses_and_teacher_centering_run_in_fp32_inside_a_bf16_autocast_region(name: str) -> None:
    """Under bf16 autocast (the GPU recipe) every loss and the teacher's centering compute in fp32.

    Autocast would otherwise run their einsums and matmuls in bf16 (DINO's cross-entropy over crop
    pairs, KoLeo's neighbour search, SigReg's projections, Sinkhorn's scores): the same inputs must
    give bit-identical results with and without the autocast region.
    """
    module, args, kwargs = _loss_cases()[name]
    reference = module(*args, **kwargs)
    module, args, kwargs = _loss_cases()[name]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = module(*args, **kwargs)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, reference, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["sinkhorn", "ema"])
def test_factorized_targets_equal_centering_on_the_whole_score_matrix(method: str) -> None:
    """Targets made one micro-batch at a time from embeddings equal centering's on all scores at once."""
    from radforge.trainer.losses.centering import FactorizedTargets

    gen = torch.Generator().manual_seed(4)
    k, d = 64, 16
    w = torch.nn.functional.normalize(torch.randn(k, d, generator=gen), dim=-1)
    zs = [torch.nn.functional.normalize(torch.randn(n, d, generator=gen) * 3, dim=-1) for n in (10, 13, 0, 9)]
    whole, parts = Centering(k, method=method), Centering(k, method=method)
    whole.center.copy_(torch.randn(1, k, generator=gen) * 0.1)
    parts.center.copy_(whole.center)
    expected = whole(torch.cat(zs) @ w.t(), temperature=0.05).split([len(z) for z in zs])
    factorized = FactorizedTargets(parts, zs, w, temperature=0.05, chunk_elements=7 * k)  # several chunks
    for j, e in enumerate(expected):
        torch.testing.assert_close(factorized.targets(j), e, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(parts.center, whole.center)  # the EMA centre moved the same way
    usage = torch.softmax(torch.cat(zs) @ w.t() / 0.05, dim=-1).sum(0)
    torch.testing.assert_close(factorized.softmax_sum(), usage)
