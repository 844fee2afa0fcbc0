"""C2SP signed notes (Go ``sumdb/note`` key formats). The implementation lives with the SDK, which
verifies checkpoints too; the gateway signs manifests and checkpoints through these names."""

from veilgate._internal.note import (
    MAX_NOTE_BYTES,
    MAX_SIGNATURES,
    NoteInvalid,
    NoteSigner,
    NoteVerifier,
    key_hash,
    open_note,
)

__all__ = ["MAX_NOTE_BYTES", "MAX_SIGNATURES", "NoteInvalid", "NoteSigner", "NoteVerifier", "key_hash", "open_note"]
