"""KV-cache sizes, without MXNet: the engine allocates by these, the scheduler and the light
workers budget by them."""

CACHE_BUCKET = 64  # capacities are multiples of this, so that batches of similar length reuse step graphs


def capacity_for(length, future_slots):
    """Cache slots a batch of `length` filled slots gets to feed `future_slots` more tokens."""
    return -(-(length + future_slots) // CACHE_BUCKET) * CACHE_BUCKET
