"""Site adaptation: thresholds, heads and their choice (numpy), the bundle overlay, `edge-retina adapt`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from narrow_terminal import COLUMNS, folder_wider_than_the_terminal, narrow_runner, unwrapped, widest_line

from edge_retina.adapt import bundle_scoring, fit_site_adaptation, remove_adaptation
from edge_retina.adapt.heads import ZERO_SHOT, fit_linear_probe, fit_prototype_blend
from edge_retina.adapt.overlay import HEAD_FILE
from edge_retina.adapt.selection import choose_head
from edge_retina.adapt.site import adapt_bundle
from edge_retina.adapt.thresholds import MIN_POSITIVES, site_threshold
from edge_retina.bench.labels import LabelledImages, write_labels_csv
from edge_retina.bundle import MANIFEST_NAME, load_bundle, verify_bundle
from edge_retina.bundle.signing import TrustedKeys, check_signature, generate_key_pair, load_private_key, sign_bundle
from edge_retina.cli.main import cli
from edge_retina.errors import BundleError, EdgeRetinaError
from edge_retina.prompt_table import PromptTable
from edge_retina.screener import Screener, engine_cache_dir


# -- thresholds -------------------------------------------------------------------------------------

def test_site_threshold_reaches_the_target_on_its_shots_and_brackets_itself():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(40), np.zeros(60)]
    scores = np.r_[rng.uniform(0.3, 1.0, 40), rng.uniform(0.0, 0.6, 60)]
    t = site_threshold(y, scores, 0.9)
    assert t.sensitivity >= 0.9 and np.mean(scores[y == 1] >= t.threshold) == t.sensitivity
    assert (t.n_pos, t.n_neg) == (40, 60)
    assert t.ci95[0] <= t.threshold <= t.ci95[1] and t.ci95[0] < t.ci95[1]
    # The highest such threshold: one notch up and fewer than 90 % would be referred.
    above = np.sort(scores[y == 1])[np.sort(scores[y == 1]) > t.threshold][0]
    assert np.mean(scores[y == 1] >= above) < 0.9
    with pytest.raises(ValueError, match=f"at least {MIN_POSITIVES} positives"):
        site_threshold(np.r_[np.ones(MIN_POSITIVES - 1), 0], np.arange(MIN_POSITIVES), 0.9)


# -- heads ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shots, dim", [(60, 8), (30, 50)])  # more shots than dimensions, and fewer
def test_linear_probe_matches_scikit_learn_without_a_text_prior(shots, dim):
    """With u0 = 0 the probe is balanced L2 logistic regression: scikit-learn's, with C = 1 / (n rho)."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(shots, dim))
    y = (x[:, 0] + 0.5 * rng.normal(size=shots) > 0.4).astype(int)
    rho = 0.05
    u, b = fit_linear_probe(x, y, np.zeros(dim), rho)
    reference = linear_model.LogisticRegression(C=1.0 / (len(y) * rho), class_weight="balanced", tol=1e-10,
                                                max_iter=1000).fit(x, y)
    np.testing.assert_allclose(u, reference.coef_[0], atol=1e-5)
    assert b == pytest.approx(reference.intercept_[0], abs=1e-5)


def test_heads_stay_at_the_text_direction_without_evidence_against_it():
    rng = np.random.default_rng(2)
    u0 = np.array([5.0, 0, 0, 0])
    x = rng.normal(size=(40, 4))
    y = (x[:, 0] > 0).astype(int)  # the text direction is already right
    u, _ = fit_linear_probe(x, y, u0, rho=100.0)  # a strong pull keeps it there
    np.testing.assert_allclose(u, u0, atol=0.05)
    blended, bias = fit_prototype_blend(x, y, u0, 0.5)
    assert np.linalg.norm(blended) == pytest.approx(5.0) and bias == 0.0 and blended[0] > 4.5


def _shots(rng, n, signal_axis):
    y = np.r_[np.ones(n), np.zeros(n)].astype(int)
    x = rng.normal(size=(2 * n, 6)) * 0.5
    x[:, signal_axis] += 1.5 * y
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


def test_auto_adapts_only_where_cross_validation_shows_a_gain():
    rng = np.random.default_rng(3)
    text_right = 10.0 * np.eye(6)[0]
    x, y = _shots(rng, 20, signal_axis=0)  # the text direction already separates the classes
    kept = choose_head(x, y, text_right, "auto")
    assert kept.head == ZERO_SHOT and kept.reason.startswith("zero-shot kept")
    np.testing.assert_allclose(kept.out_of_fold_logits, x @ text_right)
    x, y = _shots(rng, 20, signal_axis=3)  # the site's signal is elsewhere: a head must find it
    adapted = choose_head(x, y, text_right, "auto")
    assert adapted.head != ZERO_SHOT and adapted.cv_auroc[adapted.head] > adapted.cv_auroc[ZERO_SHOT] + 0.2
    assert choose_head(x, y, text_right, "threshold").head == ZERO_SHOT


def _table():
    prompts = np.eye(6, dtype=np.float32)[:3]
    return PromptTable(["normal", "glaucoma", "cataract"], "normal", prompts, np.arange(3), "mean_renormalised", 10.0)


def test_fit_site_adaptation_replaces_only_the_adapted_rows_and_keeps_scarce_conditions():
    rng = np.random.default_rng(4)
    table = _table()
    x, y = _shots(rng, 20, signal_axis=4)
    labels = {"glaucoma": y.astype(float), "cataract": np.r_[np.ones(5), np.zeros(35)]}
    adaptation = fit_site_adaptation(table, x, labels, {"normal": None, "glaucoma": 0.3, "cataract": 0.6})
    glaucoma, cataract = adaptation.conditions["glaucoma"], adaptation.conditions["cataract"]
    assert glaucoma.head != ZERO_SHOT and glaucoma.threshold_source == "site"
    assert glaucoma.report["n_pos"] == 20 and glaucoma.report["bundle_threshold"] == 0.3
    assert (cataract.head, cataract.threshold, cataract.threshold_source) == (ZERO_SHOT, 0.6, "bundle")
    assert cataract.report["note"].startswith(f"5 positives, fewer than the {MIN_POSITIVES} a site threshold needs")
    np.testing.assert_array_equal(adaptation.class_embeddings[[0, 2]], table.class_embeddings[[0, 2]])
    adapted = adaptation.table(table)
    probabilities = adapted.score(x).condition_probabilities["glaucoma"]
    # The threshold was placed on held-out scores: on the shots the sensitivity is near the target.
    assert np.mean(probabilities[y == 1] >= glaucoma.threshold) >= 0.85
    np.testing.assert_allclose(adapted.score(x).condition_probabilities["cataract"],
                               table.score(x).condition_probabilities["cataract"], rtol=1e-5)


# -- the bundle overlay -----------------------------------------------------------------------------

def _fundus(colour, rng, size=160):
    yy, xx = np.mgrid[:size, :size]
    image = np.zeros((size, size, 3), np.uint8)
    image[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.45 * size) ** 2] = colour
    noise = rng.integers(0, 40, size=image.shape, dtype=np.uint8)
    return np.where(image > 0, np.clip(image.astype(int) + noise, 0, 255), 0).astype(np.uint8)


@pytest.fixture(scope="module")
def site_labels(tmp_path_factory):
    """A site's labels CSV: 12 'glaucoma' photos and 12 normal ones that differ in colour."""
    folder = tmp_path_factory.mktemp("site")
    rng = np.random.default_rng(5)
    paths, y = [], []
    for i in range(24):
        positive = i % 2 == 0
        path = folder / f"photo{i:02d}.png"
        cv2.imwrite(str(path), _fundus((60, 90, 200) if positive else (40, 140, 120), rng))
        paths.append(path)
        y.append(1.0 if positive else 0.0)
    return write_labels_csv(LabelledImages(paths, {"glaucoma": np.array(y)}), folder / "labels.csv")


@pytest.fixture(scope="module")
def adapted(tiny_bundle, site_labels, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapted") / "bundle"
    return adapt_bundle(tiny_bundle, site_labels, out, method="head")


def test_adapted_bundle_verifies_screens_with_its_overlay_and_leaves_the_input_alone(tiny_bundle, adapted,
                                                                                     site_labels):
    assert verify_bundle(adapted.out).ok and verify_bundle(tiny_bundle).ok
    assert load_bundle(tiny_bundle).manifest.adaptation is None
    manifest = load_bundle(adapted.out).manifest
    entry = manifest.adaptation
    assert entry.file == HEAD_FILE and HEAD_FILE in manifest.files and entry.method == "head"
    assert entry.provenance["photos_used"] == 24 and len(entry.provenance["labels_sha256"]) == 64
    glaucoma = entry.conditions["glaucoma"]
    assert glaucoma.threshold_source == "site" and glaucoma.head != ZERO_SHOT
    with Screener.from_bundle(adapted.out) as screener:
        assert screener.thresholds["glaucoma"] == glaucoma.threshold
        assert screener.thresholds["cataract"] == load_bundle(tiny_bundle).manifest.referral_thresholds["cataract"]
        result = screener.screen(next(site_labels.parent.glob("photo00.png")))
    base_table, _ = bundle_scoring(load_bundle(adapted.out), adapted=False)
    adapted_table, _ = bundle_scoring(load_bundle(adapted.out))
    row = base_table.classes.index("glaucoma")
    assert not np.allclose(base_table.class_embeddings[row], adapted_table.class_embeddings[row])
    assert result.probabilities["glaucoma"] == pytest.approx(
        float(adapted_table.score(result_embedding(adapted.out, site_labels)).condition_probabilities["glaucoma"][0]),
        rel=1e-5)


def test_an_adapted_bundle_finds_its_engines_compiled_where_the_base_left_them(tiny_bundle, adapted):
    """A new manifest, the same engine files: the compiled-engine cache is keyed by the engines, so
    the first start after `adapt` does not compile (or, on a Jetson, build) them again."""
    base, site = load_bundle(tiny_bundle), load_bundle(adapted.out)
    assert base.manifest.canonical_bytes() != site.manifest.canonical_bytes()
    for engine in base.manifest.engines:
        assert engine_cache_dir(site, engine) == engine_cache_dir(base, engine)
    assert len({engine_cache_dir(base, e) for e in base.manifest.engines}) == len(base.manifest.engines)


def result_embedding(bundle, site_labels):
    with Screener.from_bundle(bundle, keep_embeddings=True) as screener:
        return screener.screen(site_labels.parent / "photo00.png").embedding


def test_an_adaptation_needs_schema_version_2_and_names_real_conditions(adapted):
    from edge_retina.bundle import Manifest, ManifestError

    d = load_bundle(adapted.out).manifest.to_dict()
    assert d["schema_version"] == 2 and d["adaptation"]["provenance"]["base_schema_version"] == 1
    d["schema_version"] = 1
    d["adaptation"]["conditions"]["glaukoma"] = d["adaptation"]["conditions"]["glaucoma"]
    with pytest.raises(ManifestError) as caught:
        Manifest.from_dict(d)
    assert sorted(p.split(":")[0] for p in caught.value.problems) == ["adaptation", "adaptation.conditions.glaukoma"]


def test_removing_restores_the_base_manifest_byte_for_byte(tiny_bundle, adapted, tmp_path):
    restored = remove_adaptation(adapted.out, tmp_path / "restored")
    assert (restored / MANIFEST_NAME).read_bytes() == (tiny_bundle / MANIFEST_NAME).read_bytes()
    assert not (restored / HEAD_FILE).exists()
    with pytest.raises(BundleError, match="no site adaptation"):
        remove_adaptation(restored, tmp_path / "again")


def test_adapting_twice_replaces_the_overlay_and_archives_sign(adapted, site_labels, tmp_path):
    again = adapt_bundle(adapted.out, site_labels, tmp_path / "again.erb.tar", method="threshold")
    manifest = load_bundle(again.out).manifest
    assert manifest.adaptation.method == "threshold"
    assert manifest.adaptation.conditions["glaucoma"].head == ZERO_SHOT
    assert [f for f in manifest.files if f.startswith("adaptation/")] == [HEAD_FILE]
    generate_key_pair(tmp_path / "key", tmp_path / "keys" / "site.pub")
    sign_bundle(again.out, load_private_key(tmp_path / "key"))
    assert check_signature(again.out, TrustedKeys.from_directory(tmp_path / "keys"))
    assert verify_bundle(again.out).ok


def test_bad_site_labels_are_refused_before_anything_is_written(tiny_bundle, site_labels, tmp_path):
    folder = site_labels.parent
    photos = sorted(folder.glob("photo*.png"))

    def refused(labels, match):
        csv_path = write_labels_csv(labels, tmp_path / "bad.csv")
        with pytest.raises(EdgeRetinaError, match=match):
            adapt_bundle(tiny_bundle, csv_path, tmp_path / "out")
        assert not (tmp_path / "out").exists()

    y = np.array([1.0, 0.0] * 12)
    refused(LabelledImages(photos, {"glaukoma": y}), r"not conditions this bundle refers for")
    refused(LabelledImages(photos, {"normal": y}), r"not conditions this bundle refers for")
    refused(LabelledImages(photos, {"glaucoma": np.ones(24)}), r"24 positives and 0 negatives")
    refused(LabelledImages(photos[:1], {"glaucoma": np.ones(1)}), r"1 positive and 0 negatives")
    refused(LabelledImages(photos + photos[:1], {"glaucoma": np.r_[y, 1.0]}), r"rows 2 and 26")
    with pytest.raises(BundleError, match="never modifies its input"):
        adapt_bundle(tiny_bundle, site_labels, tiny_bundle)
    (tmp_path / "notes.txt").write_text("a file where a folder is needed")
    for out in (tmp_path / "notes.txt" / "adapted", tmp_path / "notes.txt" / "adapted.erb.tar"):
        res = narrow_runner().invoke(cli, ["adapt", "--bundle", str(tiny_bundle), "--labels", str(site_labels),
                                           "--out", str(out)])
        assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
        assert unwrapped(f"cannot write the bundle to {out}: {tmp_path}/notes.txt is not a folder") \
            in unwrapped(res.output)
    for out in (tmp_path / "adapted.zip", tmp_path / "adapted.TAR.GZ", tmp_path / ".erb.tar"):
        res = narrow_runner().invoke(cli, ["adapt", "--bundle", str(tiny_bundle), "--labels", str(site_labels),
                                           "--out", str(out)])
        assert res.exit_code == 2 and widest_line(res.output) <= COLUMNS, res.output
        assert unwrapped(f"error: {out}: a bundle archive must be named <something>.erb.tar; any other --out is "
                         "written as a new folder") in unwrapped(res.output), res.output
        assert not out.exists()


def test_unreadable_photos_are_listed_and_left_out(tiny_bundle, site_labels, tmp_path):
    photos = sorted(site_labels.parent.glob("photo*.png"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a photo")
    labels = write_labels_csv(LabelledImages(photos + [broken], {"glaucoma": np.r_[[1.0, 0.0] * 12, 1.0]}),
                              tmp_path / "labels.csv")
    report = adapt_bundle(tiny_bundle, labels, tmp_path / "out", method="threshold")
    assert report.photos == 24 and len(report.skipped) == 1 and "broken.jpg" in report.skipped[0]


def test_adapt_messages_fit_80_columns_and_name_photos_as_listed(tiny_bundle, site_labels, tmp_path):
    """A site folder deep enough that its path alone is wider than the terminal: every message wraps
    to 80 columns, keeps the labels CSV's path whole (lines joined), and names a photo once, as the
    CSV lists it."""
    folder = folder_wider_than_the_terminal(tmp_path)
    photos = [Path(shutil.copy(p, folder)) for p in sorted(site_labels.parent.glob("photo*.png"))]
    broken = folder / "a-photo-from-the-old-camera-that-cannot-be-read.jpg"
    broken.write_bytes(b"not a photo")
    y = np.array([1.0, 0.0] * 12)

    def run(labelled: LabelledImages) -> tuple[int, str]:
        labels = write_labels_csv(labelled, folder / "labels.csv")
        result = narrow_runner().invoke(cli, ["adapt", "--bundle", str(tiny_bundle), "--labels", str(labels),
                                              "--out", str(tmp_path / "out"), "--method", "threshold"])
        assert widest_line(result.stderr) <= COLUMNS, result.stderr
        return result.exit_code, unwrapped(result.stderr)

    code, refused = run(LabelledImages(photos + photos[:1], {"glaucoma": np.r_[y, 1.0]}))
    assert code == 2 and unwrapped(f"{folder / 'labels.csv'}: the same photo") in refused, refused
    assert unwrapped("rows 2 and 26 (photo00.png)") in refused, refused
    code, left_out = run(LabelledImages(photos + [broken], {"glaucoma": np.r_[y, 1.0]}))
    assert code == 0 and unwrapped(f"left out {broken.name}: not an image file") in left_out, left_out
    assert unwrapped(str(folder)) not in left_out


def test_one_photo_is_counted_in_the_singular(tiny_bundle, site_labels, tmp_path):
    """Two labelled photos, one of them unreadable: one photo, one positive, in the table and in
    `bundle inspect`."""
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a photo")
    labels = write_labels_csv(LabelledImages([site_labels.parent / "photo00.png", broken],
                                             {"glaucoma": np.array([1.0, 0.0])}), tmp_path / "labels.csv")
    out = tmp_path / "adapted"
    runner = narrow_runner()
    adapted = runner.invoke(cli, ["adapt", "--bundle", str(tiny_bundle), "--labels", str(labels), "--out", str(out),
                                  "--json"], catch_exceptions=False)
    assert adapted.exit_code == 0, adapted.output
    assert unwrapped("site adaptation (1 photo,") in unwrapped(adapted.stderr), adapted.stderr
    note = json.loads(adapted.stdout)["conditions"]["glaucoma"]["note"]
    assert note.startswith(f"1 positive, fewer than the {MIN_POSITIVES} a site threshold needs"), note
    inspected = runner.invoke(cli, ["bundle", "inspect", str(out)], catch_exceptions=False)
    assert unwrapped("; 1 photo of labels.csv") in unwrapped(inspected.output), inspected.output


def test_adapt_command_inspect_and_parity_against_the_base(tiny_bundle, site_labels, tmp_path):
    runner = narrow_runner()
    out = tmp_path / "adapted"
    result = runner.invoke(cli, ["adapt", "--bundle", str(tiny_bundle), "--labels", str(site_labels),
                                 "--out", str(out), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["conditions"]["glaucoma"]["threshold_source"] == "site"
    assert widest_line(result.stderr) <= COLUMNS and "glaucoma" in result.stderr, result.stderr  # the table
    inspected = runner.invoke(cli, ["bundle", "inspect", str(out)], catch_exceptions=False)
    assert unwrapped("site adaptation") in unwrapped(inspected.output) and "glaucoma" in inspected.output
    assert widest_line(inspected.output) <= COLUMNS, inspected.output
    parity = runner.invoke(cli, ["bench", "parity", "--bundle", str(out), "--labels", str(site_labels),
                                 "--reference", "base", "--backend", "onnxruntime", "--replicates", "200",
                                 "--max-drop", "1", "--json"], catch_exceptions=False)
    assert parity.exit_code == 0, parity.output
    data = json.loads(parity.stdout)
    assert data["reference"].endswith("zero-shot") and any(m.endswith("adapted") for m in data["models"])
    (glaucoma,) = data["conditions"]
    adapted_model = next(m for m in data["models"] if m.endswith("adapted"))
    assert glaucoma["models"][adapted_model]["threshold"] == report["conditions"]["glaucoma"]["threshold"]
    base = runner.invoke(cli, ["bench", "parity", "--bundle", str(tiny_bundle), "--labels", str(site_labels),
                               "--reference", "base"], catch_exceptions=False)
    assert base.exit_code == 2 and unwrapped("no site adaptation") in unwrapped(base.output)
    removed = runner.invoke(cli, ["adapt", "--bundle", str(out), "--remove", "--out", str(tmp_path / "base")],
                            catch_exceptions=False)
    assert removed.exit_code == 0 and load_bundle(tmp_path / "base").manifest.adaptation is None
    missing = runner.invoke(cli, ["adapt", "--bundle", str(tiny_bundle), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "--labels" in missing.output
