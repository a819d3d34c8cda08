"""The shared vocabulary: every name more than one module spells, written once.

Import these instead of writing the literals again (``from screener.vocab import FACT_KINDS, TS``). Each tuple is
derived from its ``Literal`` type, so the runtime values and the static types cannot drift apart; the canonical
event model (:mod:`screener.events`) validates against the same ``Literal`` types and re-exports the event ones.

This module is pure data: it imports nothing from screener and nothing with side effects.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

import polars as pl

__all__ = [
    "ACTIONS",
    "ACTIVE_STAGES",
    "CLOSED_STAGES",
    "CODE_SYSTEMS",
    "DISMISSED_STAGES",
    "ELIGIBLE",
    "ETHNIC_GROUPS",
    "FACT_KINDS",
    "FUNNEL_STAGES",
    "INELIGIBLE",
    "KEPT_VISIBLE_STAGES",
    "KINDS",
    "MATCH_OUTCOMES",
    "NEW_STAGE",
    "NOT_DONE_STATUSES",
    "OUTCOMES",
    "POSSIBLE",
    "ROUTES",
    "SCHEMAS",
    "SCHEMA_V1",
    "SCHEMA_V2",
    "SETTINGS",
    "SEXES",
    "STAGES",
    "STATUSES",
    "TS",
    "Action",
    "CodeSystem",
    "EthnicGroup",
    "FactKind",
    "FunnelStage",
    "Kind",
    "MatchOutcome",
    "Outcome",
    "Route",
    "SchemaName",
    "Setting",
    "Sex",
    "Stage",
    "Status",
]

#: The Polars type of every timestamp column (facts, persons, matches): microseconds, UTC.
TS = pl.Datetime("us", "UTC")

SCHEMA_V1: Final = "screener.event/v1"
SCHEMA_V2: Final = "screener.event/v2"
SchemaName = Literal["screener.event/v1", "screener.event/v2"]
SCHEMAS: tuple[str, ...] = get_args(SchemaName)

#: Clinical facts: kinds that become rows of the facts frame.
FactKind = Literal[
    "condition",
    "measurement",
    "drug",
    "procedure",
    "visit",
    "observation",
    "allergy",
    "immunization",
    "registration",
]
#: Every event kind: the facts, plus the ones that change the person row (person, consent, death).
Kind = Literal[
    "person",
    "condition",
    "measurement",
    "drug",
    "procedure",
    "visit",
    "observation",
    "allergy",
    "immunization",
    "registration",
    "consent",
    "death",
]
CodeSystem = Literal["ICD10", "ICD9", "SNOMED", "LOINC", "DMD", "ATC", "RXNORM", "OPCS4", "READ2", "CTV3", "local"]
Status = Literal["active", "resolved", "planned", "ordered", "completed", "stopped", "entered-in-error"]
Setting = Literal["hospital", "community", "primary-care", "home"]
Route = Literal[
    "oral",
    "inhaled",
    "intravenous",
    "intramuscular",
    "subcutaneous",
    "transdermal",
    "topical",
    "rectal",
    "vaginal",
    "nasal",
    "sublingual",
    "ophthalmic",
    "other",
]
Sex = Literal["F", "M", "O", "U"]
#: ONS 2021 high-level ethnic groups (England and Wales census, 5 categories).
EthnicGroup = Literal["asian", "black", "mixed", "white", "other"]
#: A screening outcome per (study, patient).
Outcome = Literal["eligible", "possible", "ineligible"]
#: The outcomes that make (or keep) a match in the worklist.
MatchOutcome = Literal["eligible", "possible"]
#: The recruitment funnel, in order (the research office's report and dashboards).
FunnelStage = Literal["matched", "reviewed", "approached", "consented", "enrolled"]
#: A worklist match's stage (the store's own states): ``new`` when recorded, then what the team did.
Stage = Literal["new", "reviewed", "approached", "consented", "enrolled", "not_eligible", "declined"]
#: What the team can do to a match, in funnel order. ``snoozed`` needs an ``until`` date; the two dismissals need a
#: reason. Every action but ``snoozed`` moves the match to the stage of the same name.
Action = Literal["reviewed", "not_eligible", "approached", "consented", "declined", "enrolled", "snoozed"]

ELIGIBLE: Final = "eligible"
POSSIBLE: Final = "possible"
#: The outcome of a match that a re-screen ruled out (closes it as "no longer eligible").
INELIGIBLE: Final = "ineligible"

KINDS: tuple[str, ...] = get_args(Kind)
FACT_KINDS: tuple[str, ...] = get_args(FactKind)
CODE_SYSTEMS: tuple[str, ...] = get_args(CodeSystem)
STATUSES: tuple[str, ...] = get_args(Status)
#: Statuses of facts that have not happened (yet): only ``upcoming`` and an explicit ``.status`` filter read them.
NOT_DONE_STATUSES: tuple[str, ...] = ("planned", "ordered")
SETTINGS: tuple[str, ...] = get_args(Setting)
ROUTES: tuple[str, ...] = get_args(Route)
SEXES: tuple[str, ...] = get_args(Sex)
ETHNIC_GROUPS: tuple[str, ...] = get_args(EthnicGroup)
OUTCOMES: tuple[str, ...] = get_args(Outcome)
MATCH_OUTCOMES: tuple[str, ...] = get_args(MatchOutcome)
FUNNEL_STAGES: tuple[str, ...] = get_args(FunnelStage)
STAGES: tuple[str, ...] = get_args(Stage)
ACTIONS: tuple[str, ...] = get_args(Action)
#: The stage of a match when it is recorded (and when a closed match is reopened).
NEW_STAGE: Final = "new"
#: Worklist stages (the store's own states): still in play, closed, and closed by a dismissal.
ACTIVE_STAGES: tuple[str, ...] = ("new", "reviewed", "approached", "consented")
CLOSED_STAGES: tuple[str, ...] = ("enrolled", "not_eligible", "declined")
DISMISSED_STAGES: tuple[str, ...] = ("not_eligible", "declined")
#: Stages in which a match that is no longer eligible stays on the open worklist (with a warning): the patient has
#: been approached or has consented, so someone must act on it rather than see it vanish.
KEPT_VISIBLE_STAGES: tuple[str, ...] = ("approached", "consented")
