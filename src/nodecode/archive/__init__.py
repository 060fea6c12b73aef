"""A compressed photo archive: ingest -> index from latents -> search and view (SQLite or PostgreSQL, HTTP + page)."""
