"""Text extraction from attachments, bounded in time and memory.

Terms: a *part* is one decoded MIME leaf or one member of an archive in
it; its *kind* is the format a reader understands (``pdf``, ``docx``,
``zip``, ...); a *reading* is the text, inner file names and defects a
reader returns; the *sandbox* is the pool of worker processes that runs
readers of binary formats under a deadline and a memory cap.  A part
read only in part, or not at all, leaves a defect starting with
``partially indexed:`` and never stops the rest of the message.

Modules: :mod:`~.reading` (limits and results), :mod:`~.transfer`
(transfer encodings), :mod:`~.charsets`, :mod:`~.documents` (single
documents), :mod:`~.archives` (zip, TNEF), :mod:`~.formats` (kinds and
dispatch), :mod:`~.sandbox` (workers), :mod:`~.attachments` (one
message's attachments within its budgets) and :mod:`~.parallel` (whole
messages extracted in a pool of workers, for the follower).
"""
