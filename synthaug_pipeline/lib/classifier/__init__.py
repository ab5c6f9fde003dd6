"""Classifiers: the judge and the baseline / augmented models, split by concern.

* :mod:`.models`: the architectures (``synthaug_cnn`` registered with timm on import; any timm name works),
* :mod:`.mixing`: the class-balanced real + synthetic mix sampler and the "ceil(ratio x real)" supply rule,
* :mod:`.training`: the fixed-compute training loop (auxiliary batch-norm, CAS, early stopping),
* :mod:`.recipe`: the pieces around the loop: schedule, augmentation, optimizer, autocast dtype, input checks,
* :mod:`.inference`: predictions and features in batches,
* :mod:`.storage`: safetensors + JSON under any fsspec URL, versioned by content.

The names below are the package's API; import them from here.
"""

from synthaug_pipeline.lib.classifier.inference import predict
from synthaug_pipeline.lib.classifier.mixing import (
    BalancedMixSampler,
    check_synthetic_supply,
    reached_ratios,
    synthetic_images_needed,
)
from synthaug_pipeline.lib.classifier.models import SynthaugCNN, create_classifier
from synthaug_pipeline.lib.classifier.recipe import autocast_dtype, lr_factor, make_optimizer, random_translate
from synthaug_pipeline.lib.classifier.storage import load_classifier, save_classifier
from synthaug_pipeline.lib.classifier.training import (
    TrainedClassifier,
    train_classifier,
    train_classifier_synthetic_only,
    untrained_classifier,
)

__all__ = [
    "BalancedMixSampler",
    "SynthaugCNN",
    "TrainedClassifier",
    "autocast_dtype",
    "check_synthetic_supply",
    "create_classifier",
    "load_classifier",
    "lr_factor",
    "make_optimizer",
    "predict",
    "random_translate",
    "reached_ratios",
    "save_classifier",
    "synthetic_images_needed",
    "train_classifier",
    "train_classifier_synthetic_only",
    "untrained_classifier",
]
