"""Units: the new families (ratio <-> %, urine ACR, activity, counts, small mass concentrations), annotation units
and the LOINC unit table behind the load-time "impossible unit" check."""

from __future__ import annotations

import pytest

from screener.rules.units import (
    conversion,
    conversions_to,
    is_annotation,
    is_known_unit,
    loinc_table,
    loinc_units,
    normalise_unit,
)


@pytest.mark.parametrize(
    ("src", "dst", "value", "expected"),
    [
        ("ratio", "%", 0.7, 70.0),
        ("%", "ratio", 65.0, 0.65),
        ("{ratio}", "%", 0.5, 50.0),
        ("mg/mmol", "mg/g", 3.0, 26.52),  # 1 mg/mmol = 8.84 mg/g
        ("mg/g", "mg/mmol", 30.0, 3.394),
        ("mg/mmol{creat}", "mg/g", 1.0, 8.84),
        ("ug/mg", "mg/mmol", 8.84, 1.0),
        ("IU/L", "U/L", 40.0, 40.0),
        ("uIU/mL", "mIU/L", 2.5, 2.5),
        ("mIU/mL", "IU/L", 30.0, 30.0),
        ("10^3/uL", "10*9/L", 0.3, 0.3),
        ("cells/uL", "10*9/L", 300.0, 0.3),
        ("pg/mL", "ng/L", 125.0, 125.0),
        ("ug/L", "ng/mL", 14.0, 14.0),
        ("mL", "L", 2100.0, 2.1),
    ],
)
def test_family_conversions(src, dst, value, expected):
    a, b = conversion(src, dst)
    assert value * a + b == pytest.approx(expected, rel=1e-3)


def test_analyte_conversions_of_the_new_analytes():
    a, b = conversion("ng/mL", "nmol/L", "vitamin_d")  # 25-OH vitamin D: 1 ng/mL = 2.496 nmol/L
    assert 20 * a + b == pytest.approx(49.92, rel=1e-3)
    a, b = conversion("mg/dL", "umol/L", "bilirubin")  # bilirubin: 1 mg/dL = 17.1 umol/L
    assert a == pytest.approx(17.1, rel=1e-2)


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ("mg/mmol", "mmol/L"),  # ACR is not a concentration
        ("%", "mg/g"),
        ("ratio", "mmol/mol"),  # no chaining through % to the HbA1c formula
        ("{score}", "{pack-years}"),  # annotations convert only to themselves
        ("{score}", "%"),
        ("{beats}/min", "/min"),
        ("/min", "bpm"),
        ("U/L", "mmol/L"),
        ("10*9/L", "g/L"),
    ],
)
def test_impossible_conversions(src, dst):
    assert conversion(src, dst) is None
    assert conversion(dst, src) is None


def test_annotations():
    assert is_annotation("{pack-years}") and is_annotation("{score}") and is_annotation("score")
    assert is_annotation("{INR}") and is_annotation("{Anything-else}")
    assert not is_annotation("{ratio}")  # a real unit in braces is that unit
    assert not is_annotation("mg/dL") and not is_annotation(None) and not is_annotation("{}")
    assert is_known_unit("{pack-years}") and is_known_unit("{whatever}")
    assert not is_known_unit("furlongs")
    # Spellings of one annotation are one unit; a bare value counts (UCUM: an annotation is the unit 1).
    assert conversion("{Score}", "score") == (1.0, 0.0)
    assert conversion(None, "{score}") == (1.0, 0.0)
    assert conversion("1", "{pack-years}") == (1.0, 0.0)
    assert conversion("{beats}/min", "beats/min") == (1.0, 0.0)
    assert normalise_unit("{beats}/min") == normalise_unit("bpm") == "bpm"
    assert conversions_to("{pack-years}") == {"": (1.0, 0.0), "pack-years": (1.0, 0.0)}
    assert conversions_to("{eq-5d}") == {"": (1.0, 0.0), "eq-5d": (1.0, 0.0)}
    assert "" not in conversions_to("mmol/L")  # a real unit never takes a bare number


def test_loinc_table_covers_the_common_codes():
    table = loinc_table()
    assert len(table) >= 50
    for code in ["62238-1", "2160-0", "4548-4", "2345-7", "1742-6", "1920-8", "1975-2", "2823-3", "2951-2",
                 "718-7", "777-3", "6690-2", "751-8", "1988-5", "30934-4", "33762-6", "67151-1", "2093-3",
                 "13457-7", "2085-9", "2571-8", "14958-3", "20150-9", "19926-5", "39156-5", "29463-7", "8302-2",
                 "8480-6", "8462-4", "8867-4", "70182-1", "711-2", "6301-6", "1751-7", "3016-3", "2276-4",
                 "1989-3"]:  # fmt: skip
        assert code in table, code
    assert table["14958-3"].unit == "mg/mmol" and table["2160-0"].analyte == "creatinine"


@pytest.mark.parametrize(
    ("code", "allowed", "impossible"),
    [
        ("62238-1", ["mL/min/1.73m2", "ml/min/1.73 m2"], ["mmol/L", "mL/min", "%"]),
        ("2160-0", ["umol/L", "mg/dL", "µmol/l", "mmol/L"], ["mmol/mol", "U/L", "%"]),
        ("4548-4", ["%", "mmol/mol"], ["mmol/L", "mg/dL"]),
        ("14958-3", ["mg/mmol", "mg/g", "mg/mmol{creat}"], ["mmol/L", "mg/L", "%"]),
        ("9318-7", ["mg/g", "mg/mmol"], ["g/L"]),
        ("19926-5", ["%", "ratio", "{ratio}"], ["mmol/mol", "L"]),  # no HbA1c formula for FEV1/FVC
        ("2823-3", ["mmol/L", "mmol/l"], ["mg/dL", "U/L"]),  # no analyte: no mass <-> molar for potassium
        ("2345-7", ["mmol/L", "mg/dL"], ["umol/mol", "%"]),
        ("1989-3", ["nmol/L", "ng/mL", "ug/L"], ["IU/L"]),
        ("711-2", ["10*9/L", "10^9/L", "cells/uL", "10*3/uL"], ["%", "g/L"]),
        ("8867-4", ["bpm", "{beats}/min", "/min"], ["{score}", "mmHg"]),
        ("8480-6", ["mm[Hg]", "mmHg"], ["kPa", "mmol/L"]),
        ("70182-1", ["{score}", "score"], ["%", "{pack-years}"]),
        ("6301-6", ["{INR}"], ["s", "%"]),
        ("3016-3", ["mIU/L", "mU/L", "uIU/mL"], ["pmol/L"]),
        ("33762-6", ["pg/mL", "ng/L"], ["pmol/L", "U/L"]),  # NT-proBNP molar units need a molar mass: left out
    ],
)
def test_loinc_units(code, allowed, impossible):
    units = loinc_units(code)
    assert units is not None
    for unit in allowed:
        assert normalise_unit(unit) in units, unit
    for unit in impossible:
        assert normalise_unit(unit) not in units, unit


def test_loinc_units_of_an_unlisted_code_is_none():
    assert loinc_units("99999-9") is None
    assert loinc_units(" 62238-1 ") == loinc_units("62238-1")  # stray spaces from a YAML list


def test_loinc_units_are_normalised_spellings_and_convert():
    for code, row in loinc_table().items():
        units = loinc_units(code)
        assert units, code
        for unit in units:
            assert unit == normalise_unit(unit) or unit == "", (code, unit)
            assert any(conversion(unit or None, u, row.analyte) for u in (row.unit, *row.others)), (code, unit)
