"""The ``study:`` block of a rule file."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from screener.errors import did_you_mean
from screener.events import SETTINGS
from screener.rules._context import _ID, _STUDY_KEYS, SPONSORS, Context
from screener.rules._yaml import Map, Seq

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
        return out
