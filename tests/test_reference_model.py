"""The in-house reference dual encoder: model, prompts, captions, splits, export, weights."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from converters.prompt_files import DEFAULT_PROMPT_FILE, load_prompt_file, normal_class  # noqa: E402
from converters.reference.captions import (  # noqa: E402
    FindingClass,
    caption_table,
    caption_variants,
    keyword_findings,
    keyword_texts,
)
from converters.reference.evaluate import zero_shot_auroc  # noqa: E402
from converters.reference.model import (  # noqa: E402
    EMBED_DIM,
    ImageEncoder,
    REFERENCE_INPUT_SPEC,
    build_reference_model,
)
from converters.reference.train import (  # noqa: E402
    finding_matrix,
    rows_kept,
    soft_clip_loss,
    soft_targets,
    training_texts,
)
from converters.reference.weights import (  # noqa: E402
    REFERENCE_WEIGHTS,
    load_reference,
    save_reference,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_reference_model().eval()


def _image_batch(n: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, *REFERENCE_INPUT_SPEC.size, generator=g)


def test_image_encoder_outputs_unit_embeddings(model):
    with torch.no_grad():
        emb = model.image_encoder(_image_batch(3))
    assert emb.shape == (3, EMBED_DIM)
    np.testing.assert_allclose(emb.norm(dim=-1).numpy(), 1.0, atol=1e-5)


def test_state_dict_follows_flair_layout(model):
    keys = model.state_dict().keys()
    assert "vision_model.model.conv_stem.weight" in keys
    assert "vision_model.projection_head_vision.projection.weight" in keys
    assert "text_model.projection_head_text.projection.weight" in keys
    assert "logit_scale" in keys
    assert not any(k.startswith("vision_model.model.classifier.") for k in keys)
    assert model.state_dict()["vision_model.projection_head_vision.projection.weight"].shape == (EMBED_DIM, 1280)


@pytest.mark.parametrize("frozen_blocks", [None, 5])
def test_the_trainable_head_on_trunk_features_is_the_whole_encoder(model, frozen_blocks):
    """Wherever training splits the network (``train --frozen-blocks``), trunk + head is the encoder."""
    from converters.backbones import lite_trunk

    x = _image_batch(2)
    encoder = model.image_encoder
    if frozen_blocks is not None:
        encoder = ImageEncoder(frozen_blocks=frozen_blocks)
        encoder.load_state_dict(model.image_encoder.state_dict())
        encoder.eval()
    with torch.no_grad():
        whole = encoder(x)
        split = encoder.embed_trunk_features(lite_trunk(encoder.model, x, encoder.frozen_blocks))
        default = model.image_encoder(x)
    torch.testing.assert_close(whole, split)
    torch.testing.assert_close(whole, default)


def test_encode_text_is_normalised_and_frozen(model):
    emb = model.encode_text(["hard exudates near the fovea", "a healthy optic disc"])
    assert emb.shape == (2, EMBED_DIM)
    np.testing.assert_allclose(emb.norm(dim=-1).detach().numpy(), 1.0, atol=1e-5)
    assert not any(p.requires_grad for p in model.text_model.model.parameters())
    model.train()
    assert not model.text_model.model.training  # MiniLM stays in eval mode (no dropout) while training
    model.eval()


@pytest.mark.slow
def test_onnx_dynamo_export_matches_torch(model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    x = _image_batch(2)
    path = tmp_path / "image_encoder.onnx"
    torch.onnx.export(
        model.image_encoder, (x,), str(path), dynamo=True, input_names=["image"], output_names=["embedding"],
        dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model.image_encoder(x).numpy()
    got = session.run(None, {"image": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    single = session.run(None, {"image": x[:1].numpy()})[0]  # the batch axis really is dynamic
    np.testing.assert_allclose(single, expected[:1], atol=1e-4)


def test_prompt_file_has_a_normal_class_and_the_expected_conditions():
    conditions = load_prompt_file()
    assert normal_class(conditions).name == "normal"
    names = {c.name for c in conditions}
    assert {"diabetic_retinopathy", "glaucoma", "cataract", "macular_oedema", "amd"} <= names
    assert all(len(c.prompts) >= 4 for c in conditions)


def test_conditions_come_from_the_file_alone(tmp_path):
    doc = json.loads(DEFAULT_PROMPT_FILE.read_text())
    doc["conditions"] = [c for c in doc["conditions"] if c["name"] != "amd"]
    doc["conditions"].append({"name": "myopia", "label": "Pathological myopia", "prompts": ["tessellated fundus"]})
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(doc))
    names = [c.name for c in load_prompt_file(path)]
    assert "myopia" in names and "amd" not in names


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: [c.pop("normal", None) for c in d["conditions"]], "normal"),
        (lambda d: d["conditions"].append(dict(d["conditions"][0])), "duplicate"),
        (lambda d: d["conditions"][1].update(prompts=[]), "prompts"),
        (lambda d: d.update(schema=99), "schema"),
    ],
)
def test_bad_prompt_files_are_rejected(tmp_path, mutate, message):
    doc = json.loads(DEFAULT_PROMPT_FILE.read_text())
    mutate(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=message):
        load_prompt_file(path)


def _canonical(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".").split())


def test_captions_never_equal_a_zero_shot_prompt():
    prompts = {_canonical(p) for c in load_prompt_file() for p in c.prompts}
    captions, _ = caption_table()
    assert len(captions) == len(set(captions))
    assert not prompts & {_canonical(c) for c in captions}


def test_every_generated_class_has_enough_caption_variants():
    _, index = caption_table()
    assert all(len(caption_variants(f)) >= 20 for f in index)


def test_odir_keywords_map_to_findings_and_keep_the_graders_words():
    keywords = "moderate non proliferative retinopathy\uff0chypertensive retinopathy, lens dust"
    assert keyword_findings(keywords) == ("dr_moderate", "hypertensive_retinopathy")
    assert keyword_findings("macular epiretinal membrane") == ("epiretinal membrane",)
    texts = keyword_texts(keywords)
    assert texts[0] == "moderate non proliferative retinopathy, hypertensive retinopathy, lens dust"
    assert all(texts[0] in t for t in texts) and len(set(texts)) == len(texts)


def test_training_texts_pair_each_record_with_its_own_words():
    from converters.reference.data import Record

    records = [Record("odir", "odir", "a.jpg", ("amd",), "train", "g1", "dry age-related macular degeneration"),
               Record("palm", "palm", "b.jpg", ("pathological_myopia",), "train", "g2")]
    texts, choices = training_texts(records)
    assert {texts[i] for i in choices[0]} == set(keyword_texts(records[0].keywords))
    assert {texts[i] for i in choices[1]} == set(caption_variants(FindingClass.PATHOLOGICAL_MYOPIA))
    assert finding_matrix(records).tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_a_left_out_dataset_contributes_no_photo():
    """``--leave-out``: positions into the full split's feature cache, none of them a left-out photo."""
    from converters.reference.data import Record

    datasets = ["odir", "palm", "rimone", "odir", "palm", "heimed"]
    records = [Record(d, d, f"{i}.jpg", ("normal",), "train", f"g{i}") for i, d in enumerate(datasets)]
    train_idx = np.array([1, 2, 3, 4, 5])  # record 0 is in another split
    kept = rows_kept(records, train_idx, ["palm", "rimone"])
    assert kept.tolist() == [2, 4]  # records 3 (odir) and 5 (heimed)
    assert {records[train_idx[j]].dataset for j in kept} == {"odir", "heimed"}
    assert rows_kept(records, train_idx, []).tolist() == [0, 1, 2, 3, 4]


def test_soft_clip_loss_prefers_matching_pairs_and_shares_credit_by_findings():
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=-1)
    scale = torch.tensor(np.log(20.0))
    distinct = torch.eye(8)
    assert soft_clip_loss(emb, emb, distinct, scale) < soft_clip_loss(emb, emb.roll(1, 0), distinct, scale)
    # Identical finding sets are positives: swapping the texts of two such images changes nothing.
    pairs = torch.eye(4).repeat_interleave(2, dim=0)
    swapped = emb[[1, 0, 2, 3, 4, 5, 6, 7]]
    torch.testing.assert_close(soft_clip_loss(emb, emb, pairs, scale), soft_clip_loss(emb, swapped, pairs, scale))
    # Partly shared findings get partial credit: {DR, hypertensive} vs {DR} weighs 1/2, disjoint 0.
    overlap = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(soft_targets(overlap), torch.tensor([[2 / 3, 1 / 3, 0.0], [1 / 3, 2 / 3, 0.0],
                                                                    [0.0, 0.0, 1.0]]))


def test_zero_shot_scoring_ranks_matching_embeddings_first(model):
    from converters.reference.data import Record
    from converters.reference.evaluate import prompt_table

    conditions = load_prompt_file()
    class_emb = torch.from_numpy(prompt_table(model.text_model, model.logit_scale.detach(), conditions).class_embeddings)
    by_name = {c.name: k for k, c in enumerate(conditions)}
    records, rows = [], []
    for dataset, source, positive in (("eye4class", "odir", FindingClass.CATARACT),
                                      ("heimed", "heimed", FindingClass.EXUDATES)):
        condition = "cataract" if positive == FindingClass.CATARACT else "macular_oedema"
        for finding, name in ((positive, condition), (FindingClass.NORMAL, "normal")):
            for i in range(3):
                records.append(Record(dataset, source, f"{finding.value}{i}", (finding.value,), "test", "g"))
                rows.append(class_emb[by_name[name]])
    result = zero_shot_auroc(torch.stack(rows), records, model.text_model, model.logit_scale.detach(), conditions)
    scored = {r["condition"]: r for r in result if r["auroc"] is not None}
    assert scored["cataract"]["auroc"] == 1.0 and scored["cataract"]["n_pos"] == 3
    assert scored["cataract"]["auroc_ci95"] == [1.0, 1.0]  # every stratified resample is perfectly ranked
    assert scored["macular_oedema"]["auroc"] == 1.0 and scored["macular_oedema"]["n_neg"] == 3
    assert {r["condition"] for r in result if r["auroc"] is None} >= {"amd", "glaucoma"}  # no such records here


def test_weights_round_trip_through_fp16_safetensors(model, tmp_path):
    path = save_reference(model, tmp_path / "ref.safetensors", {"recipe_sha256": "test"})
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["embed_dim"] == EMBED_DIM and sidecar["input_spec"] == REFERENCE_INPUT_SPEC.to_dict()
    assert "stages 0-5 frozen in training) -> L2 norm -> Linear(no bias)" in sidecar["arch"]["image"]
    loaded = load_reference(path)
    x = _image_batch(1)
    with torch.no_grad():
        np.testing.assert_allclose(loaded.image_encoder(x).numpy(), model.image_encoder(x).numpy(), atol=5e-3)


def test_shipped_weights_load_with_matching_keys():
    if not REFERENCE_WEIGHTS.is_file():
        pytest.skip(f"{REFERENCE_WEIGHTS.name} not trained yet")
    assert REFERENCE_WEIGHTS.stat().st_size <= 50 * 2**20
    model = load_reference(REFERENCE_WEIGHTS)  # raises on any missing or unexpected key
    sidecar = json.loads(REFERENCE_WEIGHTS.with_suffix(".json").read_text())
    assert sidecar["input_spec"] == REFERENCE_INPUT_SPEC.to_dict()
    with torch.no_grad():
        emb = model.image_encoder(_image_batch(1))
    np.testing.assert_allclose(emb.norm(dim=-1).numpy(), 1.0, atol=1e-3)


@pytest.mark.shared_data
def test_splits_are_deterministic_and_disjoint(shared_datasets):
    from converters.reference.data import load_records, split_hash

    records = load_records(shared_datasets)
    again = load_records(shared_datasets)
    assert records == again and split_hash(records) == split_hash(again)
    splits_of_group: dict[str, set[str]] = {}
    for r in records:
        splits_of_group.setdefault(r.group, set()).add(r.split)
    assert all(len(s) == 1 for s in splits_of_group.values())  # no patient or file on two sides
    keys = {split: {(r.dataset, r.file) for r in records if r.split == split} for split in ("train", "val", "test")}
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    assert all(keys.values())
    import csv

    with open(shared_datasets / "rimone" / "labels.csv", newline="") as fh:
        published_test = {row["file"] for row in csv.DictReader(fh) if row["split"] == "test"}
    assert {r.file for r in records if r.dataset == "rimone" and r.split == "test"} == published_test
    with open(shared_datasets / "eye4class" / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    split_of = {r.file: r.split for r in records if r.dataset == "eye4class"}
    by_sha1: dict[str, set[str]] = {}
    for row in rows:
        if row["file"] in split_of:
            by_sha1.setdefault(row["sha1"], set()).add(split_of[row["file"]])
    assert all(len(s) == 1 for s in by_sha1.values())  # byte-identical copies share a side
