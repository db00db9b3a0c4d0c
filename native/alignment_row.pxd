# The memory layout of persona.agd.records.ALIGNMENT_DTYPE (a packed numpy
# structured dtype), shared by every kernel that reads or writes alignment rows.
# Declarations only: cimporting it adds no runtime module.
from libc.stdint cimport uint32_t, int32_t, int64_t

cdef packed struct AlnRec:
    uint32_t flag
    int32_t mapq
    int32_t ref_index
    int64_t position
    int32_t next_ref_index
    int64_t next_position
    int64_t template_length
