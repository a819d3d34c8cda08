"""Themes six to ten of the realistic workload (see :mod:`bench._realistic_themes`)."""

from __future__ import annotations

from bench._realistic_codes import ALT, Cond, Drug, Lab, Pair, Proc, Score, Theme

__all__ = ["SECOND"]

SECOND: tuple[Theme, ...] = (
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
            ALT,
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
