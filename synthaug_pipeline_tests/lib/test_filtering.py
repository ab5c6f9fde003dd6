"""Tests for synthaug_pipeline.lib.filtering on hand-made scores and shard tables."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import numpy as np
import pyarrow as pa
import pytest

from synthaug_pipeline.lib.config import FilterConfig
from synthaug_pipeline.lib.filtering import FilterPolicy, apply_policy, policy_json_version, policy_version
from synthaug_pipeline.lib.shard_filtering import (
    accept,
    filter_policy,
    filter_version,
    refilter_table,
    shard_accept,
    shard_decisions,
    shard_policy,
)
from synthaug_pipeline.lib.scoring import ClassScores
from synthaug_pipeline.lib.shard_reading import read_shards
from synthaug_pipeline.lib.shard_schema import build_shard_table
from synthaug_pipeline.lib.shards import write_class_shard

# Six images of class 2. Confidence ties at 0.9 (rows 0, 2, 5); row 4 fails the
# threshold, row 6 has the wrong top-1 class.
CONF = [0.9, 0.6, 0.9, 0.7, 0.4, 0.9, 0.95]
TOP1 = [2, 2, 2, 2, 2, 2, 1]
NO_DUPLICATES = dict(drop_train_copies=False, drop_test_leaks=False)


def _scores(conf=CONF, top1=TOP1, train_copy=None, test_leak=None, distance=None, threshold=None) -> ClassScores:
    return ClassScores(
        judge_confidence=np.asarray(conf, dtype=np.float64),
        judge_top1=np.asarray(top1, dtype=np.int64),
        nearest_real_distance=np.ones(len(conf)) if distance is None else np.asarray(distance, dtype=np.float64),
        summary={"duplicate_threshold": threshold},
        is_train_copy=None if train_copy is None else np.asarray(train_copy, dtype=bool),
        is_test_leak=None if test_leak is None else np.asarray(test_leak, dtype=bool),
    )


def _kept(mask: np.ndarray) -> list[int]:
    assert mask.dtype == np.bool_
    return np.flatnonzero(mask).tolist()


# --------------------------------------------------------------------------- #
# apply_policy
# --------------------------------------------------------------------------- #


def test_thresholds_match_legacy_accept():
    scores = _scores()
    assert _kept(apply_policy(scores, 2)) == [0, 1, 2, 3, 5]
    assert _kept(apply_policy(scores, 2, require_label_match=False)) == [0, 1, 2, 3, 5, 6]
    assert _kept(apply_policy(scores, 2, min_confidence=0.9)) == [0, 2, 5]
    for cfg in (FilterConfig(), FilterConfig(min_confidence=0.8, require_label_match=False)):
        legacy = (scores.judge_confidence >= cfg.min_confidence) & ((scores.judge_top1 == 2) if cfg.require_label_match else True)
        np.testing.assert_array_equal(accept(scores, 2, cfg), legacy)


@pytest.mark.parametrize(
    "top_k, kept",
    [
        (0, []),
        (1, [0]),
        (2, [0, 2]),  # three-way tie at 0.9: lowest indices first
        (3, [0, 2, 5]),
        (4, [0, 2, 3, 5]),
        (5, [0, 1, 2, 3, 5]),
        (50, [0, 1, 2, 3, 5]),
    ],
)
def test_top_k_keeps_most_confident_survivors_ties_by_index(top_k, kept):
    # Row 6 (0.95) is the most confident but fails the label match first.
    assert _kept(apply_policy(_scores(), 2, top_k=top_k)) == kept


@pytest.mark.parametrize(
    "quantile, kept",
    [
        (0.2, [0]),  # ceil(0.2 * 5) = 1
        (0.4, [0, 2]),  # ceil(2.0) = 2
        (0.5, [0, 2, 5]),  # ceil(2.5) = 3
        (0.8, [0, 2, 3, 5]),
        (1.0, [0, 1, 2, 3, 5]),
    ],
)
def test_quantile_keeps_top_share_of_survivors(quantile, kept):
    assert _kept(apply_policy(_scores(), 2, quantile=quantile)) == kept


def test_quantile_count_is_not_fooled_by_float_rounding():
    # 0.1 * 10 == 1.0000000000000002 in floating point: still one image, not two.
    scores = _scores(conf=np.linspace(0.9, 0.55, 10), top1=[0] * 10)
    assert _kept(apply_policy(scores, 0, quantile=0.1)) == [0]
    assert _kept(apply_policy(scores, 0, quantile=0.3)) == [0, 1, 2]
    assert _kept(apply_policy(scores, 0, quantile=0.7)) == list(range(7))


def test_duplicates_are_dropped_before_ranking():
    train_copy = [True, False, False, False, False, False, False]
    test_leak = [False, False, False, False, False, True, False]
    scores = _scores(train_copy=train_copy, test_leak=test_leak)
    assert _kept(apply_policy(scores, 2)) == [1, 2, 3]
    assert _kept(apply_policy(scores, 2, drop_test_leaks=False)) == [1, 2, 3, 5]
    assert _kept(apply_policy(scores, 2, drop_train_copies=False)) == [0, 1, 2, 3]
    assert _kept(apply_policy(scores, 2, **NO_DUPLICATES)) == [0, 1, 2, 3, 5]
    # top_k=2 still gives two clean images: 2 (0.9) then 3 (0.7).
    assert _kept(apply_policy(scores, 2, top_k=2)) == [2, 3]
    assert _kept(apply_policy(scores, 2, top_k=2, **NO_DUPLICATES)) == [0, 2]


def test_unchecked_flags_drop_nothing():
    assert _kept(apply_policy(_scores(), 2, drop_train_copies=True, drop_test_leaks=True)) == [0, 1, 2, 3, 5]


def test_empty_scores():
    scores = _scores(conf=[], top1=[])
    assert apply_policy(scores, 0, top_k=3).shape == (0,)
    assert apply_policy(scores, 0, quantile=0.5).shape == (0,)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"top_k": 2, "quantile": 0.5}, "not both"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"quantile": 0.0}, "quantile"),
        ({"quantile": 1.5}, "quantile"),
        ({"min_confidence": 1.2}, "min_confidence"),
        ({"require_label_match": "yes"}, "require_label_match"),
        ({"drop_train_copies": 1}, "drop_train_copies"),
    ],
)
def test_invalid_policies_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        apply_policy(_scores(), 2, **kwargs)
    with pytest.raises(ValueError, match=match):
        policy_version(**kwargs)


def test_misaligned_scores_are_rejected():
    scores = _scores(train_copy=[True, False])
    with pytest.raises(ValueError, match="is_train_copy has shape"):
        apply_policy(scores, 2)


# --------------------------------------------------------------------------- #
# policy_version / filter_version / accept delegation
# --------------------------------------------------------------------------- #


def test_policy_version_is_pinned_canonical_hash():
    canonical = b'{"drop_test_leaks":true,"drop_train_copies":true,"min_confidence":0.5,"require_label_match":true}'
    assert policy_version() == "v1-" + hashlib.sha256(canonical).hexdigest()[:12] == "v1-1e6275e835a9"
    with_threshold = (
        b'{"drop_test_leaks":true,"drop_train_copies":true,"duplicate_threshold":2.5,"min_confidence":0.5,"require_label_match":true}'
    )
    assert policy_version(duplicate_threshold=2.5) == "v1-" + hashlib.sha256(with_threshold).hexdigest()[:12] == "v1-d4104c5e853a"
    # No-op settings are left out: the two-threshold policy keeps the identifier
    # shards had before the duplicate and ranking rules existed.
    legacy = b'{"min_confidence":0.5,"require_label_match":true}'
    legacy_config = FilterConfig(drop_train_copies=False, drop_test_leaks=False)
    assert policy_version(**NO_DUPLICATES) == "v1-" + hashlib.sha256(legacy).hexdigest()[:12] == "v1-e7d13883f612"
    assert filter_version(legacy_config) == filter_version(legacy_config, duplicate_threshold=2.5) == "v1-e7d13883f612"
    assert filter_version(FilterConfig()) == policy_version()
    assert filter_version(FilterConfig(), duplicate_threshold=2.5) == policy_version(duplicate_threshold=2.5)


def test_filter_policy_is_the_canonical_json_the_version_hashes():
    canonical = (
        '{"drop_test_leaks":true,"drop_train_copies":true,"duplicate_threshold":2.5,"min_confidence":0.5,"require_label_match":true}'
    )
    assert filter_policy(FilterConfig(), duplicate_threshold=2.5) == canonical
    assert policy_json_version(canonical) == filter_version(FilterConfig(), duplicate_threshold=2.5) == "v1-d4104c5e853a"
    assert json.loads(canonical) == {**FilterPolicy().canonical(), "duplicate_threshold": 2.5}
    # The threshold decides nothing without a duplicate rule, so it is not part of the policy.
    legacy = FilterConfig(drop_train_copies=False, drop_test_leaks=False)
    assert filter_policy(legacy, duplicate_threshold=2.5) == '{"min_confidence":0.5,"require_label_match":true}'
    for cfg in (FilterConfig(top_k=3), FilterConfig(quantile=0.25, drop_test_leaks=False), legacy):
        for threshold in (None, 0.7):
            text = filter_policy(cfg, duplicate_threshold=threshold)
            assert policy_json_version(text) == filter_version(cfg, duplicate_threshold=threshold)
            # The pipeline's decision path and the filtering module agree on the string.
            assert text == shard_policy(FilterPolicy.from_config(cfg), duplicate_threshold=threshold)
    with pytest.raises(ValueError, match="duplicate_threshold"):
        filter_policy(FilterConfig(), duplicate_threshold=float("inf"))


def test_policy_version_changes_with_every_setting():
    variants = [
        {},
        {"min_confidence": 0.6},
        {"require_label_match": False},
        {"top_k": 10},
        {"top_k": 11},
        {"quantile": 0.5},
        {"drop_train_copies": False},
        {"drop_test_leaks": False},
        {"duplicate_threshold": 0.3},
        {"duplicate_threshold": 0.4},
    ]
    versions = [policy_version(**v) for v in variants]
    assert len(set(versions)) == len(versions)
    assert all(v.startswith("v1-") and len(v) == 15 for v in versions)
    # Stable, and int/float spellings of the same threshold agree.
    assert policy_version(min_confidence=1) == policy_version(min_confidence=1.0)
    assert policy_version(top_k=np.int64(10)) == policy_version(top_k=10)
    # A threshold that decides nothing (no duplicate rule on) does not change the policy ...
    assert policy_version(**NO_DUPLICATES, duplicate_threshold=0.3) == policy_version(**NO_DUPLICATES)
    # ... but it does as soon as one rule uses it (test-leak flags are distances under the threshold).
    assert policy_version(drop_train_copies=False, duplicate_threshold=0.3) != policy_version(drop_train_copies=False)


def test_accept_and_filter_version_follow_every_config_field():
    scores = _scores(train_copy=[True] + [False] * 6, test_leak=[False] * 5 + [True, False])
    # Defaults drop both kinds of duplicates.
    assert _kept(accept(scores, 2, FilterConfig())) == [1, 2, 3]
    cfg = FilterConfig(top_k=2, drop_test_leaks=False)
    assert _kept(accept(scores, 2, cfg)) == [2, 5]
    np.testing.assert_array_equal(accept(scores, 2, cfg), apply_policy(scores, 2, top_k=2, drop_test_leaks=False))
    assert filter_version(cfg) == policy_version(top_k=2, drop_test_leaks=False)
    assert filter_version(cfg, duplicate_threshold=0.5) == policy_version(top_k=2, drop_test_leaks=False, duplicate_threshold=0.5)
    quantile = FilterConfig(quantile=0.5, **NO_DUPLICATES)
    assert _kept(accept(scores, 2, quantile)) == [0, 2, 5]
    assert filter_version(quantile) == policy_version(quantile=0.5, **NO_DUPLICATES)
    assert len({filter_version(FilterConfig()), filter_version(cfg), filter_version(quantile)}) == 3
    assert FilterPolicy.from_config(cfg) == FilterPolicy(top_k=2, drop_test_leaks=False)


def test_filter_version_still_hashes_unknown_row_fields():
    class WithClip(FilterConfig):
        min_clip_score: float = 0.25

    assert filter_version(WithClip()) != filter_version(FilterConfig())
    assert FilterPolicy.from_config(WithClip()) == FilterPolicy.from_config(FilterConfig())


# --------------------------------------------------------------------------- #
# refilter_table
# --------------------------------------------------------------------------- #


DISTANCE = (0.0, 1.0, 2.0, 0.05, 3.0, 4.0, 5.0)
LEAK = np.array([False, False, True, False, False, False, False])


def _shard_table(conf=CONF, top1=TOP1, distance=DISTANCE, cfg=None, threshold=0.1, test_leak=LEAK) -> pa.Table:
    """A shard as synthetic_shards writes it: decisions and version from shard_accept (default policy unless ``cfg``)."""
    n = len(conf)
    cfg = cfg or FilterConfig()
    scores = _scores(conf, top1, test_leak=test_leak, distance=distance, threshold=threshold)
    accepted, version = shard_accept(scores, 2, cfg)
    return build_shard_table(
        {
            "image": [bytes([i]) * (i + 3) for i in range(n)],
            "image_format": "png",
            "height": 1,
            "width": 1,
            "channels": 3,
            "class_id": "c2",
            "class_index": 2,
            "generator_id": "g",
            "generator_version": "gv",
            "sampler": "ddim",
            "steps": 10,
            "guidance_scale": 1.5,
            "seed": list(range(n)),
            "image_index": list(range(n)),
            "judge_confidence": np.asarray(conf, dtype=np.float32),
            "judge_top1": list(top1),
            "nearest_real_distance": np.asarray(distance, dtype=np.float32),
            "accepted": accepted,
            "filter_version": version,
            "filter_policy": filter_policy(cfg, duplicate_threshold=threshold),
            "run_id": "run",
            "created_at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
        }
    )


def _assert_only_decisions_changed(before: pa.Table, after: pa.Table) -> None:
    assert after.schema.equals(before.schema, check_metadata=True)
    for name in before.column_names:
        if name not in ("accepted", "filter_version", "filter_policy"):
            assert after.column(name).equals(before.column(name)), name
    # The image bytes are the very same buffers: nothing was decoded or re-encoded.
    assert after.column("image").to_pylist() == before.column("image").to_pylist()
    for a, b in zip(after.column("image").chunks, before.column("image").chunks):
        assert all(x.address == y.address for x, y in zip(a.buffers(), b.buffers()) if x is not None)


def test_refilter_table_recomputes_only_decisions(tmp_path):
    before = _shard_table(cfg=FilterConfig(**NO_DUPLICATES))
    after = refilter_table(before, 2, top_k=2, duplicate_threshold=0.1, drop_test_leaks=False)
    # Rows 0 and 3 are within 0.1 of a real image; of the rest, 2 and 5 tie at 0.9.
    assert _kept(after.column("accepted").to_numpy(zero_copy_only=False)) == [2, 5]
    version = policy_version(top_k=2, duplicate_threshold=0.1, drop_test_leaks=False)
    assert set(after.column("filter_version").to_pylist()) == {version}
    assert version != before.column("filter_version")[0].as_py()
    # The policy itself is rewritten too, and is what the new version hashes.
    policies = set(after.column("filter_policy").to_pylist())
    assert policies == {'{"drop_train_copies":true,"duplicate_threshold":0.1,"min_confidence":0.5,"require_label_match":true,"top_k":2}'}
    assert policy_json_version(policies.pop()) == version
    assert before.column("filter_policy")[0].as_py() == '{"min_confidence":0.5,"require_label_match":true}'
    _assert_only_decisions_changed(before, after)
    # The result is still a valid shard.
    info = write_class_shard(str(tmp_path), "c2", after)
    assert info.num_accepted == 2
    assert read_shards([info.uri], accepted_only=True).column("image_index").to_pylist() == [2, 5]


@pytest.mark.parametrize(
    "cfg",
    [FilterConfig(), FilterConfig(top_k=2), FilterConfig(quantile=0.5, drop_train_copies=False), FilterConfig(**NO_DUPLICATES)],
)
def test_refilter_table_with_pipeline_policy_reproduces_pipeline_rows(cfg):
    # What the pipeline keeps (synthetic_scores[c]: duplicate_threshold, scores.is_test_leak) is enough to
    # rebuild a shard's decisions bit for bit, version included.
    before = _shard_table(cfg=cfg)
    policy = FilterPolicy.from_config(cfg)
    same = refilter_table(before, 2, duplicate_threshold=0.1, test_leak=LEAK, **vars(policy))
    assert same.equals(before)
    assert before.column("filter_version")[0].as_py() == filter_version(cfg, duplicate_threshold=0.1)


def test_default_pipeline_policy_drops_copies_and_leaks_in_the_shard():
    before = _shard_table()
    # Rows 0 and 3 are within 0.1 of a training image, row 2 copies a test image, 4 and 6 fail the thresholds.
    assert _kept(before.column("accepted").to_numpy(zero_copy_only=False)) == [1, 5]
    assert before.column("filter_version")[0].as_py() == policy_version(duplicate_threshold=0.1)


def test_shard_decisions_use_the_stored_float32_scores():
    # A distance just above the threshold in float64 that rounds onto it in float32: the shard
    # stores the rounded value, so the shard decision (copy) is the one refiltering can reproduce.
    threshold = float(np.float32(0.1))
    distance = [threshold + 1e-12, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    scores = _scores(distance=distance, threshold=threshold, train_copy=np.asarray(distance) <= threshold)
    assert not scores.is_train_copy[0]  # float64 view: not a copy
    accepted, version = shard_accept(scores, 2, FilterConfig(drop_test_leaks=False))
    assert _kept(accepted) == [1, 2, 3, 5]  # row 0 dropped as a copy of its float32 distance
    table = _shard_table(distance=distance, cfg=FilterConfig(drop_test_leaks=False), threshold=threshold)
    again = refilter_table(table, 2, duplicate_threshold=threshold, drop_test_leaks=False)
    assert again.equals(table)
    np.testing.assert_array_equal(again.column("accepted").to_numpy(zero_copy_only=False), accepted)
    assert again.column("filter_version")[0].as_py() == version


def test_shard_decisions_without_threshold_checks_no_copies():
    policy = FilterPolicy()
    accepted, version = shard_decisions(policy, 2, CONF, TOP1, np.zeros(7), duplicate_threshold=None, test_leak=None)
    assert _kept(accepted) == [0, 1, 2, 3, 5]
    assert version == policy_version()  # the rules are on; no threshold was there to record
    with pytest.raises(ValueError, match="one flag per row"):
        shard_decisions(policy, 2, CONF, TOP1, np.zeros(7), duplicate_threshold=0.1, test_leak=np.zeros(7, dtype=int))


def test_refilter_table_test_leak_flags_and_quantile():
    before = _shard_table(cfg=FilterConfig(**NO_DUPLICATES))
    leak = np.array([False, False, True, False, False, False, False])
    after = refilter_table(before, 2, quantile=0.5, test_leak=leak, drop_train_copies=False)
    # Survivors 0, 1, 3, 5 (row 2 leaks): ceil(0.5 * 4) = 2 -> 0 and 5.
    assert _kept(after.column("accepted").to_numpy(zero_copy_only=False)) == [0, 5]
    _assert_only_decisions_changed(before, after)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"drop_test_leaks": False}, "duplicate_threshold"),
        ({"drop_train_copies": False}, "test_leak"),
        ({"drop_train_copies": False, "test_leak": np.zeros(3, dtype=bool)}, "one flag per row"),
        ({"duplicate_threshold": -1.0, "drop_test_leaks": False}, "duplicate_threshold"),
        ({"top_k": 1, "quantile": 0.5, **NO_DUPLICATES}, "not both"),
    ],
)
def test_refilter_table_rejects_missing_duplicate_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        refilter_table(_shard_table(), 2, **kwargs)


def test_refilter_table_rejects_wrong_class_and_missing_columns():
    with pytest.raises(ValueError, match="class_index"):
        refilter_table(_shard_table(), 1, **NO_DUPLICATES)
    with pytest.raises(ValueError, match="judge_top1"):
        refilter_table(_shard_table().drop_columns(["judge_top1"]), 2, **NO_DUPLICATES)
    with pytest.raises(ValueError, match="lacks columns needed to re-filter: filter_policy"):
        refilter_table(_shard_table().drop_columns(["filter_policy"]), 2, **NO_DUPLICATES)
    with pytest.raises(TypeError):
        refilter_table(_shard_table(), 2, min_confidance=0.7)


# --------------------------------------------------------------------------- #
# Safety-checker flags
# --------------------------------------------------------------------------- #


def test_safety_flagged_rows_are_rejected_recorded_and_refiltered_alike():
    flagged = np.array([True, False, False, False, False, True, False])
    scores = _scores()
    scores.safety_flagged = flagged
    cfg = FilterConfig(**NO_DUPLICATES)
    accepted, version = shard_accept(scores, 2, cfg)
    unflagged, plain_version = shard_accept(_scores(), 2, cfg)
    assert _kept(unflagged) == [0, 1, 2, 3, 5] and _kept(accepted) == [1, 2, 3]  # rows 0 and 5 pass, but were flagged
    assert version != plain_version  # rows a checker looked at name the rule in their policy
    assert json.loads(filter_policy(cfg, safety_checked=True))["drop_safety_flagged"] is True
    assert "drop_safety_flagged" not in filter_policy(cfg)  # no checker ran: the identifiers of earlier shards stay
    assert policy_json_version(filter_policy(cfg, safety_checked=True)) == version

    keep_flagged = FilterConfig(**NO_DUPLICATES, drop_safety_flagged=False)
    accepted_all, kept_version = shard_accept(scores, 2, keep_flagged)
    assert _kept(accepted_all) == _kept(unflagged) and kept_version not in (version, plain_version)

    # A shard keeps the flags, so re-filtering reproduces the pipeline's decisions and version.
    table = _shard_table(cfg=cfg)
    index = table.schema.get_field_index("safety_flagged")
    table = table.set_column(index, table.schema.field(index), pa.array(flagged))
    again = refilter_table(table, 2, **vars(FilterPolicy.from_config(cfg)))
    assert _kept(again.column("accepted").to_numpy(zero_copy_only=False)) == [1, 2, 3]
    assert set(again.column("filter_version").to_pylist()) == {version}


# --- a filter that keeps variety: confidence band and k-center selection ------------------------------------


def _clustered(n_per_cluster: int = 10, clusters: int = 3, seed: int = 0):
    """Features in ``clusters`` tight, far-apart clusters; the judge is surest of the first cluster."""
    rng = np.random.default_rng(seed)
    centres = np.eye(clusters, 8) * 10.0
    features = np.concatenate([c + 0.1 * rng.standard_normal((n_per_cluster, 8)) for c in centres])
    confidence = np.concatenate([np.full(n_per_cluster, 0.99 - 0.1 * k) for k in range(clusters)]) - 0.001 * rng.random(n_per_cluster * clusters)
    return features, confidence


def test_k_center_keeps_one_image_of_every_mode_where_confidence_keeps_the_easiest():
    from synthaug_pipeline.lib.filtering import select_k_center

    features, confidence = _clustered()
    top1 = np.zeros(len(confidence), dtype=np.int64)
    by_confidence = FilterPolicy(min_confidence=0.5, top_k=3).decide(confidence, top1, 0)
    diverse = FilterPolicy(min_confidence=0.5, top_k=3, diversity="k_center").decide(confidence, top1, 0, features=features)
    assert sorted(set(np.flatnonzero(by_confidence) // 10)) == [0]  # all three from the cluster the judge likes best
    assert sorted(set(np.flatnonzero(diverse) // 10)) == [0, 1, 2]  # one per cluster
    assert diverse.sum() == 3
    # the most confident image is where k-center starts; the result is deterministic
    chosen = select_k_center(features, np.arange(30), 3, confidence)
    assert int(np.argmax(confidence)) in chosen
    np.testing.assert_array_equal(chosen, select_k_center(features, np.arange(30), 3, confidence))
    np.testing.assert_array_equal(select_k_center(features, np.arange(5), 10), np.arange(5))  # asks for more than there are


def test_confidence_band_drops_images_the_judge_finds_too_easy():
    confidence = np.array([0.3, 0.6, 0.9, 0.999])
    accepted = FilterPolicy(min_confidence=0.5, max_confidence=0.95, require_label_match=False).decide(confidence, np.zeros(4, np.int64), 0)
    assert accepted.tolist() == [False, True, True, False]
    with pytest.raises(ValueError, match="max_confidence must lie in"):
        FilterPolicy(min_confidence=0.5, max_confidence=0.4)


def test_new_rules_at_their_default_keep_every_existing_policy_version():
    assert FilterPolicy(drop_train_copies=False, drop_test_leaks=False).version() == "v1-e7d13883f612"  # as before these rules
    assert FilterPolicy(max_confidence=1.0, diversity="none").canonical() == FilterPolicy().canonical()
    assert FilterPolicy(top_k=3, diversity="k_center").version() != FilterPolicy(top_k=3).version()
    assert FilterPolicy(max_confidence=0.9).canonical()["max_confidence"] == 0.9


def test_k_center_without_features_says_to_rescore():
    features, confidence = _clustered()
    with pytest.raises(ValueError, match="k_center needs the images' features"):
        FilterPolicy(top_k=3, diversity="k_center").decide(confidence, np.zeros(30, np.int64), 0)


def test_filter_config_refuses_a_diversity_rule_with_nothing_to_choose():
    from synthaug_pipeline.lib.config import FilterConfig, ProfileError, load_profile

    with pytest.raises(ValueError, match="filter.diversity=k_center chooses filter.top_k or filter.quantile"):
        FilterConfig(diversity="k_center")
    with pytest.raises(ProfileError, match="filter.max_confidence 0.4 is below filter.min_confidence 0.5"):
        load_profile("digits", ["filter.max_confidence=0.4"])


def test_shard_accept_with_k_center_uses_the_features_scores_keep():
    from synthaug_pipeline.lib.config import FilterConfig
    from synthaug_pipeline.lib.scoring import score_class

    features, confidence = _clustered()
    probs = np.stack([confidence, 1 - confidence], axis=1)
    scores = score_class(probs, features, 0, features[::3] + 0.5, "test-features")
    assert scores.features.shape == features.shape
    accepted, version = shard_accept(scores, 0, FilterConfig(min_confidence=0.5, top_k=3, diversity="k_center", drop_train_copies=False))
    assert sorted(set(np.flatnonzero(accepted) // 10)) == [0, 1, 2]
    assert version.startswith("v1-")
