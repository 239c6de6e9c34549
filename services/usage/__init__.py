"""Per-tenant usage ledger: gateways buffer usage (:mod:`.recorder`), one Serve
deployment (:mod:`.deployment`) stores it in SQLite (:mod:`.store`) for ``GET /v1/usage``."""
