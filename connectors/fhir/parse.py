"""FHIR R4 JSON -> canonical events. Pure: no HTTP, no Kafka.

Accepted payloads: a single resource; a Bundle of type batch, transaction, collection, searchset, history or
message (entries' ``resource`` are read, ``request``-only entries such as DELETE are ignored); an R4 backport
Subscription notification (a ``history`` Bundle whose first entry is the ``SubscriptionStatus`` Parameters:
that entry is skipped, the rest are read). Resource types turned into events (the field-by-field table is in
``docs/connectors.md``):

========================  ========================================================================================
Patient                   ``person`` (+ ``death``): :mod:`connectors.fhir._admin`
Encounter                 ``visit`` with ``encounter_id``, class, period, location: :mod:`connectors.fhir._admin`
Condition                 ``condition``; clinicalStatus / verificationStatus / abatement -> status, ``ended_at``
Observation               ``measurement`` per valueQuantity (and per component) with the referenceRange;
                          ``observation`` for text/coded values (``value_code``); method -> qualifiers
Procedure                 ``procedure``; preparation -> planned, not-done skipped
ServiceRequest            ``procedure`` not yet done: intent plan/proposal -> planned, order -> ordered
AllergyIntolerance        ``allergy`` (category, type, criticality and reaction severity as qualifiers)
Immunization              ``immunization`` (dose, route); not-done skipped
MedicationRequest,        ``drug`` with dose, route, period and status: :mod:`connectors.fhir._medication`
MedicationStatement,
MedicationAdministration
========================  ========================================================================================

Every fact carries the id of the Encounter its ``encounter`` reference names (``encounter_id``). Every
resource may carry its care setting and site as ``meta.tag`` codings (a tag whose code is one of hospital,
community, primary-care, home; a tag whose system ends in ``/site``); these win over inference. Other resource
types inside a Bundle (Organization, Claim, ...) are counted per type in :attr:`ParsedPayload.skipped` (the
commands print them and count ``screener_connector_unmapped_total``); a lone resource of another type is
rejected. The patient id is the last path segment of the subject reference (``Patient/123`` and Synthea's
``urn:uuid:...`` both work); one longer than 64 characters is rejected, never truncated.

Bundles and errors: a ``transaction`` is atomic: any invalid entry rejects the whole payload with a
:class:`FHIRReject` naming the resource and the FHIRPath-like location (``Bundle.entry[3].resource.subject``).
In every other Bundle type an invalid entry is refused on its own (:attr:`ParsedPayload.rejected`, which the
endpoint and the file loader dead-letter) and the rest is accepted. A ``medicationReference`` that cannot be
resolved in the payload refuses only its own entry in every Bundle type, transactions included: it is a
reference screener cannot follow, not an invalid resource.

Versions: a resource with ``meta.versionId`` N > 1 gets event id ``<base>-vN`` and ``corrects`` the id of
version N-1, so updates replace; an ``entered-in-error`` status emits a retraction of the base id.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from screener.events import Event

from ._admin import HANDLERS as _ADMIN
from ._base import SOURCE, FHIRReject, ParsedPayload, UnresolvedReference, tags
from ._clinical import HANDLERS as _CLINICAL
from ._medication import HANDLERS as _MEDICATION

__all__ = [
    "SOURCE",
    "SUPPORTED",
    "FHIRReject",
    "ParsedPayload",
    "UnresolvedReference",
    "parse_payload",
    "parse_resource",
]

_HANDLERS: dict[str, Any] = {**_ADMIN, **_CLINICAL, **_MEDICATION}
SUPPORTED = frozenset(_HANDLERS)
_ENTRY = re.compile(r"^Bundle\.entry\[(\d+)\]")
BUNDLE_TYPES = frozenset({"batch", "transaction", "collection", "searchset", "history", "message"})


def parse_resource(
    res: Any,
    path: str = "$",
    *,
    full_url: str | None = None,
    bundle: dict[str, dict[str, Any]] | None = None,
    now: datetime | None = None,
) -> list[Event] | None:
    """Events for one resource, or ``None`` for a resource type screener does not read.

    :raises FHIRReject: naming the resource type and location when the resource is invalid.
    """
    if not isinstance(res, dict):
        raise FHIRReject("a resource must be a JSON object", path=path, status=400)
    rtype = res.get("resourceType")
    if not isinstance(rtype, str):
        raise FHIRReject("resourceType is missing", path=f"{path}.resourceType", status=400)
    if rtype == "Bundle" and path != "$":
        return None
    if rtype not in SUPPORTED:
        return None
    handler = _HANDLERS[rtype]
    try:
        events: list[Event] = handler(res, path, rtype, full_url, bundle or {}, now or datetime.now(UTC))
        setting, site = tags(res)
        if setting or site:
            events = [
                e.model_copy(update={"setting": e.setting or setting, "site": e.site or site})
                if e.kind != "person"
                else e
                for e in events
            ]
        return events
    except FHIRReject:
        raise
    except (TypeError, AttributeError, ValueError, KeyError, IndexError) as exc:
        # an element of the wrong JSON type (a number where a list belongs, ...) somewhere we did not check
        raise FHIRReject(
            f"malformed element ({type(exc).__name__}: {str(exc)[:80]})", path=path, resource_type=rtype
        ) from exc


def _is_subscription_status(res: Any) -> bool:
    if not isinstance(res, dict):
        return False
    if res.get("resourceType") == "SubscriptionStatus":
        return True
    profiles = (res.get("meta") or {}).get("profile") or []
    return res.get("resourceType") == "Parameters" and any("subscription-status" in str(p) for p in profiles)


def iter_entries(payload: dict[str, Any]) -> Iterator[tuple[str, Any, str | None]]:
    """(path, resource, fullUrl) for each resource in a payload (the payload itself when not a Bundle)."""
    if payload.get("resourceType") != "Bundle":
        yield "$", payload, None
        return
    btype = payload.get("type")
    if not isinstance(btype, str) or btype not in BUNDLE_TYPES:
        raise FHIRReject(
            f"unsupported Bundle type {str(btype)[:30]!r}; expected one of {sorted(BUNDLE_TYPES)}",
            path="Bundle.type",
            resource_type="Bundle",
            status=400,
        )
    entries = payload.get("entry") or []
    if not isinstance(entries, list):
        raise FHIRReject("entry must be a list", path="Bundle.entry", resource_type="Bundle", status=400)
    for i, entry in enumerate(entries):
        epath = f"Bundle.entry[{i}]"
        if not isinstance(entry, dict):
            raise FHIRReject("an entry must be an object", path=epath, resource_type="Bundle", status=400)
        res = entry.get("resource")
        if res is None:
            continue  # e.g. a DELETE request entry, or a notification entry without a resource
        if i == 0 and btype == "history" and _is_subscription_status(res):
            continue
        if isinstance(res, dict) and res.get("resourceType") == "Bundle":
            for sub_path, sub, url in iter_entries(res):
                yield f"{epath}.resource.{sub_path.removeprefix('Bundle.')}", sub, url
            continue
        url = entry.get("fullUrl")
        yield f"{epath}.resource", res, url if isinstance(url, str) else None


def _medication_index(entries: list[tuple[str, Any, str | None]]) -> dict[str, dict[str, Any]]:
    index: dict[str, dict[str, Any]] = {}
    for _path, res, url in entries:
        if isinstance(res, dict) and res.get("resourceType") == "Medication":
            if isinstance(url, str) and url:
                index[url] = res
                index[url.removeprefix("urn:uuid:")] = res
            if isinstance(res.get("id"), str):
                index[f"Medication/{res['id']}"] = res
    return index


def parse_payload(payload: Any, *, now: datetime | None = None) -> ParsedPayload:
    """Events for a decoded JSON payload (resource or Bundle); see the module docstring for Bundle semantics.

    :raises FHIRReject: 400 for a payload that is not FHIR JSON, 422 for an invalid resource (a lone one, or
        any entry of a transaction except an unresolvable medicationReference).
    """
    if not isinstance(payload, dict):
        raise FHIRReject("the body must be a JSON object (a FHIR resource)", path="$", status=400)
    if "resourceType" not in payload:
        raise FHIRReject("resourceType is missing", path="$.resourceType", status=400)
    is_bundle = payload.get("resourceType") == "Bundle"
    out = ParsedPayload(bundle_type=payload.get("type") if is_bundle else None)
    entries = list(iter_entries(payload))
    index = _medication_index(entries)
    atomic = out.bundle_type == "transaction"
    out.entries = len(entries)
    # Medication resources are read (they give drug codes to the requests that reference them), not unmapped.
    for position, (path, res, url) in enumerate(entries):
        if isinstance(res, dict) and res.get("resourceType") == "Medication":
            out.resources += 1
            continue
        try:
            events = parse_resource(res, path, full_url=url, bundle=index, now=now)
        except FHIRReject as exc:
            if not is_bundle or (atomic and not isinstance(exc, UnresolvedReference)):
                raise
            found = _ENTRY.match(path)
            out.rejected.append((int(found.group(1)) if found else position, exc))
            out.rejected_resources.append(res)
            continue
        if events is None:
            rtype = str(res.get("resourceType")) if isinstance(res, dict) else "?"
            if not is_bundle:
                raise FHIRReject(
                    f"resource type {rtype[:40]} is not supported; send one of {sorted(SUPPORTED)}",
                    path="$.resourceType",
                    resource_type=rtype,
                )
            out.skipped[rtype[:40]] = out.skipped.get(rtype[:40], 0) + 1
            continue
        out.resources += 1
        out.events.extend(events)
    return out
