"""The JSON API's models (its OpenAPI description)."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, Field

from screener.alerts.store import ACTIONS


class Criterion(BaseModel):
    name: str
    label: str | None = Field(default=None, description="The criterion in plain words (rule file label)")
    expires_at: datetime | None = Field(default=None, description="When a windowed criterion that holds stops holding")
    group: str = Field(description="include | exclude")
    result: bool | None = Field(description="true, false, or null when unknown (the nurse must verify)")
    evidence: str | None = None
    to_verify: bool


class ActionRecord(BaseModel):
    action: str
    reason: str | None = None
    until: date | None = None
    note: str | None = None
    username: str
    at: datetime


class MatchSummary(BaseModel):
    token: str = Field(description="Opaque match id used in URLs")
    study_id: str
    title: str
    patient_id: str = Field(description="Hospital patient id, for the logged-in team member only")
    outcome: str
    stage: str
    urgency: int = Field(description="0 acute, 1 study closing soon, 2 other")
    setting: str | None = None
    matched_at: datetime
    snoozed_until: date | None = None
    reopened_at: datetime | None = None
    to_verify: list[str]
    location: str | None = Field(default=None, description="Ward, bed or clinic of the latest visit")
    no_longer_eligible: bool = Field(default=False, description="A later screen ruled the patient out")
    upgraded_at: datetime | None = Field(default=None, description="When the match went from possible to eligible")
    closed_at: datetime | None = Field(default=None, description="When the patient was found no longer eligible")
    changed_at: datetime | None = Field(default=None, description="When the engine last changed outcome or evidence")


class MatchDetail(MatchSummary):
    rule_hash: str
    reason: str | None = None
    previous_outcome: str | None = None
    criteria: list[Criterion]
    ruled_out: list[Criterion] = Field(default=[], description="The criteria that make it no longer eligible")
    history: list[ActionRecord]


class ActionIn(BaseModel):
    action: str = Field(description=" | ".join(ACTIONS))
    reason: str | None = Field(default=None, description="coded reason for not_eligible and declined")
    until: date | None = Field(default=None, description="snooze until this date (after today)")
    note: str | None = None


class DncChange(BaseModel):
    add: list[str] = []
    remove: list[str] = []


class DncResult(BaseModel):
    added: int
    removed: int
    total: int


class DncEntry(BaseModel):
    patient_id: str
    added_at: datetime
    added_by: str
    source: str | None = None


class AuditEntry(BaseModel):
    at: datetime
    username: str
    action: str
    object_type: str | None = None
    object_id: str | None = None
    detail: str | None = Field(default=None, description="JSON")


class ContactOut(BaseModel):
    name: str | None = None
    role: str | None = None
    email: str | None = None
    phone: str | None = None


class StudyOut(BaseModel):
    id: str
    title: str
    summary: str
    sponsor: str | None
    settings: list[str]
    opens: date | None
    closes: date | None
    criteria_markdown: str | None = Field(description="The rule file rendered for staff (codes included)")
    lay_summary: str | None = None
    who_can_take_part: list[str] = Field(default=[], description="Inclusion criteria in plain words")
    who_cannot_take_part: list[str] = Field(default=[], description="Exclusion criteria in plain words")
    sites: list[str] = []
    contacts: list[ContactOut] = []
    pis_url: str | None = None


class Me(BaseModel):
    username: str
    role: str
    teams: list[str]


class FunnelRow(BaseModel):
    study_id: str
    stage: str
    n: int
