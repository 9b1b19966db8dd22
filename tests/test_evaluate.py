"""Region perturbation and AOPC (spray.evaluate)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from spray.evaluate import (
    RegionPerturbation,
    aopc,
    class_score,
    faithfulness,
    patch_grid,
    patch_order,
    perturbation_curves,
)


def corner_score(batch: torch.Tensor, samples: np.ndarray) -> torch.Tensor:
    """A model that only looks at the top-left 3x3 pixels."""
    return batch[:, :, :3, :3].sum((1, 2, 3))


def test_patch_grid_is_centred_with_cut_patches_at_both_edges():
    # 7 columns = 2 + 3 + 2 (2 missing, one cut from each edge); 5 rows = 3 + 2 (1 missing, cut at the bottom)
    grid = patch_grid(5, 7, 3)
    assert grid.shape == (5, 7)
    np.testing.assert_array_equal(grid[0], [0, 0, 1, 1, 1, 2, 2])
    np.testing.assert_array_equal(grid[:, 0], [0, 0, 0, 3, 3])
    assert grid.max() == 5
    np.testing.assert_array_equal(np.unique(patch_grid(6, 6, 3)), [0, 1, 2, 3])


def test_most_relevant_patches_come_first():
    relevance = np.zeros((1, 6, 6))
    relevance[0, 3:, 3:] = 2.0  # patch 3
    relevance[0, :3, 3:] = 1.0  # patch 1
    relevance[0, 3:, :3] = -1.0  # patch 2
    np.testing.assert_array_equal(patch_order(relevance, 3, "morf"), [[3, 1, 0, 2]])


def test_random_order_is_a_permutation_per_sample_fixed_by_the_seed():
    relevance = np.zeros((3, 9, 9))
    first = patch_order(relevance, 3, "random", seed=4)
    assert sorted(first[0]) == list(range(9))
    np.testing.assert_array_equal(first, patch_order(relevance, 3, "random", seed=4))
    assert not (first[0] == first[1]).all()


def test_hand_computed_curve_and_aopc():
    pixels = np.ones((1, 1, 6, 6), np.float32)
    relevance = np.zeros((1, 6, 6))
    relevance[0, :3, :3] = 1.0  # the heatmap points at what the model reads
    params = RegionPerturbation(patch_size=3, steps=4, perturbation="constant", low=0.0)
    curve = perturbation_curves(corner_score, pixels, relevance, params, "morf")
    np.testing.assert_allclose(curve, [[9, 0, 0, 0, 0]])
    assert aopc(curve)[0] == pytest.approx(9 * 4 / 5)


def test_a_faithful_heatmap_beats_a_random_order():
    pixels = np.ones((4, 1, 6, 6), np.float32)
    relevance = np.zeros((4, 6, 6))
    relevance[:, :3, :3] = 1.0
    result = faithfulness(corner_score, pixels, relevance,
                          RegionPerturbation(patch_size=3, steps=4, perturbation="constant"))
    np.testing.assert_allclose(result.aopc_morf, 9 * 4 / 5)
    assert (result.aopc_random <= result.aopc_morf).all()
    assert result.aopc_random.mean() < result.aopc_morf.mean()
    np.testing.assert_allclose(result.aopc_gain, result.aopc_morf - result.aopc_random)


def test_batches_do_not_change_the_curves():
    rng = np.random.default_rng(0)
    pixels = rng.uniform(size=(3, 2, 7, 7)).astype(np.float32)
    relevance = rng.normal(size=(3, 7, 7))
    params = RegionPerturbation(patch_size=2, steps=10)
    whole = perturbation_curves(corner_score, pixels, relevance, params, "morf", batch_size=1000)
    pieces = perturbation_curves(corner_score, pixels, relevance, params, "morf", batch_size=4)
    np.testing.assert_allclose(pieces, whole, rtol=1e-6)
    assert whole.shape == (3, 11)


def test_steps_are_capped_at_the_number_of_patches():
    curve = perturbation_curves(corner_score, np.ones((1, 1, 6, 6), np.float32), np.zeros((1, 6, 6)),
                                RegionPerturbation(patch_size=3, steps=100), "morf")
    assert curve.shape == (1, 5)


@pytest.mark.parametrize("perturbation", ["uniform", "blur", "constant"])
def test_destroyed_patches_stay_in_the_data_range(perturbation):
    seen = []

    def record(batch: torch.Tensor, samples: np.ndarray) -> torch.Tensor:
        seen.append(batch.clone())
        return batch.mean((1, 2, 3))

    rng = np.random.default_rng(1)
    pixels = rng.uniform(0.2, 0.8, size=(2, 3, 8, 8)).astype(np.float32)
    params = RegionPerturbation(patch_size=4, perturbation=perturbation, low=0.2, high=0.8)
    perturbation_curves(record, pixels, rng.normal(size=(2, 8, 8)), params, "morf")
    images = torch.cat(seen)
    assert images.min() >= 0.2 - 1e-6 and images.max() <= 0.8 + 1e-6
    assert not torch.equal(images[-1], torch.from_numpy(pixels[-1]))  # the last step destroyed every patch


def test_gradient_times_input_of_a_linear_classifier_is_faithful():
    """On digits, a linear model's exact decomposition (gradient x input) beats shuffled heatmaps."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.2)
    for _ in range(30):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    pixels, targets = x[:40].numpy(), digits.target[:40]
    weights = model[1].weight.detach().numpy()[targets].reshape(-1, 8, 8)
    relevance = weights * pixels[:, 0]
    shuffled = np.random.default_rng(0).permuted(relevance.reshape(40, -1), axis=1).reshape(relevance.shape)
    params = RegionPerturbation(patch_size=2, steps=16, perturbation="constant")
    faithful = faithfulness(class_score(model, targets), pixels, relevance, params)
    unfaithful = faithfulness(class_score(model, targets), pixels, shuffled, params)
    assert faithful.aopc_gain.mean() > 0
    assert faithful.aopc_gain.mean() > unfaithful.aopc_gain.mean() + 1.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"patch_size": 0}, "patch_size must be a positive integer"),
    ({"steps": 0}, "steps must be a positive integer"),
    ({"perturbation": "zeros"}, "perturbation must be uniform, blur or constant"),
    ({"low": 1.0, "high": 0.0}, "low must be below high"),
])
def test_parameters_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RegionPerturbation(**kwargs)


def test_relevance_of_the_wrong_shape_is_named():
    with pytest.raises(ValueError, match=r"relevance must be \(N, H, W\) = \(1, 6, 6\)"):
        perturbation_curves(corner_score, np.ones((1, 1, 6, 6)), np.zeros((1, 5, 5)), RegionPerturbation(), "morf")


def test_region_perturbation_equals_quantus():
    """Same grid, order and black baseline as Quantus 0.6.0's RegionPerturbation (tests/quantus_golden.py)."""
    import quantus_golden

    golden = np.load(Path(__file__).parent / "golden" / "quantus_0.6.0.npz")
    x, targets, attributions = quantus_golden.inputs()
    params = RegionPerturbation(patch_size=int(golden["patch_size"]), steps=int(golden["regions"]),
                                perturbation="constant", low=0.0)
    curve = perturbation_curves(class_score(quantus_golden.build_model(), targets), x, attributions[:, 0],
                                params, "morf")
    np.testing.assert_allclose(curve[:, :1] - curve[:, 1:], golden["curves"], rtol=1e-5, atol=1e-6)
