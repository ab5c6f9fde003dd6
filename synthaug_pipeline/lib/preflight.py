"""Checks of a profile against its data that can run before anything is trained.

The class catalog runs them first thing, so a setting that cannot work fails in seconds, not after the
judge and the generator have trained: extra shifted test sets whose class ids are not the profile's,
and a synthetic ratio that the generator could not supply even if the filter accepted every image.
(The training assets check again with what really exists: the accepted synthetic images.)
"""

from __future__ import annotations

from collections.abc import Sequence

from synthaug_pipeline.lib.classifier import check_synthetic_supply
from synthaug_pipeline.lib.config import Profile, ProfileError
from synthaug_pipeline.lib.evaluation import check_shift_folders


def check_before_training(profile: Profile, class_ids: Sequence[str], train_counts: Sequence[int]) -> None:
    """Raise ProfileError for shift folders with foreign class ids or an unreachable ``augmented.synthetic_ratio``.

    ``train_counts``: real training images per class, in ``class_ids`` order. The ratio needs
    ``ceil(ratio * n_c)`` accepted synthetic images of each class (see
    :func:`~synthaug_pipeline.lib.classifier.check_synthetic_supply`); more than
    ``generator.images_per_class`` can never be accepted.
    """
    check_shift_folders(profile.evaluation.shift_folders, class_ids)
    generated = profile.generator.images_per_class
    try:
        check_synthetic_supply(
            list(train_counts),
            [generated] * len(train_counts),
            profile.augmented.synthetic_ratio,
            class_ids=list(class_ids),
            available=f"can be generated (generator.images_per_class={generated})",
            hint="lower augmented.synthetic_ratio or raise generator.images_per_class (the filter rejects some, so leave a margin)",
        )
    except ValueError as exc:
        raise ProfileError(str(exc)) from None
