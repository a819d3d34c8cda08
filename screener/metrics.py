"""Prometheus metrics. One :class:`Metrics` object per process, built on an injectable registry.

Naming follows Prometheus conventions: ``screener_`` prefix, base units (seconds, bytes), ``_total`` counters,
histograms for latencies. No label ever carries a patient-level value: labels are study ids, settings, stages,
sources, kinds, reasons, partitions, IMD quintiles and ONS high-level ethnic groups only.

Tests pass ``registry=CollectorRegistry()`` and read ``registry.get_sample_value(...)``.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["WEST_YORKSHIRE_ETHNICITY", "WEST_YORKSHIRE_IMD_QUINTILE", "Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: Census 2021, West Yorkshire, share of usual residents by ONS high-level ethnic group.
WEST_YORKSHIRE_ETHNICITY = {"white": 0.766, "asian": 0.158, "black": 0.031, "mixed": 0.025, "other": 0.020}
#: Share of West Yorkshire residents by national IMD 2019 quintile (1 = most deprived), approximate.
WEST_YORKSHIRE_IMD_QUINTILE = {"1": 0.36, "2": 0.20, "3": 0.17, "4": 0.15, "5": 0.12}


class Metrics:
    """Every metric screener exports. Attributes are prometheus-client collectors."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else REGISTRY
        self.registry = r
        # --- ingest and engine ---------------------------------------------------------------------------
        self.events_consumed = Counter(
            "screener_events_consumed_total", "Events consumed from ehr.events", ["source", "kind"], registry=r
        )
        self.events_published = Counter(
            "screener_events_published_total", "Events published by connectors", ["connector"], registry=r
        )
        self.connector_unmapped = Counter(
            "screener_connector_unmapped_total",
            "Source resources, segments or rows a connector did not map, by type (never silently skipped)",
            ["source", "type"],
            registry=r,
        )
        self.dead_letters = Counter(
            "screener_dead_letters_total", "Inputs sent to the dead-letter topic", ["stage", "reason"], registry=r
        )
        self.batch_duration = Histogram(
            "screener_batch_duration_seconds", "Wall time of one micro-batch", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "screener_batch_events",
            "Events per micro-batch",
            buckets=(1, 10, 100, 500, 1000, 5000, 10000, 50000),
            registry=r,
        )
        self.event_to_match_latency = Histogram(
            "screener_event_to_match_latency_seconds",
            "From an event's broker timestamp to its match being stored",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "screener_consumer_lag_records", "Records behind the log end", ["topic", "partition"], registry=r
        )
        self.patients_in_state = Gauge("screener_patients_in_state", "Patients held in state", registry=r)
        self.facts_in_state = Gauge("screener_facts_in_state", "Facts held in state", registry=r)
        self.screens = Counter("screener_screens_total", "Patient x study evaluations", ["trigger"], registry=r)
        self.rescreen_duration = Histogram(
            "screener_rescreen_duration_seconds",
            "Wall time of a full re-screen",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.do_not_contact_suppressed = Counter(
            "screener_do_not_contact_suppressed_total",
            "Matches withheld for do-not-contact patients",
            ["study"],
            registry=r,
        )
        self.deceased_suppressed = Counter(
            "screener_deceased_suppressed_total",
            "Matches withheld because the patient has died",
            ["study"],
            registry=r,
        )
        # --- rules ---------------------------------------------------------------------------------------
        self.rule_load_errors = Counter(
            "screener_rule_load_errors_total", "Rule files that failed to load", ["file"], registry=r
        )
        self.rules_loaded = Gauge("screener_rules_loaded", "Rule files currently loaded", registry=r)
        self.studies_open = Gauge("screener_studies_open", "Studies open now", registry=r)
        # --- matches and the funnel ----------------------------------------------------------------------
        self.matches = Counter(
            "screener_matches_total", "New matches stored", ["study", "outcome", "setting"], registry=r
        )
        self.funnel_actions = Counter(
            "screener_funnel_actions_total", "Worklist actions recorded", ["study", "setting", "stage"], registry=r
        )
        self.funnel_by_imd = Gauge(
            "screener_funnel_imd_quintile_patients",
            "Patients at a funnel stage by IMD quintile",
            ["stage", "imd_quintile"],
            registry=r,
        )
        self.funnel_by_ethnicity = Gauge(
            "screener_funnel_ethnic_group_patients",
            "Patients at a funnel stage by ONS high-level ethnic group",
            ["stage", "ethnic_group"],
            registry=r,
        )
        self.population_ethnicity = Gauge(
            "screener_population_ethnic_group_ratio",
            "Reference population share (Census 2021, West Yorkshire)",
            ["ethnic_group"],
            registry=r,
        )
        self.population_imd = Gauge(
            "screener_population_imd_quintile_ratio",
            "Reference population share by IMD quintile",
            ["imd_quintile"],
            registry=r,
        )
        for group, share in WEST_YORKSHIRE_ETHNICITY.items():
            self.population_ethnicity.labels(group).set(share)
        for quintile, share in WEST_YORKSHIRE_IMD_QUINTILE.items():
            self.population_imd.labels(quintile).set(share)
        # --- studies: time and target --------------------------------------------------------------------
        self.study_target = Gauge(
            "screener_study_target_participants", "Recruitment target", ["study", "sponsor"], registry=r
        )
        self.study_enrolled = Gauge(
            "screener_study_enrolled_participants",
            "Participants enrolled",
            ["study", "sponsor", "setting"],
            registry=r,
        )
        self.study_opens = Gauge("screener_study_opens_timestamp_seconds", "Study opening time", ["study"], registry=r)
        self.study_closes = Gauge(
            "screener_study_closes_timestamp_seconds", "Study closing time", ["study"], registry=r
        )
        # --- outbound ------------------------------------------------------------------------------------
        self.delivery_attempts = Counter(
            "screener_delivery_attempts_total", "Outbound delivery attempts", ["channel"], registry=r
        )
        self.delivery_failures = Counter(
            "screener_delivery_failures_total", "Outbound delivery failures", ["channel"], registry=r
        )
        self.outbox_pending = Gauge(
            "screener_outbox_pending_messages", "Outbound messages waiting", ["channel"], registry=r
        )
        # --- connector listeners -------------------------------------------------------------------------
        self.mllp_connections = Gauge("screener_mllp_connections", "Open MLLP connections", registry=r)
        self.mllp_buffered = Gauge(
            "screener_mllp_buffered_bytes", "Bytes buffered by all MLLP connections together", registry=r
        )
        self.mllp_dropped = Counter(
            "screener_mllp_connections_dropped_total",
            "MLLP connections closed by a listener limit (idle, oversize, busy, max_connections, slow_reader)",
            ["reason"],
            registry=r,
        )
        self.broker_up = Gauge(
            "screener_connector_broker_up", "1 when the connector's last broker probe succeeded, else 0", registry=r
        )
        # --- history store and partition restores (appended by the history work) -------------------------
        self.partition_restores = Counter(
            "screener_partition_restores_total",
            "Partitions taken on, by where their state came from (snapshot, history, replay)",
            ["source"],
            registry=r,
        )
        self.history_replays = Counter(
            "screener_history_replays_total",
            "Partitions replayed from Kafka because their history store was missing or damaged",
            ["reason"],
            registry=r,
        )
        self.snapshots_skipped = Counter(
            "screener_snapshots_skipped_total", "Snapshots found but not used, by reason", ["reason"], registry=r
        )
        self.history_writes = Counter(
            "screener_history_appends_total", "Segments appended to the history store", ["outcome"], registry=r
        )
        self.rules_rebuild_duration = Histogram(
            "screener_rules_rebuild_seconds",
            "Rule change: building the new hot view from the history store (background)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.health = Gauge(
            "screener_engine_healthy", "1 while the engine reaches the broker and holds its group, else 0", registry=r
        )
        self.dead_letters_replayed = Counter(
            "screener_dead_letters_replayed_total",
            "Invalid records read again below the group's committed offset: not dead-lettered a second time",
            registry=r,
        )
        self.matches_closed = Counter(
            "screener_matches_ruled_out_total",
            "Ineligible rows sent for known matches that a re-screen ruled out (closed as no longer eligible)",
            registry=r,
        )
