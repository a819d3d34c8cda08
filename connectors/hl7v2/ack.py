"""HL7 v2 acknowledgements (original mode): MSA AA / AE / AR, with an ERR segment for every non-AA.

The ACK echoes the message's sending/receiving application and facility swapped, its control id in MSA-2
and its version. ERR follows v2.5: ERR-2 location (``SEG^seq^field``), ERR-3 code from HL7 table 0357,
ERR-4 severity ``E``, ERR-8 the reason. The reason never contains a patient identifier (it names the segment
and field, and shows at most 30 characters of a malformed date or number).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from itertools import count

__all__ = ["build_ack", "wrap_batch"]

_ERROR_TEXT = {
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "207": "Application internal error",
}
_counter = count(1)
_MSH = re.compile(r"^MSH(.)")


def _escape(text: str, fs: str = "|", cs: str = "^", rs: str = "~", esc: str = "\\", ss: str = "&") -> str:
    out = text.replace(esc, f"{esc}E{esc}")
    for ch, code in ((fs, "F"), (cs, "S"), (rs, "R"), (ss, "T")):
        out = out.replace(ch, f"{esc}{code}{esc}")
    return out.replace("\r", " ").replace("\n", " ")


def _msh_fields(raw: str) -> list[str]:
    first = raw.replace("\n", "\r").split("\r", 1)[0]
    if not _MSH.match(first) or first[3] != "|":
        return []
    return first.split("|")


def build_ack(
    raw: str, code: str, *, control_id: str = "", reason: str = "", hl7_code: str = "207", location: str = ""
) -> str:
    """An ACK for ``raw`` (the original message text, possibly garbage) with MSA-1 = ``code``.

    For AE/AR an ERR segment carries ``hl7_code``, ``location`` and ``reason``.
    """
    f = _msh_fields(raw)

    def fld(n: int) -> str:
        # MSH-1 is the separator itself, so MSH-n is split index n-1
        return f[n - 1] if len(f) >= n else ""

    version = fld(12) or "2.5"
    ctrl = control_id or fld(10)
    trigger = fld(9).split("^")[1] if "^" in fld(9) else ""
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
    ack_id = f"ACK{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}{next(_counter):06d}"
    segments = [
        "|".join(
            [
                "MSH",
                "^~\\&",
                fld(5) or "SCREENER",
                fld(6),
                fld(3),
                fld(4),
                now,
                "",
                f"ACK^{trigger}^ACK" if trigger else "ACK",
                ack_id,
                fld(11) or "P",
                version,
            ]
        ),
        "|".join(["MSA", code, _escape(ctrl[:199])] + ([_escape(reason[:80])] if code != "AA" else [])),
    ]
    if code != "AA":
        text = _ERROR_TEXT.get(hl7_code, "Application internal error")
        segments.append(
            "|".join(
                [
                    "ERR",
                    "",
                    _escape(location, cs="\x00"),
                    f"{hl7_code}^{text}^HL70357",
                    "E",
                    "",
                    "",
                    "",
                    _escape(reason[:500]),
                ]
            )
        )
    return "\r".join(segments) + "\r"


def wrap_batch(acks: list[str], kind: str | None) -> str:
    """Wrap per-message ACKs in a BHS/BTS batch (and FHS/FTS when the input was a file batch)."""
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
    body = "".join(acks)
    batch = f"BHS|^~\\&|SCREENER||||{now}\r{body}BTS|{len(acks)}\r"
    if kind == "FHS":
        return f"FHS|^~\\&|SCREENER||||{now}\r{batch}FTS|1\r"
    return batch
