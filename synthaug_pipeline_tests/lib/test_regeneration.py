import pytest

from synthaug_pipeline.lib.diffusion_sampling import image_seed
from synthaug_pipeline.lib.regeneration import ClassQuality, worst_classes


def test_worst_by_kid_failed_and_unscored_first():
    qualities = [
        ClassQuality("a", 0.01),
        ClassQuality("b", 0.30),
        ClassQuality("c", None),
        ClassQuality("d", None, error="NaN features"),
        ClassQuality("e", 0.10, regeneration_round=2),
    ]
    picks, passed = worst_classes(qualities, "kid_mean", 4, max_rounds=5)
    assert [p.class_id for p in picks] == ["d", "c", "b", "e"]
    assert [p.next_round for p in picks] == [1, 1, 1, 3]
    assert picks[0].reason == "scoring failed: NaN features" and picks[2].reason == "kid_mean 0.3"
    assert passed == []


def test_shares_rank_smallest_first_and_max_rounds_passes_over():
    qualities = [ClassQuality("a", 0.9), ClassQuality("b", 0.4, regeneration_round=3), ClassQuality("c", 0.6)]
    picks, passed = worst_classes(qualities, "label_match_rate", 1, max_rounds=3)
    assert [p.class_id for p in picks] == ["c"]
    assert passed == ["b: regenerated 3 times already (max_rounds 3)"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown regeneration metric 'ssim'"):
        worst_classes([], "ssim", 1, 1)
    with pytest.raises(ValueError, match="count must be >= 1"):
        worst_classes([], "fid", 0, 1)


def test_regeneration_round_gives_new_reproducible_seeds():
    first = [image_seed("cat", i, "v1") for i in range(20)]
    assert first == [image_seed("cat", i, "v1", 0) for i in range(20)]
    second = [image_seed("cat", i, "v1", 1) for i in range(20)]
    assert second == [image_seed("cat", i, "v1", 1) for i in range(20)]
    assert set(first).isdisjoint(second)
    with pytest.raises(ValueError, match="regeneration_round must be >= 0"):
        image_seed("cat", 0, "v1", -1)


def test_validation_error_ranks_the_classes_the_augmented_classifier_still_gets_wrong():
    qualities = [ClassQuality("a", 0.05), ClassQuality("b", 0.30), ClassQuality("c", 0.12), ClassQuality("d", None)]
    picks, _ = worst_classes(qualities, "validation_error", 3, max_rounds=5)
    assert [p.class_id for p in picks] == ["d", "b", "c"]  # no value first, then the largest error
    assert picks[1].reason == "validation_error 0.3"


def test_validation_error_needs_a_validation_split():
    from synthaug_pipeline.lib.config import ProfileError, load_profile

    with pytest.raises(ProfileError, match="regeneration.metric=validation_error ranks classes on the validation split"):
        load_profile("digits", ["regeneration.metric=validation_error", "data.validation_fraction=0"])
