"""``veilgate bench``: every hot path measured against a baseline taken in the same run."""
