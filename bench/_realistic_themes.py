"""The ten clinical themes of the realistic workload (renal, cardiology, oncology, respiratory, diabetes here;
stroke, mental health, paediatrics, hepatology, rheumatology in :mod:`bench._realistic_themes2`) and the
background codes no study uses.

Codes are real where they are well known (ICD-10, ATC, OPCS-4, LOINC with the canonical units of
``screener/rules/data/loinc_units.csv``, SNOMED CT concepts, RxNorm ingredients); dm+d identifiers are
dm+d-shaped product ids. Prevalences are per patient of the theme (a hospital caseload, enriched so that each
of the hundred studies finds eligible, possible and ineligible patients among a few thousand).
"""

from __future__ import annotations

from bench._realistic_codes import CREATININE, EGFR, HBA1C, NT_PROBNP, Cond, Drug, Lab, Pair, Proc, Score, Theme
from bench._realistic_themes2 import SECOND

__all__ = ["THEMES", "background_codes"]

_FIRST: tuple[Theme, ...] = (
    Theme(
        "renal",
        0.12,
        False,
        (
            Cond("ckd", ("N18", "N18.3", "N18.4"), ("709044004", "431855005"), 0.85, 2.5),
            Cond("aki", ("N17", "N17.9"), ("14669001",), 0.25, 1.6, resolved=0.8),
            Cond("glomerulonephritis", ("N03", "N05"), ("36171008",), 0.12, 1.0),
            Cond("polycystic_kidney", ("Q61.2", "Q61.3"), ("28728008",), 0.05, 1.0),
        ),
        (
            EGFR,
            CREATININE,
            Lab("acr", ("14958-3",), "mg/mmol", 1.3, 1.4, 0.4, (0, 3), 2.0, 0.0, 1, log=True),
            Lab("phosphate", ("14879-1",), "mmol/L", 1.2, 0.25, 0.1, (0.8, 1.5), 1.5, 0.0, 2),
            Lab("bicarbonate", ("1963-8",), "mmol/L", 23, 3, 1.5, (22, 29), 1.5, 0.0, 0),
        ),
        (
            Drug("acei", ("C09AA05", "C09AA02"), "oral", (2.5, 5, 10), "mg", 0.5, 28, 9, rxnorm=("35296", "3827")),
            Drug("arb", ("C09CA01", "C09CA06"), "oral", (25, 50, 100), "mg", 0.25, 28, 8, rxnorm=("52175",)),
            Drug("sglt2i", ("A10BK01", "A10BK03"), "oral", (10, 25), "mg", 0.2, 28, 6, rxnorm=("1488564", "1545653")),
            Drug("esa", ("B03XA01", "B03XA02"), "subcutaneous", (2000, 4000, 6000), "[iU]", 0.1, 14, 8),
        ),
        (Proc("dialysis", ("X40.1", "X40.3"), 0.06, 0.0), Proc("renal_biopsy", ("M13.1",), 0.08, 0.2)),
        (),
        (Pair("aki_after_biopsy", "renal_biopsy", "aki", 0.3, 30),),
        (
            Cond("kidney_transplant", ("Z94.0",), ("737295003",), 0.05, 1.0, 0.0, 0.0),
            Cond("dialysis_dependence", ("Z99.2",), ("105502003",), 0.06, 1.0, 0.0, 0.0),
        ),
    ),
    Theme(
        "cardiology",
        0.18,
        False,
        (
            Cond("heart_failure", ("I50", "I50.0", "I50.9"), ("84114007",), 0.45, 2.0),
            Cond("atrial_fibrillation", ("I48", "I48.0", "I48.2"), ("49436004",), 0.4, 2.0),
            Cond("myocardial_infarction", ("I21", "I21.4", "I22"), ("22298006",), 0.25, 1.3, resolved=0.5),
            Cond("hypertension", ("I10",), ("38341003",), 0.7, 2.0),
            Cond("angina", ("I20", "I20.9"), ("194828000",), 0.25, 1.5),
        ),
        (
            NT_PROBNP,
            Lab("lvef", ("10230-1", "8806-2"), "%", 45, 12, 4, (55, None), 0.8, 0.0, 0),
            Lab("troponin", ("89579-7",), "ng/L", 2.5, 1.2, 0.8, (0, 34), 1.0, 0.0, 0, log=True),
            Lab("ldl", ("22748-8",), "mmol/L", 2.6, 0.8, 0.3, (None, 3.0), 1.0, 0.2),
            Lab("heart_rate", ("8867-4",), "{beats}/min", 74, 10, 8, (50, 100), 2.0, 0.5, 0),
        ),
        (
            Drug(
                "anticoagulant",
                ("B01AF02", "B01AF01", "B01AA03"),
                "oral",
                (5, 10, 20),
                "mg",
                0.4,
                28,
                10,
                rxnorm=("1364430", "1114195", "11289"),
            ),
            Drug(
                "beta_blocker",
                ("C07AB07", "C07AB02"),
                "oral",
                (1.25, 2.5, 5, 10),
                "mg",
                0.55,
                28,
                10,
                rxnorm=("19484",),
            ),
            Drug("loop_diuretic", ("C03CA01", "C03CA02"), "oral", (20, 40, 80), "mg", 0.35, 28, 8, rxnorm=("4603",)),
            Drug("statin", ("C10AA05", "C10AA01"), "oral", (20, 40, 80), "mg", 0.6, 28, 11, rxnorm=("83367",)),
            Drug("antiplatelet", ("B01AC06", "B01AC04"), "oral", (75,), "mg", 0.4, 28, 9, rxnorm=("1191", "32968")),
        ),
        (
            Proc("pci", ("K75", "K75.1", "K49"), 0.15, 0.1),
            Proc("cabg", ("K40", "K41"), 0.05, 0.2),
            Proc("echo", ("U20.1",), 0.5, 0.05),
        ),
        (Score("nyha", ("local", "NYHA"), 1, 4, 0.8),),
        (
            Pair("mi_after_pci", "pci", "myocardial_infarction", 0.35, 30),
            Pair("hf_after_mi", "myocardial_infarction", "heart_failure", 0.3, 180),
        ),
        (
            Cond("cardiac_device", ("Z95.0", "Z95.8"), ("441509002",), 0.08, 1.0, 0.0, 0.0),
            Cond("heart_transplant", ("Z94.1",), ("32413006",), 0.01, 1.0, 0.0, 0.0),
        ),
    ),
    Theme(
        "oncology",
        0.10,
        False,
        (
            Cond("breast_cancer", ("C50", "C50.4", "C50.9"), ("254837009",), 0.35, 2.5),
            Cond("lung_cancer", ("C34", "C34.1", "C34.9"), ("363358000",), 0.2, 2.5),
            Cond("colorectal_cancer", ("C18", "C18.7", "C20"), ("363406005",), 0.2, 2.5),
            Cond("prostate_cancer", ("C61",), ("399068003",), 0.2, 2.5),
        ),
        (
            Lab("neutrophils", ("751-8",), "10*3/uL", 4.2, 1.4, 1.0, (2.0, 7.5), 3.0, 0.0),
            Lab("albumin", ("1751-7",), "g/dL", 3.8, 0.4, 0.2, (3.5, 5.0), 2.0, 0.0),
            Lab(
                "bilirubin",
                ("14631-6",),
                "umol/L",
                10,
                5,
                2,
                (0, 21),
                2.0,
                0.0,
                0,
                alt=("1975-2", "mg/dL", 1 / 17.1, 0, 0.05),
            ),
        ),
        (
            Drug("aromatase_inhibitor", ("L02BG04", "L02BG03"), "oral", (1, 2.5), "mg", 0.3, 28, 10, rxnorm=("72965",)),
            Drug("tamoxifen", ("L02BA01",), "oral", (20,), "mg", 0.15, 28, 10, rxnorm=("10324",)),
            Drug("chemotherapy", ("L01BC06", "L01XA02", "L01CD01"), "intravenous", (100, 175, 1000), "mg", 0.35, 21, 5),
            Drug("cdk46_inhibitor", ("L01EF02", "L01EF01"), "oral", (150, 125), "mg", 0.08, 28, 6),
        ),
        (
            Proc("mastectomy", ("B27",), 0.12, 0.15),
            Proc("wide_local_excision", ("B28.2",), 0.15, 0.2),
            Proc("radiotherapy", ("X65", "X67"), 0.3, 0.2),
        ),
        (Score("ecog", ("LOINC", "89247-1"), 0, 4, 1.5),),
        (Pair("radiotherapy_after_excision", "wide_local_excision", "radiotherapy", 0.5, 120),),
        (Cond("metastases", ("C77", "C78", "C79"), ("128462008",), 0.15, 1.5, 0.0, 0.0),),
    ),
    Theme(
        "respiratory",
        0.15,
        False,
        (
            Cond("asthma", ("J45", "J45.9"), ("195967001",), 0.5, 2.0),
            Cond("copd", ("J44", "J44.9"), ("13645005",), 0.45, 2.0),
            Cond("exacerbation", ("J44.1", "J46"), ("708038006", "195951007"), 0.4, 2.2, resolved=0.9),
            Cond("pneumonia", ("J18", "J18.9", "J15"), ("233604007",), 0.2, 1.6, resolved=0.9),
            Cond("bronchiectasis", ("J47",), ("12295008",), 0.08, 1.2),
        ),
        (
            Lab("eosinophils", ("711-2",), "10*3/uL", 0.28, 0.15, 0.07, (0.0, 0.5), 1.5, 0.0, 2),
            Lab("fev1_pct", ("20152-5",), "%", 68, 16, 5, (80, None), 1.0, 0.0, 0),
            Lab("fev1_fvc", ("19926-5",), "%", 66, 10, 3, (70, None), 0.8, 0.0, 0),
            Lab("spo2", ("59408-5",), "%", 95, 2, 1.5, (94, 100), 1.5, 0.0, 0),
        ),
        (
            Drug(
                "ics",
                ("R03BA02", "R03BA05", "R03AK06"),
                "inhaled",
                (200, 400, 500, 800, 1000),
                "ug/d",
                0.6,
                56,
                6,
                rxnorm=("1347",),
            ),
            Drug("saba", ("R03AC02",), "inhaled", (100, 200), "ug", 0.7, 28, 8, rxnorm=("435",)),
            Drug("lama", ("R03BB04", "R03BB06"), "inhaled", (18, 55), "ug", 0.35, 28, 8, rxnorm=("69120",)),
            Drug("oral_steroid", ("H02AB06",), "oral", (30, 40), "mg", 0.4, 5, 2.5, rxnorm=("8638",)),
            Drug("biologic", ("R03DX05", "R03DX09", "R03DX10"), "subcutaneous", (100, 300), "mg", 0.04, 28, 6),
        ),
        (Proc("bronchoscopy", ("E48", "E49"), 0.08, 0.2),),
        (Score("cat", ("local", "CAT"), 0, 40, 0.8), Score("acq6", ("local", "ACQ6"), 0, 6, 0.8)),
        (Pair("pneumonia_after_exacerbation", "exacerbation", "pneumonia", 0.2, 60),),
        (Cond("cystic_fibrosis", ("E84",), ("190905008",), 0.02, 1.0, 0.0, 0.0),),
    ),
    Theme(
        "diabetes",
        0.16,
        False,
        (
            Cond("t2dm", ("E11", "E11.9", "E11.6"), ("44054006",), 0.85, 2.5),
            Cond("t1dm", ("E10", "E10.9"), ("46635009",), 0.1, 2.0),
            Cond("retinopathy", ("H36.0", "E11.3"), ("4855003",), 0.15, 1.2),
            Cond("neuropathy", ("G63.2", "E11.4"), ("230572002",), 0.12, 1.2),
            Cond("obesity", ("E66", "E66.9"), ("414916001",), 0.45, 1.5),
        ),
        (
            HBA1C,
            Lab(
                "glucose",
                ("14749-6",),
                "mmol/L",
                8.5,
                2.5,
                1.8,
                (4.0, 7.8),
                2.0,
                0.3,
                1,
                alt=("2345-7", "mg/dL", 18.0, 0, 0.1),
            ),
            EGFR,
            Lab("ldl", ("22748-8",), "mmol/L", 2.6, 0.8, 0.3, (None, 3.0), 1.0, 0.0),
        ),
        (
            Drug(
                "metformin",
                ("A10BA02",),
                "oral",
                (500, 1000, 1500, 2000),
                "mg/d",
                0.75,
                56,
                8,
                dmd=("325278007",),
                rxnorm=("6809",),
            ),
            Drug(
                "insulin", ("A10AE04", "A10AB05"), "subcutaneous", (10, 20, 40), "[iU]", 0.25, 56, 6, rxnorm=("274783",)
            ),
            Drug("glp1", ("A10BJ06", "A10BJ02"), "subcutaneous", (0.5, 1.0), "mg", 0.2, 28, 6, rxnorm=("1991302",)),
            Drug("sglt2i", ("A10BK01", "A10BK03"), "oral", (10, 25), "mg", 0.25, 28, 8, rxnorm=("1488564",)),
            Drug("sulfonylurea", ("A10BB09",), "oral", (40, 80, 160), "mg", 0.2, 28, 8),
        ),
        (Proc("retinal_screening", ("C79.4",), 0.6, 0.1),),
        (),
        (Pair("neuropathy_after_retinopathy", "retinopathy", "neuropathy", 0.3, 365),),
        (Cond("pancreatitis", ("K85", "K86.1"), ("75694006",), 0.03, 1.0, 0.0, 0.0),),
    ),
)

THEMES: tuple[Theme, ...] = _FIRST + SECOND

_THEME_PREFIXES = {c for t in THEMES for cs in (*t.conditions, *t.exclusions) for c in cs.icd10}


def background_codes() -> dict[str, list[str]]:
    """Codes that no study uses, by system: ~1,300 ICD-10 codes of chapters and categories outside the themes,
    ~1,500 SNOMED-shaped finding codes (9 digits, a ``1`` partition-like prefix no theme code has) and ~300
    LOINC-shaped test codes in a range the study pools do not use."""
    icd = []
    for letter in "HKLMRSTZ":
        for cat in range(100):
            code = f"{letter}{cat:02d}"
            if any(code.startswith(p[:3]) for p in _THEME_PREFIXES):
                continue
            icd.append(code)
            icd.extend(f"{code}.{d}" for d in (0, 1, 8, 9))
    snomed = [f"1{n:08d}" for n in range(10_000, 10_000 + 1500 * 37, 37)]
    loinc = [f"{n}-{n * 7 % 10}" for n in range(70_000, 70_300)]
    return {"ICD10": icd, "SNOMED": snomed, "LOINC": loinc}
