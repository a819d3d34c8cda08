"""One hundred distinct studies, generated deterministically as real rule files (YAML + JEXL).

    paths = write_studies(out_dir, count=100, seed=7)

Study ``k`` belongs to theme ``THEMES[k % 10]`` (renal, cardiology, oncology, respiratory, diabetes, stroke,
mental health, paediatrics, hepatology, rheumatology) and draws, from its own seeded generator, what a
coordinator would write from a protocol: an age band (``age_months`` for the youngest children), a main
diagnosis (sometimes only active, severe, long-standing or in the last years), one or two laboratory criteria
with thresholds drawn around the theme's distribution (latest/min/max/mean in a window, repeated high values
``lab[.value >= x]|count(w) >= 2``, multiples of the result's own reference range, ``change``/``pct_change``
trends, ``count_days``), a drug criterion (``on_now``, ``exposure_days``, ``continuous``, route and dose
filters), sometimes a score, a group (``any``), ``episodes`` of an acute condition, coded smoking status
(``latest_code``), ``registered_days``, an inpatient-now study (``on_now`` of an admission and a diagnosis
``[.encounter == 'current']``), and exclusions (the theme's rarer conditions, drugs, allergies, planned
procedures with ``upcoming``, extreme results). Event-to-event relations (``after``/``before`` over the
theme's event pairs, sometimes filtered) are in studies ``k % 10 in (0, 5)`` and a few more: at least 20 of
100. Concept sets use real codes (:mod:`bench._realistic_codes`), each study its own subset, so no two studies
share their concept sets, windows and thresholds.
"""

from __future__ import annotations

import math
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench._realistic_codes import QUALIFIERS, SMOKING, Cond, Drug, Lab, Theme
from bench._realistic_themes import THEMES

__all__ = ["write_studies"]

_WINDOWS = ("90d", "6mo", "180d", "1y", "1y", "2y", "2y", "3y")


class _Study:
    def __init__(self, k: int, theme: Theme, rng: np.random.Generator) -> None:
        self.k, self.theme, self.rng = k, theme, rng
        self.concepts: dict[str, dict[str, Any]] = {}
        self.include: dict[str, Any] = {}
        self.exclude: dict[str, Any] = {}

    # ---------------------------------------------------------------- concept sets (a random subset of codes)

    def _subset(self, codes: tuple[str, ...]) -> list[str]:
        if len(codes) <= 1:
            return list(codes)
        n = int(self.rng.integers(max(1, len(codes) - 1), len(codes) + 1))
        return sorted(self.rng.choice(codes, n, replace=False).tolist())

    def cond(self, c: Cond) -> str:
        if c.name not in self.concepts:
            body: dict[str, Any] = {"icd10": self._subset(c.icd10)}
            if c.snomed and self.rng.random() < 0.7:
                body["snomed"] = list(c.snomed)
            body["label"] = c.name.replace("_", " ")
            self.concepts[c.name] = body
        return c.name

    def lab(self, lab: Lab) -> str:
        if lab.name not in self.concepts:
            codes = self._subset(lab.loinc)
            key = "local" if lab.system == "local" else "loinc"
            body: dict[str, Any] = {key: codes, "unit": lab.unit}
            if lab.alt is not None and self.rng.random() < 0.5:
                body[key] = [*codes, lab.alt[0]]
                if self.rng.random() < 0.3:
                    body["unit"] = lab.alt[1]  # the study written in the other unit: values are converted
            self.concepts[lab.name] = body
        return lab.name

    def drug(self, d: Drug) -> str:
        if d.name not in self.concepts:
            body: dict[str, Any] = {"atc": self._subset(d.atc)}
            if d.dmd:
                body["dmd"] = list(d.dmd)
            if d.rxnorm and self.rng.random() < 0.6:
                body["rxnorm"] = list(d.rxnorm)
            self.concepts[d.name] = body
        return d.name

    def event(self, name: str) -> str:
        """A condition or procedure of the theme by name (for relations)."""
        for c in (*self.theme.conditions, *self.theme.exclusions):
            if c.name == name:
                return self.cond(c)
        for p in self.theme.procs:
            if p.name == name:
                self.concepts.setdefault(p.name, {"opcs4": list(p.opcs4)})
                return p.name
        raise KeyError(name)

    def fixed(self, name: str, body: dict[str, Any]) -> str:
        self.concepts.setdefault(name, body)
        return name

    # ---------------------------------------------------------------- values

    def window(self, short: bool = False) -> str:
        return str(self.rng.choice(_WINDOWS[:4] if short else _WINDOWS))

    def threshold(self, lab: Lab, z: float) -> float | int:
        sd = math.hypot(lab.sd_between, lab.sd_within)
        v = lab.mean + z * sd
        if lab.log:
            v = math.exp(v)
        if self.concepts[lab.name]["unit"] != lab.unit and lab.alt is not None:
            v = lab.alt[2] * v + lab.alt[3]
        d = lab.decimals + (1 if self.concepts[lab.name]["unit"] != lab.unit else 0)
        r = round(v, d)
        return int(r) if d == 0 else r

    def _above_range(self, lab: Lab) -> float:
        """The share of a theme patient's results above the reference range (normal approximation)."""
        hi = math.log(lab.ref[1]) if lab.log and lab.ref[1] else lab.ref[1]
        sd = math.hypot(lab.sd_between, lab.sd_within)
        return 0.5 * math.erfc((float(hi or 0) - lab.mean) / (sd * math.sqrt(2)))

    def z(self, spread: float = 0.7) -> float:
        return float(self.rng.uniform(-spread, spread))

    # ---------------------------------------------------------------- criteria

    def age(self) -> None:
        if self.theme.children:
            lo, hi = int(self.rng.choice([6, 12, 24])), int(self.rng.choice([12, 16, 18]))
            self.include["age_band"] = f"age_months >= {lo} && age < {hi}"
        else:
            lo, hi = int(self.rng.choice([18, 18, 30, 40])), int(self.rng.choice([80, 85, 90, 99]))
            self.include["age_band"] = f"age >= {lo} && age <= {hi}"

    def diagnosis(self) -> Cond:
        conds = [c for c in self.theme.conditions if c.p >= 0.2]
        p = np.array([c.p for c in conds])
        c = conds[int(self.rng.choice(len(conds), p=p / p.sum()))]
        name = self.cond(c)
        form = int(self.rng.integers(0, 7))
        if form == 1:
            expr = f"{name}[.status == 'active']|ever"
        elif form == 2:
            expr = f"{name}|within('{self.rng.choice(['3y', '5y', '10y'])}')"
        elif form == 3:
            expr = f"{name}|days_since_first >= {int(self.rng.choice([90, 180, 365]))}"
        elif form == 4:
            sev = self.fixed("severe_or_moderate", {"snomed": [QUALIFIERS["severe"], QUALIFIERS["moderate"]]})
            expr = f"{name}|ever && ({name}[{sev} in .qualifiers]|ever || {name}|count_days >= 2)"
        elif form == 5:
            expr = f"{name}|count_days('10y') >= 2"
        else:
            expr = f"{name}|ever"
        self.include[f"has_{name}"] = expr
        return c

    def lab_criterion(self, lab: Lab, into: dict[str, Any]) -> None:
        name = self.lab(lab)
        w = self.window()
        form = int(self.rng.integers(0, 9))
        t = self.threshold(lab, self.z())
        hi = self.threshold(lab, 1.5)
        if form == 0:
            lo_t = self.threshold(lab, -1.2 + self.z(0.3))
            expr = f"{name}|latest('{w}') >= {lo_t} && {name}|latest('{w}') <= {max(t, lo_t)}"
        elif form == 1:
            expr = f"{name}[.value >= {t}]|count('{self.rng.choice(['2y', '3y'])}') >= 2"
        elif form == 2:
            expr = f"{name}|{self.rng.choice(['max', 'mean', 'latest'])}('{w}') >= {t}"
        elif form == 3:
            expr = f"{name}|{self.rng.choice(['min', 'latest'])}('{w}') < {t}"
        elif form == 4 and lab.ref[1] and self._above_range(lab) > 0.15:
            expr = f"{name}[.value > .ref_high]|within('{self.rng.choice(['1y', '2y', '3y'])}')"
        elif form == 5:
            drop = round(float(self.rng.uniform(0.1, 0.5)) * lab.sd_between * (lab.mean if lab.log else 1), 1)
            expr = f"{name}|change('{self.rng.choice(['2y', '3y'])}') <= -{max(drop, 0.1)}"
        elif form == 6:
            pct = int(self.rng.choice([5, 10, 15, 20]))
            sign = self.rng.choice(["<= -", ">= "])
            expr = f"{name}|pct_change('{self.rng.choice(['1y', '2y'])}') {sign}{pct}"
        elif form == 7:
            w = self.rng.choice(["2y", "3y"])
            expr = f"{name}|count_days('{w}') >= 2 && {name}|latest('{w}') < {hi}"
        else:
            expr = f"{name}|latest('{w}') >= {t}"
        into[f"{name}_{len(into)}"] = expr

    def drug_criterion(self, d: Drug, into: dict[str, Any]) -> None:
        name = self.drug(d)
        form = int(self.rng.integers(0, 6))
        long = d.days >= 28  # a repeat prescription, not a short course
        if form == 0 and long:
            expr = f"{name}|on_now"
        elif form == 1 and long:
            expr = f"{name}|exposure_days('1y') >= {int(self.rng.choice([28, 56, 90]))}"
        elif form == 2:
            expr = f"{name}[.route == '{d.route}']|within('{self.window(True)}')"
        elif form == 3 and len(d.doses) > 1:
            expr = f"{name}[.dose >= {d.doses[len(d.doses) // 2]}]|within('6mo')"
        elif form == 4 and d.days >= 28:
            expr = f"{name}|continuous('3mo', '{self.rng.choice(['30d', '60d'])}')"
        else:
            expr = f"{name}|within('{self.window(True)}')"
        into[f"on_{name}"] = expr

    def relation(self) -> None:
        pair = self.theme.pairs[int(self.rng.integers(0, len(self.theme.pairs)))]
        first, then = self.event(pair.first), self.event(pair.then)
        lag = int(pair.lag_days * float(self.rng.uniform(0.6, 1.2)))
        if self.rng.random() < 0.5:
            left = f"{then}[.status == 'active']" if self.rng.random() < 0.4 else then
            expr = f"{left}|after({first}, '{lag}d')"
        else:
            expr = f"{first}|before({then}, '{lag}d')"
        self.include[f"{then}_after_{first}"] = expr

    def extra(self) -> None:
        """At most one more inclusion: a score, repeated episodes, coded smoking status or registration."""
        rng = self.rng
        t = self.theme
        pick = rng.random()
        acute = [c for c in t.conditions if c.resolved >= 0.7 and c.n >= 1.6]
        if t.scores and pick < 0.3:
            s = t.scores[int(rng.integers(0, len(t.scores)))]
            name = self.fixed(s.name, {s.code[0].lower(): [s.code[1]], "unit": "{score}"})
            cut = int(s.lo + (s.hi - s.lo) * float(rng.uniform(0.1, 0.4)))
            self.include[f"{name}_score"] = f"{name}|latest('{self.window()}') >= {cut}"
        elif acute and pick < 0.45:
            c = acute[int(rng.integers(0, len(acute)))]
            name = self.cond(c)
            gap = rng.choice(["14d", "28d"])
            self.include[f"repeated_{name}"] = f"{name}|episodes('{gap}', '{rng.choice(['3y', '5y'])}') >= 2"
        elif pick < 0.6 and not t.children:
            smoke = self.fixed("smoking_status", {"loinc": ["72166-2"]})
            self.include["not_smoking"] = f"{smoke}|latest_code in ['{SMOKING[1]}', '{SMOKING[2]}']"
        elif pick < 0.7:
            self.include["registered_a_year"] = f"registered_days >= {int(rng.choice([180, 365, 730]))}"

    def exclusions(self, used: set[str]) -> None:
        rng = self.rng
        t = self.theme
        for c in t.exclusions:
            if rng.random() < 0.7:
                self.exclude[f"has_{self.cond(c)}"] = f"{c.name}|ever"
        free = [d for d in t.drugs if d.name not in used]
        if free and rng.random() < 0.6:
            d = free[int(rng.integers(0, len(free)))]
            self.exclude[f"recent_{self.drug(d)}"] = f"{d.name}|within('{self.window(True)}')"
        if rng.random() < 0.3:
            d = t.drugs[int(rng.integers(0, len(t.drugs)))]
            self.exclude[f"allergic_to_{self.drug(d)}"] = f"{d.name}[.kind == 'allergy']|ever"
        if t.procs and rng.random() < 0.35:
            p = t.procs[int(rng.integers(0, len(t.procs)))]
            self.concepts.setdefault(p.name, {"opcs4": list(p.opcs4)})
            self.exclude[f"planned_{p.name}"] = f"{p.name}|upcoming('{rng.choice(['30d', '60d'])}')"
        if rng.random() < 0.4:
            lab = t.labs[int(rng.integers(0, len(t.labs)))]
            name = self.lab(lab)
            self.exclude[f"extreme_{name}"] = f"{name}|latest('90d') > {self.threshold(lab, 2.0)}"
        if rng.random() < 0.15 and not t.children:
            smoke = self.fixed("smoking_status", {"loinc": ["72166-2"]})
            self.exclude["current_smoker"] = f"{smoke}|latest_code == '{SMOKING[0]}'"

    def inpatient(self) -> None:
        """An acute study: in hospital now, with the diagnosis recorded in this admission."""
        adm = self.fixed("admission", {"local": ["inpatient"], "label": "hospital admission"})
        dx = self.cond(self.theme.conditions[int(self.rng.integers(0, 2))])
        self.include = {
            "in_hospital_now": f"{adm}|on_now",
            "diagnosed_this_admission": f"{dx}[.encounter == 'current']|ever",
        }
        self.include["age_band"] = "age >= 18"


def _study(k: int, seed: int, relations: bool) -> dict[str, Any]:
    theme = THEMES[k % len(THEMES)]
    rng = np.random.default_rng([seed, k])
    s = _Study(k, theme, rng)
    acute = not theme.children and k % 10 not in (0, 5) and k // 10 == 9
    if acute:
        s.inpatient()
    else:
        s.age()
        if relations and theme.pairs:
            s.relation()  # the index-event relation stands in for the main diagnosis
        else:
            s.diagnosis()
        n_labs = 2 if rng.random() < 0.2 else 1
        for i in rng.choice(len(theme.labs), n_labs, replace=False):
            s.lab_criterion(theme.labs[int(i)], s.include)
        used: set[str] = set()
        common = [d for d in theme.drugs if d.p >= 0.3]
        if common and rng.random() < 0.5:
            d = common[int(rng.integers(0, len(common)))]
            used.add(d.name)
            if rng.random() < 0.35:
                group: dict[str, Any] = {}
                s.drug_criterion(d, group)
                s.lab_criterion(theme.labs[int(rng.integers(0, len(theme.labs)))], group)
                s.include["treated_or_abnormal"] = {"any": group}
            else:
                s.drug_criterion(d, s.include)
        else:
            s.extra()
        s.exclusions(used)
    settings = ["hospital"] if acute else ["hospital", "community", "primary-care"][: 2 if k % 3 == 1 else 3]
    opens = date(2026, 1, 5) + timedelta(days=int(rng.integers(0, 200)))
    return {
        "study": {
            "id": f"RW-{theme.name.upper().replace('_', '')[:8]}-{k:03d}",
            "title": f"{theme.name.replace('_', ' ').capitalize()} study {k} of the realistic benchmark workload",
            "summary": "Generated by bench/_realistic_studies.py for the benchmarks; not a real study.",
            "sponsor": "commercial" if rng.random() < 0.4 else "non-commercial",
            "portfolio": True,
            "target": int(rng.choice([30, 60, 120, 250, 500])),
            "opens": opens,
            "closes": date(2027, 12, 31),
            "settings": settings,
            "team": f"{theme.name.replace('_', '-')}-research",
        },
        "concepts": s.concepts,
        "include": s.include,
        **({"exclude": s.exclude} if s.exclude else {}),
    }


def write_studies(out_dir: Path, count: int = 100, seed: int = 7) -> list[Path]:
    """Write ``count`` study files (``rw-<theme>-<k>.yaml``) into ``out_dir`` and return their paths.

    Studies ``k % 10 in (0, 5)``, and every seventh other one, carry an event-to-event relation.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        doc = _study(k, seed, relations=k % 10 in (0, 5) or k % 7 == 3)
        path = out_dir / f"{doc['study']['id'].lower()}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=200))
        paths.append(path)
    return paths
