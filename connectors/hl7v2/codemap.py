"""The HL7 v2 mapping file (``codes.yaml``): local OBX codes -> LOINC; patient class and location -> setting."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import yaml

__all__ = ["DEFAULT_CODE_MAP", "CodeMap", "default_code_map", "load_code_map"]

SOURCE = "hl7v2"
DEFAULT_CODE_MAP = Path(__file__).with_name("codes.yaml")


@dataclass(frozen=True)
class CodeMap:
    """The mapping file, loaded. Keys are upper-cased local codes / classes / prefixes."""

    observations: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    patient_class: dict[str, str] = field(default_factory=dict)
    location_prefix: dict[str, str] = field(default_factory=dict)


def load_code_map(path: Path | None = None) -> CodeMap:
    """Load a YAML mapping file (see ``codes.yaml``) or a CSV with columns ``local_code,loinc[,unit]``.

    :raises ConnectorError: when the file cannot be read or has the wrong shape.
    """
    from screener.errors import ConnectorError

    path = path or DEFAULT_CODE_MAP
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConnectorError(f"cannot read mapping file {path}: {exc}", connector=SOURCE) from exc
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if rows and not {"local_code", "loinc"} <= set(rows[0]):
            raise ConnectorError(f"{path}: CSV needs columns local_code,loinc[,unit]", connector=SOURCE)
        base = load_code_map(DEFAULT_CODE_MAP) if path != DEFAULT_CODE_MAP else CodeMap()
        obs = {
            r["local_code"].strip().upper(): (r["loinc"].strip(), (r.get("unit") or "").strip() or None)
            for r in rows
            if r.get("local_code")
        }
        return CodeMap(obs, base.patient_class, base.location_prefix)
    try:
        data = yaml.safe_load(text) or {}
        obs = {}
        for code, spec in (data.get("observations") or {}).items():
            if isinstance(spec, str):
                obs[str(code).upper()] = (spec, None)
            else:
                obs[str(code).upper()] = (str(spec["loinc"]), spec.get("unit"))
        return CodeMap(
            obs,
            {str(k).upper(): str(v) for k, v in (data.get("patient_class") or {}).items()},
            {str(k).upper(): str(v) for k, v in (data.get("location_prefix") or {}).items()},
        )
    except (yaml.YAMLError, AttributeError, KeyError, TypeError) as exc:
        raise ConnectorError(f"{path}: not a valid mapping file: {exc}", connector=SOURCE) from exc


_DEFAULT: CodeMap | None = None


def default_code_map() -> CodeMap:
    """``codes.yaml``, loaded once."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_code_map(DEFAULT_CODE_MAP)
    return _DEFAULT
