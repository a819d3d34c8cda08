"""The ``study:`` block of a rule file."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

from screener.errors import did_you_mean
from screener.events import SETTINGS
from screener.rules._context import _ID, _STUDY_KEYS, SPONSORS, Context
from screener.rules._yaml import Map, Seq
from screener.rules.model import Contact

ALERTS = ("digest", "immediate")
_CONTACT_KEYS = ("name", "role", "email", "phone")
_URL = re.compile(r"^https://[^\s/$.?#][^\s]*$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

__all__ = ["MetadataMixin"]


class MetadataMixin(Context):
    def metadata(self, doc: Map) -> dict[str, Any]:
        defaults: dict[str, Any] = {
            "id": "INVALID",
            "title": "",
            "summary": "",
            "sponsor": "non-commercial",
            "portfolio": False,
            "target": 0,
            "opens": date(1970, 1, 1),
            "closes": date(1970, 1, 1),
            "settings": (),
            "team": "",
            "lay_summary": None,
            "contacts": (),
            "protocol_url": None,
            "pis_url": None,
            "sites": (),
            "alert": None,
        }
        s = doc.get("study")
        if not isinstance(s, Map):
            self.err(
                "missing 'study:' mapping (id, title, sponsor, opens, closes, team, ...)",
                doc.marks.get("study", doc.mark),
            )
            return defaults
        self.unknown_keys(s, _STUDY_KEYS, "study")
        out = dict(defaults)

        def need(key: str) -> Any:
            if key not in s or s[key] is None:
                self.err(f"study '{key}' is required", s.mark)
                return None
            return s[key]

        sid = need("id")
        if sid is not None:
            if not isinstance(sid, str) or not _ID.match(sid):
                self.err(
                    f"study id {sid!r} must be capitals, digits and '-' (e.g. CKD-SGLT2-COMM)", s.value_marks["id"]
                )
            else:
                out["id"] = sid
                self.study_id = sid
        for key in ("title", "team"):
            v = need(key)
            if v is not None:
                if not isinstance(v, str) or not v.strip():
                    self.err(f"study '{key}' must be text", s.value_marks[key])
                else:
                    out[key] = v.strip()
        if "summary" in s:
            if not isinstance(s["summary"], str):
                self.err("study 'summary' must be text", s.value_marks["summary"])
            else:
                out["summary"] = s["summary"].strip()
        sponsor = need("sponsor")
        if sponsor is not None:
            if sponsor not in SPONSORS:
                self.err(
                    f"unknown sponsor '{sponsor}' (one of {', '.join(SPONSORS)})",
                    s.value_marks["sponsor"],
                    did_you_mean(str(sponsor), SPONSORS),
                )
            else:
                out["sponsor"] = sponsor
        if "portfolio" in s:
            if not isinstance(s["portfolio"], bool):
                self.err("study 'portfolio' must be true or false", s.value_marks["portfolio"])
            else:
                out["portfolio"] = s["portfolio"]
        target = need("target")
        if target is not None:
            if isinstance(target, bool) or not isinstance(target, int) or target < 1:
                self.err(
                    f"study 'target' must be a whole number of participants, got {target!r}", s.value_marks["target"]
                )
            else:
                out["target"] = target
        for key in ("opens", "closes"):
            v = need(key)
            if v is None:
                continue
            if isinstance(v, datetime):
                v = v.date()
            if not isinstance(v, date):
                self.err(f"study '{key}' must be a date like 2026-01-05, got {v!r}", s.value_marks[key])
            else:
                out[key] = v
        if isinstance(s.get("opens"), date) and isinstance(s.get("closes"), date) and out["closes"] < out["opens"]:
            self.err(f"study closes ({out['closes']}) before it opens ({out['opens']})", s.value_marks["closes"])
        if "settings" in s:
            settings = s["settings"]
            if isinstance(settings, str):
                settings = Seq()
                settings.append(s["settings"])
                settings.marks.append(s.value_marks["settings"])
            if not isinstance(settings, Seq):
                self.err("study 'settings' must be a list, e.g. [hospital, community]", s.value_marks["settings"])
            else:
                good = []
                for i, v in enumerate(settings):
                    if v not in SETTINGS:
                        self.err(
                            f"unknown setting '{v}' (one of {', '.join(SETTINGS)})",
                            settings.marks[i],
                            did_you_mean(str(v), SETTINGS),
                        )
                    else:
                        good.append(v)
                out["settings"] = tuple(good)
        self.metadata_v2(s, out)
        return out

    def metadata_v2(self, s: Map, out: dict[str, Any]) -> None:
        """lay_summary, contacts, protocol_url, pis_url, sites, alert (all optional)."""
        if "lay_summary" in s:
            v = s["lay_summary"]
            if not isinstance(v, str) or not v.strip():
                self.err("study 'lay_summary' must be text (plain words for patients)", s.value_marks["lay_summary"])
            else:
                out["lay_summary"] = v.strip()
        for key in ("protocol_url", "pis_url"):
            if key in s and s[key] is not None:
                v = s[key]
                if not isinstance(v, str) or not _URL.match(v.strip()):
                    self.err(f"study '{key}' must be an https:// address, got {_short(v)}", s.value_marks[key])
                else:
                    out[key] = v.strip()
        if "sites" in s:
            v = s["sites"]
            if not isinstance(v, Seq) or not all(isinstance(x, str) and x.strip() for x in v):
                self.err("study 'sites' must be a list of site names", s.value_marks["sites"])
            else:
                out["sites"] = tuple(x.strip() for x in v)
        if "alert" in s:
            v = s["alert"]
            if v not in ALERTS:
                self.err(
                    f"study 'alert' must be one of {', '.join(ALERTS)}, got {_short(v)}",
                    s.value_marks["alert"],
                    did_you_mean(str(v), ALERTS),
                )
            else:
                out["alert"] = v
        if "contacts" in s:
            out["contacts"] = self.contacts(s["contacts"], s.value_marks["contacts"])

    def contacts(self, value: Any, mark: tuple[int, int]) -> tuple[Contact, ...]:
        if not isinstance(value, Seq):
            self.err("study 'contacts' must be a list of {name, role, email, phone}", mark)
            return ()
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, Map):
                self.err("a contact must be a mapping such as {name: Dr A Jones, role: PI}", value.marks[i])
                continue
            for k in item:
                if k not in _CONTACT_KEYS:
                    self.err(f"unknown contact key '{k}'", item.marks[k], did_you_mean(str(k), _CONTACT_KEYS))
            fields = {k: item.get(k) for k in _CONTACT_KEYS}
            bad = [k for k, v in fields.items() if v is not None and (not isinstance(v, str) or not v.strip())]
            if not isinstance(fields["name"], str) or not fields["name"].strip():
                self.err("a contact needs a 'name'", value.marks[i])
                continue
            if bad:
                self.err(f"contact '{bad[0]}' must be text", item.value_marks[bad[0]])
                continue
            email = fields["email"]
            if email is not None and not _EMAIL.match(email.strip()):
                self.err(f"contact email {_short(email)} is not an email address", item.value_marks["email"])
                continue
            clean = {k: (v.strip() if isinstance(v, str) else None) for k, v in fields.items()}
            out.append(Contact(clean["name"] or "", clean["role"], clean["email"], clean["phone"]))
        return tuple(out)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
