"""PTF: the pipelined dataflow runtime (thesis chapter 4), without TensorFlow.

Vocabulary (the thesis' words)
------------------------------
*Feed*: the unit flowing between stages (usually one AGD chunk). Every feed
carries *metadata*, a stack of ``(batch id, arity)`` rows, plus its position
in the batch at each level; gates read only the innermost row. A *batch* is all
feeds of one request. A *stage* is a function over one feed (or over an
aggregate of S feeds of one batch) run by N replica threads; stages never see
metadata. A *gate* buffers feeds between stages; a *credit link* lets a
downstream gate bound the open batches at an upstream gate; a *local pipeline*
is a replicated sub-chain fed with *partitions* of a batch.

Usage
-----
::

    spec = PipelineSpec.chain("align", [
        StageSpec("read", read_chunk, replicas=2),
        StageSpec("align", align_chunk, replicas=2),
        StageSpec("write", write_chunk),
    ], capacity=8, credits=4)
    with Pipeline(spec) as pipeline:            # validate, build, start
        handle = pipeline.submit(chunk_keys)     # -> BatchHandle
        results = handle.result(timeout=600)     # results[k] is feed k's output
    # or YAML: PipelineSpec.from_yaml(path), stages named "package.module:function"
    pipeline.stats()                             # gates, credits, stage busy time, progress

    # streaming ingress: the arity is known only when the source ends
    stream = pipeline.open_batch()               # -> StreamingBatch
    for chunk in source:
        stream.put(chunk)                        # flows through the stages at once
    handle = stream.close()                      # declares the arity; -> BatchHandle
    handle.add_done_callback(fn)                 # fn(handle) from the finishing thread

A stage function takes a payload (``aggregate=S``: the list of S payloads of
positions kS..kS+S-1) and returns one payload. Per-request parameters travel
inside the payloads. Buffers come from a bounded :class:`ResourcePool`; a
stage that acquires one passes the :class:`PooledResource` downstream and a
later stage releases it, back to the pool it came from. Feeds of failed or
cancelled batches are disposed of by the runtime (their pooled resources are
released). A pool blocks when empty, so size it above the number of pooled
payloads that can wait inside the pipeline (gate capacities + replicas, plus
whole groups at aggregate gates), or an aggregate can wait on a buffer held by
a feed that is itself waiting for that group.

Gate semantics
--------------
* Operations run first-come-first-served under one lock per gate.
* Dequeues prefer the oldest open batch; within a batch plain dequeue is FIFO.
* Aggregate dequeue of size S: group k of a batch of arity A is exactly the
  feeds at positions kS..kS+S-1 (the last group short); the aggregate feed has
  arity ceil(A/S) and position k. Deterministic grouping keeps results equal
  to a sequential run and keeps the feed -> result mapping explicit.
* Ingress: batch enqueue (returns the id), or streaming: one feed at a time
  with the arity open (``None`` in the metadata row) until the source ends and
  the pipeline *declares* it at every gate (downstream first). While a batch's
  arity is open an aggregate group completes only when full, the last (short)
  group and a batch dequeue only once the arity is declared; an empty stream
  finishes with ``[]``. Egress: batch dequeue by id, done by the pipeline as
  soon as the batch is whole; it resolves the BatchHandle.
* Partition dequeue (a gate feeding a local pipeline) = aggregate dequeue of P
  returning a :class:`Partition`; partition enqueue pushes a ``(partition id,
  n)`` row at the local pipeline's first gate; the last gate's partition
  dequeue pops it and emits one outer feed (payload: the ordered results).
  A future global gate is the same gate whose partition consumers are remote.

Bounding and the deadlock of thesis §4.4.3
------------------------------------------
The deadlock: a gate with a full, bounded buffer in front of an aggregate
dequeue of S, where no open batch has a complete group buffered — neither the
enqueue (full) nor the dequeue (no group) can proceed. The builder
(:func:`persona.ptf.spec.plan`) accepts only configurations where it cannot
happen, by these rules:

R1  The pipeline is one chain ingress -> ... -> egress; each gate has one
    consumer (a stage or a local pipeline) and one producer.
R2  Only a gate whose consumer dequeues plainly may have a capacity: any
    buffered feed satisfies a plain dequeue, so a full gate always has one to give.
    Gates before aggregate, partition and batch dequeues are never full (no
    capacity); the ingress (whole batches) and egress never have one.
R3  Credit link U -> D: U strictly upstream of D in the same chain (never
    between a local pipeline and the outer level); credits >= 1; U has no
    capacity, so the remaining feeds of a batch holding a credit can always
    enter U even when credit-less batches pile up there; a gate gives credits
    to at most one gate and takes them from at most one; links are nested or
    disjoint.
R4  Every gate other than ingress/egress is bounded: it has a capacity, or it
    lies inside a credit link (U < gate <= D), so it holds feeds of at most
    ``credits`` batches. Local pipelines bound their partitions in flight with
    their own credits, and their first/last gates are bounded by them.

Why no deadlock then: enqueues block only at capacity gates (R2), whose plain
consumer can always take a feed; the consumer's own enqueue goes to a gate
that drains by the same argument, down to the egress, which never blocks. A
credit held by batch b returns when D closes b; all of b's feeds are admitted
at U (admission is per batch), every gate between U and D drains (above), and
aggregate groups of b complete because none of b's feeds can be held back
upstream (U never blocks, R3). Nested links follow by induction.

Failures and cancellation
-------------------------
An exception in a stage fails that feed's user batch: its handle raises a
:class:`persona.errors.StageError` naming stage, batch and feed; every gate
drops the batch's buffered feeds and discards late arrivals; its credits
return; other batches run on. ``BatchHandle.cancel()`` does the same with
:class:`persona.errors.BatchCancelled` (it returns at once).

A failed batch finishes only once *quiescent*: its handle's ``result()`` /
``exception()`` return only when no stage call (at any level, local pipelines
included) is running on one of its feeds. From the failure on, no stage call
of the batch starts, and a feed whose call ends after it is disposed of, never
enqueued downstream. So a caller may undo the batch's side effects (delete
the chunk files a write stage stored) as soon as ``result()`` raises, while
the pipeline serves other batches. Each replica publishes the batch of the
feed it holds in a slot of :class:`~persona.ptf.occupancy.Occupancy` (stored
by the dequeue under the gate lock, cleared once the feed is in the next
gate); the failer drops the batch at every gate, records the slots holding it
and the last of them to leave finishes the handle. At that moment no feed of
the batch exists outside the gates, so every gate forgets it. A streaming
batch's producer stops on the PipelineError its next ``put`` raises.

A long-running pipeline stays flat: a finished batch leaves no state behind.
Gate records close with their batch, credits come back, and a failed batch's
id is forgotten by every gate the moment it is quiescent (from then on no feed
of it can arrive anywhere). :meth:`Pipeline.state_entries` counts what is left
(0 when idle); ``bench/bench_ptf.py`` soaks 10,000 batches through one pipeline.

Design (thesis names -> modules)
--------------------------------
Bookkeeping is pure synchronous code tested deterministically with Hypothesis:
:class:`~persona.ptf.gate_state.GateState` (buffer, accounting, operations as
non-blocking ``try_*`` methods), :class:`~persona.ptf.credits.CreditLink` (one
class for gate links, local pipelines and, later, global gates),
:class:`~persona.ptf.batches.BatchTable` (the pipeline's batches: submitted,
streaming, failed, finished) and its :class:`~persona.ptf.occupancy.Occupancy`
(which thread holds a feed of which batch). Threads and locks wrap them:

* feed, metadata, partition: :mod:`persona.ptf.feed` (``metadata`` re-exports it)
* gate: :class:`~persona.ptf.gate.Gate` in :mod:`persona.ptf.gate` (lock +
  conditions around a GateState; ``channel`` re-exports it)
* stage: :mod:`~persona.ptf.stage`; local pipeline: :mod:`~persona.ptf.local`
* credit link: :mod:`~persona.ptf.credits`; pipeline, batch handle, streaming
  batch: :mod:`~persona.ptf.pipeline`

No thread ever holds two gate locks.
"""
from persona.ptf.batches import BatchTable
from persona.ptf.credits import CreditLink, CreditLinkState
from persona.ptf.feed import Feed, Partition
from persona.ptf.gate import Gate, GateClosed, GateTimeout
from persona.ptf.gate_state import GateState
from persona.ptf.introspection import metric_samples
from persona.ptf.pipeline import BatchHandle, Pipeline, StreamingBatch
from persona.ptf.pool import Buffer, PooledResource, ResourcePool, buffer_pool
from persona.ptf.spec import (CreditLinkSpec, GateSpec, LocalPipelineSpec, PipelineSpec,
                              StageSpec, plan)

__all__ = [
    "BatchHandle", "BatchTable", "Buffer", "CreditLink", "CreditLinkSpec", "CreditLinkState",
    "Feed", "Gate", "GateClosed", "GateSpec", "GateState", "GateTimeout", "LocalPipelineSpec",
    "Partition", "Pipeline", "PipelineSpec", "PooledResource", "ResourcePool", "StageSpec",
    "StreamingBatch", "buffer_pool", "metric_samples", "plan",
]
