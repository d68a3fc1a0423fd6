import numpy as np
import pytest

from edge_retina.errors import BundleError
from edge_retina.prompt_table import PromptTable, ensemble, l2_normalise


def _table(rule="mean_renormalised", scale=100.0):
    rng = np.random.default_rng(0)
    emb = l2_normalise(rng.normal(size=(6, 8)))
    return PromptTable(["normal", "glaucoma", "cataract"], "normal", emb, np.array([0, 0, 1, 1, 2, 2]), rule, scale)


def test_ensembling_rules():
    rng = np.random.default_rng(1)
    emb = l2_normalise(rng.normal(size=(4, 16)))
    mean = ensemble(emb, "mean")
    np.testing.assert_allclose(mean, emb.mean(axis=0))
    assert np.linalg.norm(mean) < 1.0  # FLAIR keeps the mean as is
    np.testing.assert_allclose(np.linalg.norm(ensemble(emb, "mean_renormalised")), 1.0, rtol=1e-6)
    with pytest.raises(ValueError):
        ensemble(emb, "max")


def test_scores_are_softmax_and_condition_vs_normal():
    table = _table()
    rng = np.random.default_rng(2)
    image = rng.normal(size=(5, 8))
    scores = table.score(image)
    np.testing.assert_allclose(scores.class_probabilities.sum(axis=1), 1.0, rtol=1e-6)
    expected_logits = 100.0 * l2_normalise(image) @ table.class_embeddings.T
    np.testing.assert_allclose(scores.logits, expected_logits, rtol=1e-5)
    # condition vs normal == softmax over the pair [condition, normal]
    pair = np.exp(expected_logits[:, [1, 0]] - expected_logits[:, [1, 0]].max(axis=1, keepdims=True))
    np.testing.assert_allclose(scores.condition_probabilities["glaucoma"], pair[:, 0] / pair.sum(axis=1), rtol=1e-5)
    assert set(scores.condition_probabilities) == {"glaucoma", "cataract"}


def test_image_embedding_at_class_embedding_scores_highest():
    table = _table()
    scores = table.score(table.class_embeddings[1])
    assert scores.class_probabilities[0].argmax() == 1
    assert scores.condition_probabilities["glaucoma"][0] > 0.5


def test_save_load_round_trip(tmp_path):
    table = _table("mean", 42.0)
    table.save(tmp_path / "p.npz")
    loaded = PromptTable.load(tmp_path / "p.npz", classes=list(table.classes), normal_class="normal",
                              ensembling="mean", logit_scale=42.0)
    np.testing.assert_array_equal(loaded.class_embeddings, table.class_embeddings)


def test_mismatched_dimension_and_bad_tables_are_refused(tmp_path):
    table = _table()
    with pytest.raises(BundleError, match="dimension"):
        table.score(np.ones(9))
    with pytest.raises(BundleError, match="without prompts"):
        PromptTable(["normal", "x"], "normal", np.ones((2, 4)), np.array([0, 0]), "mean", 10.0)
    with pytest.raises(BundleError, match="normal class"):
        PromptTable(["a", "b"], "normal", np.ones((2, 4)), np.array([0, 1]), "mean", 10.0)
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(BundleError, match="unreadable"):
        PromptTable.load(tmp_path / "bad.npz", classes=["normal"], normal_class="normal", ensembling="mean",
                         logit_scale=1.0)
