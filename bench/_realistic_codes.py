"""The code pools of the realistic workload: ten clinical themes, each with its conditions, laboratory tests,
drugs, procedures, scores and the event pairs its studies relate (``after``/``before``).

Codes are real where they are well known (ICD-10, ATC, OPCS-4, LOINC with the canonical units of
``screener/rules/data/loinc_units.csv``, SNOMED CT concepts, RxNorm ingredients); dm+d identifiers are
dm+d-shaped product ids. Both the population (:mod:`bench._realistic_population`) and the studies
(:mod:`bench._realistic_studies`) read these tables, so every study code can occur in the population with the
prevalence given here (per patient of the theme), and the population adds a background of codes that no study
uses (:func:`background_codes`).

The numbers are a hospital caseload, not a general population: themes are enriched so that each of the hundred
studies finds eligible, possible and ineligible patients among a few thousand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "QUALIFIERS",
    "SMOKING",
    "THEMES",
    "Cond",
    "Drug",
    "Lab",
    "Pair",
    "Proc",
    "Score",
    "Theme",
    "background_codes",
]


@dataclass(frozen=True)
class Cond:
    """A diagnosis: ``p`` of the theme's patients have it; ``n`` codings each on average (repeat codings)."""

    name: str
    icd10: tuple[str, ...]
    snomed: tuple[str, ...] = ()
    p: float = 0.3
    n: float = 1.5
    resolved: float = 0.1  # share recorded as resolved (with an end)
    severe: float = 0.25  # share with a severity qualifier (severe/moderate/mild)


@dataclass(frozen=True)
class Lab:
    """A laboratory test: values ~ normal(mean + between-patient sd, within sd), ``per_year`` results a year for
    a theme patient (everyone gets ``base_year`` a year); ``alt`` = (LOINC code, unit, a, b): that share of
    results written ``a * value + b`` in another convertible unit."""

    name: str
    loinc: tuple[str, ...]
    unit: str
    mean: float
    sd_between: float
    sd_within: float
    ref: tuple[float | None, float | None]
    per_year: float = 2.0
    base_year: float = 0.0
    decimals: int = 1
    alt: tuple[str, str, float, float, float] | None = None  # code, unit, a, b, share
    log: bool = False  # lognormal (skewed: ACR, NT-proBNP, CRP, troponin): mean and sds are of log(value)
    system: str = "LOINC"  # "local" for a local code (DAS28)


@dataclass(frozen=True)
class Drug:
    """A repeat prescription: ``p`` of the theme's patients, issues of ``days`` days, doses from ``doses``."""

    name: str
    atc: tuple[str, ...]
    route: str
    doses: tuple[float, ...]
    dose_unit: str
    p: float = 0.3
    days: int = 28
    issues: float = 6.0  # issues per treated patient
    dmd: tuple[str, ...] = ()
    rxnorm: tuple[str, ...] = ()


@dataclass(frozen=True)
class Proc:
    name: str
    opcs4: tuple[str, ...]
    p: float = 0.1
    planned: float = 0.1  # share of these patients with one planned in the next 60 days


@dataclass(frozen=True)
class Score:
    """A coded observation with a score value (unit ``{score}``), uniform integers in ``[lo, hi]``."""

    name: str
    code: tuple[str, str]  # (system, code)
    lo: int
    hi: int
    per_year: float = 1.0


@dataclass(frozen=True)
class Pair:
    """An index event and the event that follows it ``0..lag_days`` later (for ``after``/``before``)."""

    name: str
    first: str  # condition or procedure name in the theme
    then: str
    p: float
    lag_days: int


@dataclass(frozen=True)
class Theme:
    name: str
    prevalence: float  # share of eligible-aged patients in the theme
    children: bool  # paediatric theme: only under-18s
    conditions: tuple[Cond, ...]
    labs: tuple[Lab, ...]
    drugs: tuple[Drug, ...]
    procs: tuple[Proc, ...] = ()
    scores: tuple[Score, ...] = ()
    pairs: tuple[Pair, ...] = ()
    exclusions: tuple[Cond, ...] = field(default=())  # rarer conditions studies exclude on


#: severity and laterality qualifiers (SNOMED), as ``SYSTEM|code``
QUALIFIERS = {"severe": "24484000", "moderate": "6736007", "mild": "255604002"}
#: coded smoking status: smoker, ex-smoker, never smoked (value_code of LOINC 72166-2)
SMOKING = ("77176002", "8517006", "266919005")

_U_E = Lab("sodium", ("2951-2",), "mmol/L", 139, 2.5, 1.5, (133, 146), 0.0, 1.2, 0)
_FBC = Lab("haemoglobin", ("718-7",), "g/dL", 13.2, 1.3, 0.6, (11.5, 16.5), 0.0, 1.2)
#: routine panels that everyone has, whatever their themes
ROUTINE = (
    _U_E,
    Lab("potassium", ("2823-3",), "mmol/L", 4.4, 0.35, 0.3, (3.5, 5.3), 0.0, 1.2),
    _FBC,
    Lab("platelets", ("777-3",), "10*3/uL", 260, 60, 25, (150, 400), 0.0, 1.1, 0),
    Lab("wbc", ("6690-2",), "10*3/uL", 7.2, 1.6, 1.0, (4.0, 11.0), 0.0, 1.1),
    Lab("crp", ("1988-5",), "mg/L", 1.6, 0.9, 0.6, (0, 5), 0.0, 0.8, 0, log=True),
    Lab("cholesterol", ("14647-2",), "mmol/L", 5.0, 0.8, 0.3, (None, 5.0), 0.0, 0.4),
    Lab("tsh", ("3016-3",), "m[IU]/L", 2.0, 0.9, 0.4, (0.4, 4.0), 0.0, 0.3, 2),
    Lab("bmi", ("39156-5",), "kg/m2", 27.5, 5.0, 0.8, (18.5, 25), 0.0, 0.6),
    Lab("systolic_bp", ("8480-6",), "mm[Hg]", 132, 14, 9, (90, 140), 0.0, 1.0, 0),
)

_EGFR = Lab("egfr", ("62238-1", "33914-3"), "mL/min/1.73m2", 52, 20, 5, (90, None), 3.0, 0.6, 0)
_CREAT = Lab(
    "creatinine", ("14682-9",), "umol/L", 135, 45, 12, (59, 104), 3.0, 0.6, 0, alt=("2160-0", "mg/dL", 1 / 88.4, 0, 0.1)
)
_HBA1C = Lab(
    "hba1c", ("59261-8",), "mmol/mol", 58, 12, 5, (20, 42), 2.5, 0.2, 0, alt=("4548-4", "%", 1 / 10.929, 2.15, 0.15)
)
_ALT = Lab("alt", ("1742-6",), "U/L", 3.3, 0.4, 0.25, (0, 40), 1.0, 0.8, 0, log=True)
_NTPROBNP = Lab("nt_probnp", ("33762-6",), "pg/mL", 6.2, 1.1, 0.4, (0, 400), 1.5, 0.0, 0, log=True)

THEMES: tuple[Theme, ...] = (
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
            _EGFR,
            _CREAT,
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
            _NTPROBNP,
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
            _HBA1C,
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
            _EGFR,
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
    Theme(
        "stroke",
        0.08,
        False,
        (
            Cond("ischaemic_stroke", ("I63", "I63.9"), ("422504002", "230690007"), 0.7, 1.5),
            Cond("tia", ("G45", "G45.9"), ("266257000",), 0.35, 1.6, resolved=0.9),
            Cond("ich", ("I61", "I61.9"), ("274100004",), 0.12, 1.2),
            Cond("dysphagia", ("R13",), ("40739000",), 0.2, 1.2, resolved=0.5),
        ),
        (
            Lab("nihss", ("70182-1",), "{score}", 9, 6, 2, (None, None), 1.5, 0.0, 0),
            Lab("glucose", ("14749-6",), "mmol/L", 7.0, 1.8, 1.0, (4.0, 7.8), 1.0, 0.0),
            Lab("inr", ("6301-6",), "{INR}", 1.2, 0.5, 0.2, (0.8, 1.2), 1.5, 0.0, 1),
        ),
        (
            Drug(
                "anticoagulant",
                ("B01AF02", "B01AF01", "B01AA03"),
                "oral",
                (5, 10, 20),
                "mg",
                0.35,
                28,
                8,
                rxnorm=("1364430",),
            ),
            Drug("antiplatelet", ("B01AC06", "B01AC04"), "oral", (75, 300), "mg", 0.6, 28, 9),
            Drug("thrombolysis", ("B01AD02", "B01AD11"), "intravenous", (50, 90), "mg", 0.1, 1, 1.0),
        ),
        (Proc("thrombectomy", ("L71.3",), 0.08, 0.0), Proc("carotid_endarterectomy", ("L29.5",), 0.05, 0.3)),
        (Score("mrs", ("local", "mRS"), 0, 5, 1.0),),
        (
            Pair("stroke_after_tia", "tia", "ischaemic_stroke", 0.3, 90),
            Pair("dysphagia_after_stroke", "ischaemic_stroke", "dysphagia", 0.3, 14),
        ),
        (),
    ),
    Theme(
        "mental_health",
        0.14,
        False,
        (
            Cond("depression", ("F32", "F33", "F32.1"), ("35489007",), 0.6, 2.0),
            Cond("anxiety", ("F41", "F41.1"), ("197480006",), 0.45, 1.5),
            Cond("schizophrenia", ("F20", "F20.0"), ("58214004",), 0.08, 2.0),
            Cond("bipolar", ("F31",), ("13746004",), 0.08, 2.0),
            Cond("self_harm", ("X78", "R45.8"), ("248062006",), 0.1, 1.8, resolved=0.8),
        ),
        (
            Lab("phq9", ("44261-6",), "{score}", 12, 5, 3, (None, None), 2.0, 0.0, 0),
            Lab("lithium_level", ("14334-7",), "mmol/L", 0.7, 0.2, 0.1, (0.4, 1.0), 0.5, 0.0, 2),
        ),
        (
            Drug(
                "ssri",
                ("N06AB06", "N06AB04", "N06AB10"),
                "oral",
                (20, 50, 100),
                "mg",
                0.55,
                28,
                9,
                rxnorm=("36437", "4493"),
            ),
            Drug(
                "antipsychotic",
                ("N05AH04", "N05AH03", "N05AX08"),
                "oral",
                (5, 10, 200),
                "mg",
                0.15,
                28,
                10,
                rxnorm=("51272", "61381"),
            ),
            Drug("lithium", ("N05AN01",), "oral", (400, 800), "mg", 0.05, 28, 10, rxnorm=("6448",)),
        ),
        (),
        (Score("gad7", ("local", "GAD7"), 0, 21, 1.5),),
        (Pair("self_harm_after_depression", "depression", "self_harm", 0.15, 180),),
        (Cond("dementia", ("F03", "G30"), ("52448006",), 0.05, 1.0, 0.0, 0.0),),
    ),
    Theme(
        "paediatrics",
        0.45,
        True,
        (
            Cond("bronchiolitis", ("J21", "J21.0"), ("4120002",), 0.2, 1.2, resolved=0.9),
            Cond("childhood_asthma", ("J45", "J45.0"), ("233678006",), 0.3, 1.5),
            Cond("wheeze", ("R06.2",), ("56018004",), 0.3, 2.0, resolved=0.7),
            Cond("eczema", ("L20", "L20.9"), ("24079001",), 0.25, 1.5),
            Cond("otitis_media", ("H66", "H66.9"), ("65363002",), 0.25, 2.0, resolved=0.9),
        ),
        (
            Lab("eosinophils", ("711-2",), "10*3/uL", 0.35, 0.18, 0.07, (0.0, 0.5), 0.8, 0.0, 2),
            Lab("spo2", ("59408-5",), "%", 96, 2, 1.5, (94, 100), 1.0, 0.0, 0),
            Lab("weight", ("29463-7",), "kg", 22, 8, 0.5, (None, None), 1.0, 0.0),
        ),
        (
            Drug("ics", ("R03BA02", "R03BA05"), "inhaled", (100, 200, 400), "ug/d", 0.3, 56, 5),
            Drug("saba", ("R03AC02",), "inhaled", (100,), "ug", 0.4, 28, 5),
            Drug("emollient", ("D02AX",), "topical", (500,), "g", 0.2, 28, 4),
            Drug("antibiotic", ("J01CA04", "J01CR02"), "oral", (125, 250), "mg", 0.4, 7, 2),
        ),
        (Proc("grommets", ("D15.1",), 0.05, 0.3),),
        (),
        (Pair("wheeze_after_bronchiolitis", "bronchiolitis", "wheeze", 0.35, 365),),
        (Cond("congenital_heart", ("Q20", "Q21"), ("13213009",), 0.03, 1.0, 0.0, 0.0),),
    ),
    Theme(
        "hepatology",
        0.08,
        False,
        (
            Cond("nafld", ("K76.0", "K75.8"), ("197321007",), 0.6, 1.5),
            Cond("cirrhosis", ("K74", "K74.6", "K70.3"), ("19943007",), 0.25, 2.0),
            Cond("hepatitis_c", ("B18.2",), ("128302006",), 0.1, 1.5),
            Cond("alcohol_misuse", ("F10", "F10.1"), ("7200002",), 0.3, 1.5),
        ),
        (
            _ALT,
            Lab("ast", ("1920-8",), "U/L", 3.3, 0.5, 0.3, (0, 40), 1.5, 0.0, 0, log=True),
            Lab("platelets", ("777-3",), "10*3/uL", 200, 70, 25, (150, 400), 1.5, 0.0, 0),
            Lab("bilirubin", ("14631-6",), "umol/L", 16, 10, 3, (0, 21), 1.5, 0.0, 0),
            Lab("albumin", ("1751-7",), "g/dL", 3.7, 0.5, 0.2, (3.5, 5.0), 1.0, 0.0),
        ),
        (
            Drug("ppi", ("A02BC01", "A02BC05"), "oral", (20, 40), "mg", 0.4, 28, 8),
            Drug("lactulose", ("A06AD11",), "oral", (15, 30), "mL", 0.15, 28, 6),
            Drug("daa", ("J05AP55",), "oral", (1,), "{tablet}", 0.05, 28, 3),
        ),
        (Proc("liver_biopsy", ("J13.1",), 0.1, 0.15), Proc("endoscopy", ("G45",), 0.3, 0.1)),
        (),
        (Pair("cirrhosis_after_biopsy", "liver_biopsy", "cirrhosis", 0.25, 90),),
        (Cond("liver_transplant", ("Z94.4",), ("18027006",), 0.02, 1.0, 0.0, 0.0),),
    ),
    Theme(
        "rheumatology",
        0.08,
        False,
        (
            Cond("rheumatoid_arthritis", ("M05", "M06", "M06.9"), ("69896004",), 0.45, 2.0),
            Cond("psoriatic_arthritis", ("M07", "L40.5"), ("33339001",), 0.15, 2.0),
            Cond("gout", ("M10", "M10.9"), ("90560007",), 0.25, 1.8, resolved=0.5),
            Cond("osteoporosis", ("M81", "M80"), ("64859006",), 0.3, 1.5),
            Cond("fragility_fracture", ("S72.0", "S22.0"), ("263204007",), 0.1, 1.0, resolved=0.8),
        ),
        (
            Lab("esr", ("4537-7",), "mm/h", 22, 12, 5, (0, 20), 2.0, 0.0, 0),
            Lab("urate", ("14933-6",), "umol/L", 380, 80, 30, (200, 430), 1.0, 0.0, 0),
            Lab("das28", ("DAS28",), "{score}", 4.0, 1.2, 0.5, (None, None), 1.5, 0.0, 1, system="local"),
        ),
        (
            Drug("methotrexate", ("L04AX03",), "oral", (10, 15, 20, 25), "mg", 0.35, 28, 10, rxnorm=("6851",)),
            Drug("anti_tnf", ("L04AB04", "L04AB01"), "subcutaneous", (40, 50), "mg", 0.12, 28, 10, rxnorm=("327361",)),
            Drug("allopurinol", ("M04AA01",), "oral", (100, 300), "mg", 0.2, 28, 10),
            Drug("bisphosphonate", ("M05BA04",), "oral", (70,), "mg", 0.25, 28, 8),
        ),
        (Proc("joint_injection", ("W90.3",), 0.2, 0.1), Proc("hip_replacement", ("W37", "W38"), 0.08, 0.3)),
        (),
        (Pair("fracture_after_osteoporosis", "osteoporosis", "fragility_fracture", 0.2, 365),),
        (Cond("tuberculosis", ("A15", "A16"), ("56717001",), 0.02, 1.0, 0.0, 0.0),),
    ),
)

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
