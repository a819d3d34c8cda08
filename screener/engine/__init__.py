"""The streaming screening engine: consume ``ehr.events``, keep patient state, screen, record matches.

One :class:`Engine` is one member of the consumer group. Each loop iteration (:meth:`Engine.step`):

1. polls a micro-batch (up to ``batch_max_records`` records or ``batch_max_ms``);
2. validates every record (:func:`screener.ingest.decode_batch`: the whole batch at once, with exactly the
   verdicts of :func:`screener.events.parse_event`); a bad one goes to the dead-letter topic
   with the reason, the original payload and its topic/partition/offset;
3. applies the events to the state of the partition they came from (:meth:`screener.state.LiveState.apply`:
   :func:`screener.state.apply_frames` on just the patients the batch can affect, found through the state's
   sorted indexes, so a batch costs the same with ten patients in state or a million), keeping only the facts
   some loaded study can use;
4. re-screens only the touched patients against the *open* studies (``Study.is_open(now)``); with
   ``Engine.screen_affected_only`` (off by default), each only against the studies its changes can affect
   (:mod:`screener.engine._affects`: the studies that read an added or removed fact or a changed person column;
   time-based changes are the scheduled full re-screen's);
5. drops do-not-contact (the event flag or the store's register) and deceased patients (counted, never named);
6. writes the matches (outcome ``eligible`` or ``possible``) with :meth:`MatchStore.record_matches`, which is
   idempotent per (study, patient), and publishes the new ones to ``screening.matches``;
7. then, and only then, commits the offsets.

A crash at any point repeats work from the last committed offsets; the store's uniqueness makes every match
exactly-once in effect. The ``screening.matches`` topic carries what ``record_matches`` returned as new; once
the broker acknowledges them the store marks them published. A crash (or a failed publish) between the store
write and that acknowledgement leaves matches unpublished in the store, and a sweep (at start, then every
``matches_sweep_interval_s``) publishes every match unpublished for ``matches_sweep_settle_s``. So the topic loses no
match; it may carry one twice (a crash after the acknowledgement but before the mark), so its consumers key on
(study_id, patient_id), as the store does.

Threads: the loop (:meth:`Engine.run`) overlaps a backlog's batches. Steps 1-2 run on the consumer's thread; steps
3-6 of a batch of at least ``overlap_min_records`` records run on a batch thread (mostly Polars, which releases
the GIL) while the consumer's thread polls and validates the next batch, and step 7 runs back on the consumer's
thread once the batch thread is done. Every consumer call and rebalance callback stays on the consumer's thread
(kafka-python's consumer is not thread-safe); a rebalance, a rules change, a re-screen, the sweep, a snapshot
and :meth:`Engine.close` first wait for the batch in flight; records polled before a seek (a failed batch's
recovery, a rebuild) are dropped and read again from the new position. Smaller batches (a steady feed) are done
before the next poll: overlapping them only slows each one down.

State is per partition, and every applied fact is kept in the history store (:mod:`screener.history`, at
``SCREENER_STATE_URL``; :mod:`screener.engine.history`): a batch goes there once it is screened and recorded, at
the next snapshot time, on the snapshot thread. On assignment a partition is restored from its local snapshot (when
it is at the store's offset and of the same rules), else from the store (a lazy scan pruned to the current rules),
else, when the store has nothing for it or is damaged, by replaying the topic from its beginning (logged and
counted in ``screener_history_replays_total``). Records below the group's committed offset are only applied; when
the partition catches up, every patient they touched is screened once, so a half-restored history never produces a
match (and a partition whose store is ahead of the group's offset, as after a backfill, is screened once whole).
Snapshots are taken on revocation, on close and every ``snapshot_interval_s``, always *after* the commit; the
periodic ones are written by a background thread from an immutable view of the state (tail files and hard links).

Time: every ``rescreen_interval_s`` of the engine's clock the whole state is screened (birthdays, windows
expiring, studies opening). ``rules_dir`` is polled every ``rules_poll_s``; a file that fails to load is
logged and counted and the study keeps its previous version; an added or changed study makes every assigned
partition build its new view from the history store in a low-priority worker process while batches go on under
the old studies and view (:mod:`screener.engine.rebuild`); at the swap everyone is screened against only the
added or changed studies. Matches follow the
patient (:mod:`screener.engine.follow`): a known match that a re-screen rules out is sent as ``ineligible``.

Roles (mixins of :class:`Engine`, one module each): ``loop`` (the loop), ``batch`` (one micro-batch), ``partitions``
(assignment, revocation, commits, snapshots), ``history`` (the store), ``rebuild`` (a rule change's new views,
loaded by ``views``), ``rules`` (hot reload, pruning),
``rescreen`` (chunked re-screens), ``matches`` (the worklist store and matches topic), ``follow`` (ineligible rows)
and ``health`` (``/healthz``). ``base`` holds the :class:`Consumer`/:class:`Producer` protocols at the edge.

Choices where the issue is silent: facts are kept for studies that are open *or not yet open* (so a study that
opens tomorrow has history), and dropped for closed ones; the time horizon is the longest window of those
studies. Logs carry batch numbers, partitions, offsets, counts and timings, never a patient identifier.
"""

from screener.engine.base import Consumer, Producer
from screener.engine.loop import Engine
from screener.engine.matches import _default_screen, matches_from_screen
from screener.vocab import MATCH_OUTCOMES  # re-exported (the engine stores these outcomes)

__all__ = ["MATCH_OUTCOMES", "Consumer", "Engine", "Producer", "_default_screen", "matches_from_screen"]
