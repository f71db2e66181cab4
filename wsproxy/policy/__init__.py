"""Pure policy: who a key belongs to, how fast they may go, where a model is routed."""
