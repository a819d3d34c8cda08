"""Render canonical events as HL7 v2.5 messages and FHIR R4 Bundles (what a hospital's feeds would send).

HL7 v2.5 (``to_hl7v2``: one message per event, segments separated by ``\\r``, UTF-8, MSH-18 ``UNICODE UTF-8``):

- ``person``       ADT^A04 (register a patient): MSH, EVN, PID, PV1;
- ``condition``    ADT^A08 (update patient information): MSH, EVN, PID, PV1, DG1 (DG1-3 ``code^text^I10`` or
                   ``^SCT``, DG1-5 diagnosis time, DG1-6 ``F``);
- ``measurement``, ``observation`` with a number   ORU^R01: MSH, PID, PV1, OBR, OBX (OBX-2 ``NM``, OBX-3
                   ``code^text^LN``, OBX-5 value, OBX-6 units as ``unit^unit^UCUM`` (or just ``unit`` when the
                   spelling is not UCUM, e.g. ``mL/min/1.73m2``), OBX-11 ``F``, OBX-14 observation time);
- ``death``        ADT^A08 with PID-29 (death time) and PID-30 ``Y``;
- an ``entered-in-error`` result that ``corrects`` an earlier one: the same ORU^R01 with the original's order
                   numbers (OBR-2/3) and OBX-11 ``W`` (post original as wrong);
- drugs, procedures, visits and consent are not sent over HL7 v2 here (hospitals send those as pharmacy and
  theatre messages or FHIR); they are left out of the list.

PID: PID-3 ``<hospital number>^^^RXX^MR~<NHS number>^^^NHS^NH`` (the NHS number only when the event carries
one), PID-5 a synthetic name, PID-7 birth date, PID-8 sex, PID-11 ``^^^^<postcode district>^GBR``, PID-22 the
NHS ethnic category letter ``J^Pakistani^NHSEC``. PV1: PV1-2 patient class (``I`` in hospital, ``O`` elsewhere),
PV1-3 ``<point of care>^^^<site>`` where the point of care says the setting (``WARD``, ``CLINIC`` for community
with a ``COMM-`` site, ``SURGERY`` for primary care with a ``GP-`` site, ``VW`` for home with a ``HOME-``
site), PV1-19 a visit number, PV1-44 the event time. Timestamps carry an explicit ``+0000`` offset.

FHIR R4 (``to_fhir``: a ``transaction`` Bundle of ``PUT`` entries, or a ``collection``): Patient (hospital
number with identifier type ``MR``, NHS number under ``https://fhir.nhs.uk/Id/nhs-number``, UK Core ethnic
category extension, IMD decile and LSOA extensions), Condition, Observation (``valueQuantity`` with the unit as
sent and its UCUM code), MedicationStatement (ATC or dm+d), Procedure (OPCS-4) and Encounter (visits). Every
resource carries the care setting and site as ``meta.tag`` codings (systems below). Resource ids are the
event ids (the Patient id is the hospital number); references are ``Patient/<hospital number>``. An
``entered-in-error`` event that ``corrects`` an earlier one is that resource again (same id) with status
``entered-in-error`` (Condition: verificationStatus); a transaction then holds two entries for one URL, so
split it when a server insists. ``consent`` and ``death`` events are not rendered as FHIR.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from screener.events import Event

__all__ = [
    "CODE_SYSTEM_URIS",
    "ETHNIC_CATEGORY_CODESYSTEM",
    "ETHNIC_CATEGORY_EXTENSION",
    "HOSPITAL_NUMBER_SYSTEM",
    "IMD_DECILE_EXTENSION",
    "LSOA_EXTENSION",
    "NHS_NUMBER_SYSTEM",
    "SETTING_TAG_SYSTEM",
    "SITE_TAG_SYSTEM",
    "to_fhir",
    "to_hl7v2",
]

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
HOSPITAL_NUMBER_SYSTEM = "https://screener.invalid/fhir/Id/hospital-number"
ETHNIC_CATEGORY_EXTENSION = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-EthnicCategory"
ETHNIC_CATEGORY_CODESYSTEM = "https://fhir.hl7.org.uk/CodeSystem/UKCore-EthnicCategoryEngland"
IMD_DECILE_EXTENSION = "https://screener.invalid/fhir/StructureDefinition/imd-decile"
LSOA_EXTENSION = "https://screener.invalid/fhir/StructureDefinition/lsoa"
SETTING_TAG_SYSTEM = "https://screener.invalid/fhir/CodeSystem/care-setting"
SITE_TAG_SYSTEM = "https://screener.invalid/fhir/CodeSystem/site"
UCUM = "http://unitsofmeasure.org"
#: canonical code system -> FHIR system URI
CODE_SYSTEM_URIS: dict[str, str] = {
    "ICD10": "http://hl7.org/fhir/sid/icd-10",
    "SNOMED": "http://snomed.info/sct",
    "LOINC": "http://loinc.org",
    "ATC": "http://www.whocc.no/atc",
    "DMD": "https://dmd.nhs.uk",
    "OPCS4": "https://digital.nhs.uk/opcs-4",
    "local": "https://screener.invalid/fhir/CodeSystem/local",
}
_HL7_CODING = {
    "ICD10": "I10",
    "SNOMED": "SCT",
    "LOINC": "LN",
    "OPCS4": "OPCS4",
    "ATC": "ATC",
    "DMD": "DMD",
    "local": "L",
}
#: the unit spellings screener uses -> UCUM code (None: not a UCUM expression)
_UCUM: dict[str, str | None] = {
    "%": "%",
    "mmol/mol": "mmol/mol",
    "mmol/L": "mmol/L",
    "umol/L": "umol/L",
    "mg/dL": "mg/dL",
    "g/L": "g/L",
    "U/L": "U/L",
    "pg/mL": "pg/mL",
    "mg/mmol": "mg/mmol",
    "10*9/L": "10*9/L",
    "kg/m2": "kg/m2",
    "mm[Hg]": "mm[Hg]",
    "{score}": "{score}",
    "mL/min": "mL/min",
    "mL/min/1.73m2": "mL/min/{1.73_m2}",
}
_ETHNIC_TEXT = {
    "A": "British",
    "B": "Irish",
    "C": "Any other White background",
    "D": "White and Black Caribbean",
    "E": "White and Black African",
    "F": "White and Asian",
    "G": "Any other mixed background",
    "H": "Indian",
    "J": "Pakistani",
    "K": "Bangladeshi",
    "L": "Any other Asian background",
    "M": "Caribbean",
    "N": "African",
    "P": "Any other Black background",
    "R": "Chinese",
    "S": "Any other ethnic group",
    "Z": "Not stated",
}
_TEXT = {
    "E11.9": "Type 2 diabetes mellitus without complications",
    "E11.65": "Type 2 diabetes mellitus with hyperglycaemia",
    "E11.2": "Type 2 diabetes mellitus with renal complications",
    "44054006": "Diabetes mellitus type 2",
    "E10.9": "Type 1 diabetes mellitus without complications",
    "46635009": "Diabetes mellitus type 1",
    "N18.3": "Chronic kidney disease, stage 3",
    "N18.4": "Chronic kidney disease, stage 4",
    "N18.5": "Chronic kidney disease, stage 5",
    "Z99.2": "Dependence on renal dialysis",
    "I10": "Essential (primary) hypertension",
    "38341003": "Hypertensive disorder",
    "C50.9": "Malignant neoplasm of breast, unspecified",
    "C50.4": "Malignant neoplasm of upper-outer quadrant of breast",
    "C50.8": "Overlapping malignant lesion of breast",
    "254837009": "Malignant neoplasm of breast",
    "C78.0": "Secondary malignant neoplasm of lung",
    "C79.5": "Secondary malignant neoplasm of bone",
    "Z92.3": "Personal history of irradiation",
    "J45.9": "Asthma, unspecified",
    "J45.0": "Predominantly allergic asthma",
    "195967001": "Asthma",
    "J46": "Status asthmaticus",
    "E84.0": "Cystic fibrosis with pulmonary manifestations",
    "I50.0": "Congestive heart failure",
    "I50.9": "Heart failure, unspecified",
    "I50.1": "Left ventricular failure",
    "I11.0": "Hypertensive heart disease with (congestive) heart failure",
    "84114007": "Heart failure",
    "56675007": "Acute heart failure",
    "I63.9": "Cerebral infarction, unspecified",
    "I63.5": "Cerebral infarction due to unspecified occlusion or stenosis of cerebral arteries",
    "I63.3": "Cerebral infarction due to thrombosis of cerebral arteries",
    "422504002": "Ischemic stroke",
    "I61.9": "Intracerebral haemorrhage, unspecified",
    "N80.0": "Endometriosis of uterus",
    "N80.1": "Endometriosis of ovary",
    "N80.3": "Endometriosis of pelvic peritoneum",
    "N80.9": "Endometriosis, unspecified",
    "129103003": "Endometriosis",
    "Z34.0": "Supervision of normal first pregnancy",
    "Z33.1": "Pregnant state, incidental",
    "77386006": "Pregnancy",
    "N95.1": "Menopausal and female climacteric states",
    "198436008": "Menopausal syndrome",
    "59261-8": "Hemoglobin A1c/Hemoglobin.total in Blood by IFCC protocol",
    "4548-4": "Hemoglobin A1c/Hemoglobin.total in Blood",
    "62238-1": "eGFR (CKD-EPI)",
    "33914-3": "eGFR (MDRD)",
    "98979-8": "eGFR (CKD-EPI 2021)",
    "14682-9": "Creatinine [Moles/volume] in Serum or Plasma",
    "2160-0": "Creatinine [Mass/volume] in Serum or Plasma",
    "14958-3": "Microalbumin/Creatinine [Molar ratio] in Urine",
    "718-7": "Hemoglobin [Mass/volume] in Blood",
    "2951-2": "Sodium [Moles/volume] in Serum or Plasma",
    "2823-3": "Potassium [Moles/volume] in Serum or Plasma",
    "1742-6": "Alanine aminotransferase",
    "8480-6": "Systolic blood pressure",
    "39156-5": "Body mass index",
    "89247-1": "ECOG performance status score",
    "26449-9": "Eosinophils [#/volume] in Blood",
    "711-2": "Eosinophils [#/volume] in Blood by Automated count",
    "33762-6": "NT-proBNP",
    "10230-1": "Left ventricular ejection fraction",
    "70182-1": "NIH stroke scale total score",
    "14749-6": "Glucose [Moles/volume] in Serum or Plasma",
    "2345-7": "Glucose [Mass/volume] in Serum or Plasma",
    "72514-3": "Pain severity 0-10 numeric rating",
    "B28.2": "Partial excision of breast",
    "B28.3": "Wide local excision of breast",
    "B27.4": "Total mastectomy",
    "K59.1": "Implantation of cardioverter defibrillator",
    "K61.1": "Implantation of dual chamber cardiac pacemaker",
    "Q07.4": "Total abdominal hysterectomy",
}
_VITAL_SIGNS = frozenset({"8480-6", "39156-5"})
_SEX_FHIR = {"F": "female", "M": "male", "O": "other", "U": "unknown"}
_POINT_OF_CARE = {"hospital": "WARD", "community": "CLINIC", "primary-care": "SURGERY", "home": "VW"}
_DEFAULT_SITE = {"hospital": "RXX01", "community": "COMM-RXX-01", "primary-care": "GP-B83001", "home": "HOME-RXX-VW"}
_ENCOUNTER_CLASS = {
    "hospital": ("IMP", "inpatient encounter"),
    "community": ("AMB", "ambulatory"),
    "primary-care": ("AMB", "ambulatory"),
    "home": ("HH", "home health"),
}
_GIVEN = {
    ("white", "F"): ("Olivia", "Amelia", "Siân", "Emily", "Zoë", "Grace", "Chloé", "Margaret"),
    ("white", "M"): ("Oliver", "George", "Harry", "Jack", "Seán", "Thomas", "William", "Dáithí"),
    ("asian", "F"): ("Aisha", "Fatima", "Maryam", "Priya", "Zainab", "Ayesha", "Sana", "Anjali"),
    ("asian", "M"): ("Muhammad", "Ali", "Ibrahim", "Arjun", "Hamza", "Yusuf", "Imran", "Ravi"),
    ("black", "F"): ("Amara", "Chioma", "Abena", "Keisha", "Ngozi", "Adaeze"),
    ("black", "M"): ("Kwame", "Chinedu", "Tunde", "Jerome", "Kofi", "Emeka"),
}
_FAMILY = {
    "white": ("Smith", "Jones", "Taylor", "Brown", "Wilson", "Walker", "O'Brien", "Brontë", "Hirst", "Sutcliffe"),
    "asian": ("Khan", "Hussain", "Ahmed", "Akhtar", "Patel", "Begum", "Iqbal", "Mahmood", "Shah", "Ali"),
    "black": ("Okafor", "Mensah", "Campbell", "Adeyemi", "Williams", "Asante"),
}


# -- helpers ---------------------------------------------------------------------------------------------


def _escape(text: str) -> str:
    """HL7 v2 escape sequences for the encoding characters in free text."""
    return (
        text.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("&", "\\T\\")
        .replace("~", "\\R\\")
    )


def _ts(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y%m%d%H%M%S") + "+0000"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(round(float(value), 6))


def _control_id(event_id: str) -> str:
    return hashlib.sha1(event_id.encode()).hexdigest()[:20].upper()


def _name(patient_id: str, sex: str | None, group: str | None) -> tuple[str, str]:
    h = zlib.crc32(patient_id.encode())
    fam_key = group if group in _FAMILY else "white"
    sex_key = sex if sex in ("F", "M") else ("F" if h % 2 else "M")
    given = _GIVEN.get((fam_key, sex_key), _GIVEN[("white", sex_key)])
    family = _FAMILY[fam_key]
    return family[h % len(family)], given[(h // 7) % len(given)]


def _setting(event: Event) -> tuple[str, str]:
    setting = event.setting or "hospital"
    return setting, event.site or _DEFAULT_SITE[setting]


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- HL7 v2 ----------------------------------------------------------------------------------------------


def _msh(event: Event, message_type: str) -> str:
    return (
        f"MSH|^~\\&|SYNTHETIC|RXX|SCREENER|RXX|{_ts(event.occurred_at)}||{message_type}|"
        f"{_control_id(event.event_id)}|P|2.5|||||GBR|UNICODE UTF-8"
    )


def _pid(event: Event, demographics: dict[str, Any] | None) -> str:
    fields = [""] * 31
    fields[1] = "1"
    ids = [f"{_escape(event.patient_id)}^^^RXX^MR"]
    person = event.person
    if person is not None and person.nhs_number:
        ids.append(f"{person.nhs_number}^^^NHS^NH")
    fields[3] = "~".join(ids)
    demo = demographics or {}
    family, given = _name(event.patient_id, demo.get("sex"), demo.get("ethnic_group"))
    fields[5] = f"{_escape(family)}^{_escape(given)}"
    if person is not None:
        if person.birth_date is not None:
            fields[7] = person.birth_date.strftime("%Y%m%d")
        if person.sex is not None:
            fields[8] = person.sex
        if person.postcode_district:
            fields[11] = f"^^^^{_escape(person.postcode_district)}^GBR"
        if person.ethnic_category:
            fields[22] = f"{person.ethnic_category}^{_escape(_ETHNIC_TEXT.get(person.ethnic_category, ''))}^NHSEC"
    if event.kind == "death":
        fields[29], fields[30] = _ts(event.occurred_at), "Y"
    while fields and fields[-1] == "":
        fields.pop()
    return "PID|" + "|".join(fields[1:])


def _pv1(event: Event) -> str:
    setting, site = _setting(event)
    fields = [""] * 45
    fields[1] = "1"
    fields[2] = "I" if setting == "hospital" else "O"
    fields[3] = f"{_POINT_OF_CARE[setting]}^^^{_escape(site)}"
    fields[19] = "V" + _control_id(event.event_id)[:12]
    fields[44] = _ts(event.occurred_at)
    return "PV1|" + "|".join(fields[1:])


def to_hl7v2(events: Iterable[Event]) -> list[str]:
    """HL7 v2.5 messages (segments joined by ``\\r``) for the events HL7 v2 carries; see the module docstring.

    Person events set the demographics used for the synthetic names of the same patient's later messages.
    """
    messages: list[str] = []
    demographics: dict[str, dict[str, Any]] = {}
    for ev in events:
        if ev.kind == "person" and ev.person is not None:
            known = {k: v for k, v in (("sex", ev.person.sex), ("ethnic_group", ev.person.ethnic_group)) if v}
            demographics.setdefault(ev.patient_id, {}).update(known)
        demo = demographics.get(ev.patient_id)
        when = _ts(ev.occurred_at)
        if ev.kind == "person":
            segs = [_msh(ev, "ADT^A04^ADT_A01"), f"EVN|A04|{when}", _pid(ev, demo), _pv1(ev)]
        elif ev.kind == "death":
            segs = [_msh(ev, "ADT^A08^ADT_A01"), f"EVN|A08|{when}", _pid(ev, demo), _pv1(ev)]
        elif ev.kind == "condition" and ev.code is not None:
            code = ev.code
            dg1 = (
                f"DG1|1||{_escape(code.value)}^{_escape(_TEXT.get(code.value, code.value))}^"
                f"{_HL7_CODING[code.system]}||{when}|F"
            )
            segs = [_msh(ev, "ADT^A08^ADT_A01"), f"EVN|A08|{when}", _pid(ev, demo), _pv1(ev), dg1]
        elif ev.kind in ("measurement", "observation") and ev.code is not None and isinstance(ev.value, float | int):
            code = ev.code
            ident = f"{_escape(code.value)}^{_escape(_TEXT.get(code.value, code.value))}^{_HL7_CODING[code.system]}"
            unit = ""
            if ev.unit:
                ucum = _UCUM.get(ev.unit)
                unit = f"{_escape(ev.unit)}^{_escape(ev.unit)}^UCUM" if ucum == ev.unit else _escape(ev.unit)
            # A retraction repeats the original's order numbers with result status W (post original as wrong).
            retracts = ev.status == "entered-in-error" and ev.corrects is not None
            order = _control_id(ev.corrects if retracts and ev.corrects else ev.event_id)[:16]
            obr = f"OBR|1|P{order}|F{order}|{ident}|||{when}"
            obx = f"OBX|1|NM|{ident}||{_num(ev.value)}|{unit}|||||{'W' if retracts else 'F'}|||{when}"
            segs = [_msh(ev, "ORU^R01^ORU_R01"), _pid(ev, demo), _pv1(ev), obr, obx]
        elif ev.kind == "observation" and ev.code is not None and ev.value_code is not None:
            code, coded = ev.code, ev.value_code
            ident = f"{_escape(code.value)}^{_escape(_TEXT.get(code.value, code.value))}^{_HL7_CODING[code.system]}"
            answer = f"{_escape(coded.value)}^{_escape(_TEXT.get(coded.value, ''))}^{_HL7_CODING[coded.system]}"
            order = _control_id(ev.event_id)[:16]
            obr = f"OBR|1|P{order}|F{order}|{ident}|||{when}"
            obx = f"OBX|1|CWE|{ident}||{answer}||||||F|||{when}"
            segs = [_msh(ev, "ORU^R01^ORU_R01"), _pid(ev, demo), _pv1(ev), obr, obx]
        else:
            continue
        messages.append("\r".join(segs))
    return messages


from ._fhir import to_fhir  # noqa: E402  (the FHIR half, re-exported: it reads the constants above)
