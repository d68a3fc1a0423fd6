"""Training text: the graders' own diagnostic keywords where a dataset has them (ODIR-5K), and
report-style captions written from the labels of the datasets that have only labels.

Both are the *training* text family. The zero-shot prompts (converters/prompt_files/*.json) are a separate
family, written independently: a caption never equals a prompt (tests check it), otherwise zero-shot
accuracy would only measure string lookup.

Every image gets a finding class (``FindingClass``). A class's captions are the product of report
openings and finding sentences, so all of them can be embedded once by the frozen text tower; each
epoch each sample draws one of them with a seeded generator.
"""
from __future__ import annotations

from enum import Enum
from itertools import product

import numpy as np


class FindingClass(str, Enum):
    """What a training image shows, as far as its dataset's labels tell."""

    NORMAL = "normal"  # full fundus, no findings (ODIR normal, EyePACS grade 0, HEI-MED healthy)
    NORMAL_DISC = "normal_disc"  # optic-disc crop without glaucoma (RIM-ONE)
    CATARACT = "cataract"
    GLAUCOMA = "glaucoma"  # full fundus (ODIR)
    GLAUCOMA_DISC = "glaucoma_disc"  # optic-disc crop (RIM-ONE)
    GLAUCOMA_SUSPECT_DISC = "glaucoma_suspect_disc"  # RIM-ONE suspects (labelled glaucoma there)
    DR_MILD = "dr_mild"  # EyePACS grade 1; HEI-MED microaneurysms without exudates
    DR_MODERATE = "dr_moderate"  # EyePACS grade 2
    DR_SEVERE = "dr_severe"  # EyePACS grade 3
    DR_PROLIFERATIVE = "dr_proliferative"  # EyePACS grade 4
    DR_UNGRADED = "dr_ungraded"  # ODIR "diabetic retinopathy" without a grade
    EXUDATES = "exudates"  # HEI-MED exudates / bright lesions
    GLAUCOMA_SUSPECT = "glaucoma_suspect"  # full fundus (ODIR "suspected glaucoma")
    AMD = "amd"  # ODIR dry / wet age-related macular degeneration
    DRUSEN = "drusen"  # ODIR drusen without an AMD diagnosis
    PATHOLOGICAL_MYOPIA = "pathological_myopia"  # ODIR, PALM
    HIGH_MYOPIA = "high_myopia"  # PALM: high but not pathological myopia
    HYPERTENSIVE_RETINOPATHY = "hypertensive_retinopathy"  # ODIR


_FULL_FUNDUS_OPENINGS = (
    "Colour fundus photograph showing {f}.",
    "Fundus image of the posterior pole: {f}.",
    "Retinal photograph demonstrates {f}.",
    "Findings on this fundus photo: {f}.",
    "Screening photograph of the retina with {f}.",
    "Posterior pole image; impression: {f}.",
    "Digital fundus photography reveals {f}.",
    "On fundoscopy the image shows {f}.",
)
_DISC_OPENINGS = (
    "Optic nerve head photograph showing {f}.",
    "Close-up image of the optic disc: {f}.",
    "Disc-centred fundus crop demonstrates {f}.",
    "Photograph of the optic nerve head with {f}.",
    "Optic disc image; impression: {f}.",
    "Magnified view of the papilla reveals {f}.",
)

_FINDINGS: dict[FindingClass, tuple[str, ...]] = {
    FindingClass.NORMAL: (
        "an unremarkable retina",
        "no abnormality detected",
        "clear media, a pink well-defined disc and a normal macula",
        "normal vascular calibre and no lesions",
        "no retinopathy, disc and macula within normal limits",
        "a healthy posterior pole without haemorrhage or exudate",
        "normal findings in both the disc and the macular region",
    ),
    FindingClass.NORMAL_DISC: (
        "a healthy disc with an intact neuroretinal rim",
        "a small physiological cup and a pink rim",
        "normal cupping and no rim loss",
        "no glaucomatous changes",
        "a well-perfused rim following the ISNT rule",
        "an unremarkable optic nerve head",
    ),
    FindingClass.CATARACT: (
        "a diffuse haze across the image consistent with cataract",
        "reduced clarity of the vessels from lens opacity",
        "a blurred, washed-out view of the retina due to cataract",
        "media opacity degrading the image of the disc and vessels",
        "only the larger vessels discernible through a cloudy lens",
        "poor image contrast from an opaque crystalline lens",
        "a veiled fundus typical of lens opacification",
    ),
    FindingClass.GLAUCOMA: (
        "a glaucomatous optic disc with a large cup",
        "increased cupping of the optic nerve head suggesting glaucoma",
        "thinning of the rim and a vertically elongated cup",
        "an excavated disc consistent with glaucomatous optic neuropathy",
        "a cup-disc ratio of about 0.8 with rim loss",
        "pale, cupped disc typical of glaucoma",
        "loss of neuroretinal rim with bayoneting of vessels",
    ),
    FindingClass.GLAUCOMA_DISC: (
        "marked cupping and rim loss consistent with glaucoma",
        "a large excavated cup and a thin neuroretinal rim",
        "glaucomatous optic neuropathy with an enlarged cup",
        "inferior rim notching and peripapillary atrophy",
        "a vertical cup-disc ratio above 0.7",
        "rim thinning with vessels displaced nasally by a deep cup",
    ),
    FindingClass.GLAUCOMA_SUSPECT_DISC: (
        "borderline cupping, glaucoma suspect",
        "a suspicious cup-disc ratio that needs follow-up for glaucoma",
        "possible early glaucomatous rim thinning",
        "an asymmetric cup raising suspicion of glaucoma",
    ),
    FindingClass.DR_MILD: (
        "a few microaneurysms only, mild non-proliferative diabetic retinopathy",
        "scattered microaneurysms consistent with mild diabetic retinopathy",
        "early diabetic changes with isolated microaneurysms",
        "mild NPDR, no exudates",
        "minimal background diabetic retinopathy",
    ),
    FindingClass.DR_MODERATE: (
        "moderate non-proliferative diabetic retinopathy with haemorrhages and microaneurysms",
        "several blot haemorrhages and exudates, moderate NPDR",
        "moderate diabetic retinopathy with scattered intraretinal haemorrhages",
        "microaneurysms, dot haemorrhages and a few cotton-wool spots",
        "referable diabetic retinopathy of moderate grade",
    ),
    FindingClass.DR_SEVERE: (
        "severe non-proliferative diabetic retinopathy with extensive haemorrhages",
        "many intraretinal haemorrhages and venous beading, severe NPDR",
        "severe diabetic retinopathy with IRMA",
        "widespread blot haemorrhages in all quadrants",
        "referable diabetic retinopathy of severe grade",
    ),
    FindingClass.DR_PROLIFERATIVE: (
        "proliferative diabetic retinopathy with new vessels",
        "neovascularisation elsewhere and preretinal haemorrhage",
        "new vessels at the disc, proliferative disease",
        "fibrovascular proliferation from diabetic retinopathy",
        "advanced diabetic eye disease with neovascular fronds",
    ),
    FindingClass.PATHOLOGICAL_MYOPIA: (
        "a tessellated fundus with peripapillary atrophy from pathological myopia",
        "myopic maculopathy with patchy chorioretinal atrophy",
        "a tilted disc, staphyloma and atrophic patches of high myopia",
        "lacquer cracks and diffuse atrophy in a myopic eye",
        "degenerative myopia with a large temporal crescent",
    ),
    FindingClass.HIGH_MYOPIA: (
        "a tessellated myopic fundus without atrophic lesions",
        "high myopia with a tilted disc but no maculopathy",
        "a myopic crescent only, no pathological changes",
        "a thin, tessellated retina of a highly myopic eye without degeneration",
    ),
    FindingClass.EXUDATES: (
        "hard exudates at the posterior pole",
        "yellow exudates clustered around the fovea",
        "bright lipid deposits in the macular area suggesting oedema",
        "exudates within one disc diameter of the fovea",
        "a circinate pattern of exudates, diabetic maculopathy",
        "waxy exudative lesions temporal to the disc",
    ),
}

_DISC_CLASSES = {FindingClass.NORMAL_DISC, FindingClass.GLAUCOMA_DISC, FindingClass.GLAUCOMA_SUSPECT_DISC}


def caption_variants(finding: FindingClass) -> list[str]:
    """Every caption a sample of this class can get, in a fixed order."""
    openings = _DISC_OPENINGS if finding in _DISC_CLASSES else _FULL_FUNDUS_OPENINGS
    return [opening.format(f=f) for opening, f in product(openings, _FINDINGS[finding])]


def caption_table() -> tuple[list[str], dict[FindingClass, np.ndarray]]:
    """All generated captions of all classes that have them, and for each such class the indices of
    its captions in that list (classes seen only through keywords have none)."""
    captions: list[str] = []
    index: dict[FindingClass, np.ndarray] = {}
    for finding in _FINDINGS:
        variants = caption_variants(finding)
        index[finding] = np.arange(len(captions), len(captions) + len(variants))
        captions.extend(variants)
    return captions, index


# ODIR-5K's diagnostic keywords (as the graders wrote them) -> finding classes. Keywords not listed
# here (epiretinal membrane, laser spots, vein occlusion, ...) stay findings in their own words;
# image-quality notes are not findings of the eye.
_KEYWORD_FINDINGS = {
    "normal fundus": FindingClass.NORMAL,
    "mild nonproliferative retinopathy": FindingClass.DR_MILD,
    "moderate non proliferative retinopathy": FindingClass.DR_MODERATE,
    "severe nonproliferative retinopathy": FindingClass.DR_SEVERE,
    "proliferative diabetic retinopathy": FindingClass.DR_PROLIFERATIVE,
    "severe proliferative diabetic retinopathy": FindingClass.DR_PROLIFERATIVE,
    "diabetic retinopathy": FindingClass.DR_UNGRADED,
    "suspected diabetic retinopathy": FindingClass.DR_UNGRADED,
    "suspicious diabetic retinopathy": FindingClass.DR_UNGRADED,
    "suspected moderate non proliferative retinopathy": FindingClass.DR_UNGRADED,
    "glaucoma": FindingClass.GLAUCOMA,
    "suspected glaucoma": FindingClass.GLAUCOMA_SUSPECT,
    "cataract": FindingClass.CATARACT,
    "dry age-related macular degeneration": FindingClass.AMD,
    "wet age-related macular degeneration": FindingClass.AMD,
    "age-related macular degeneration": FindingClass.AMD,
    "drusen": FindingClass.DRUSEN,
    "pathological myopia": FindingClass.PATHOLOGICAL_MYOPIA,
    "myopia retinopathy": FindingClass.PATHOLOGICAL_MYOPIA,
    "myopic maculopathy": FindingClass.PATHOLOGICAL_MYOPIA,
    "hypertensive retinopathy": FindingClass.HYPERTENSIVE_RETINOPATHY,
    "macular epiretinal membrane": "epiretinal membrane",
    "epiretinal membrane over the macula": "epiretinal membrane",
}
IMAGE_QUALITY_NOTES = frozenset({"lens dust", "low image quality", "image offset", "no fundus image",
                                 "optic disk photographically invisible"})


def split_keywords(keywords: str) -> list[str]:
    """A grader's keyword cell as phrases (ODIR-5K separates them with ',' or the full-width '，')."""
    return [k.strip() for k in keywords.replace("\uff0c", ",").split(",") if k.strip()]


def keyword_findings(keywords: str) -> tuple[str, ...]:
    """The findings a keyword cell names (sorted; image-quality notes left out)."""
    found = {_KEYWORD_FINDINGS.get(k, k) for k in split_keywords(keywords) if k not in IMAGE_QUALITY_NOTES}
    return tuple(sorted(str(f.value if isinstance(f, FindingClass) else f) for f in found))


def keyword_texts(keywords: str) -> list[str]:
    """The training texts of one keyword cell: the phrases as written, alone and in report openings."""
    phrase = ", ".join(split_keywords(keywords))
    return [phrase, *(opening.format(f=phrase) for opening in _FULL_FUNDUS_OPENINGS)]
