"""Dialects: how a Responses request is spoken to each kind of upstream, and how its stream is
turned back into Responses events. Pure code: no I/O, no awaits, no clock."""
