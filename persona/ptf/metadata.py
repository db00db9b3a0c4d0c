"""Compatibility name: feeds and their metadata live in :mod:`persona.ptf.feed`."""
from persona.ptf.feed import (Feed, MetaRow, Partition, aggregate_arity, group_size, new_batch_id,
                              pop_partition, push_partition)

__all__ = ["Feed", "MetaRow", "Partition", "aggregate_arity", "group_size", "new_batch_id",
           "pop_partition", "push_partition"]
