"""PostgreSQL store: pool, migrations, and one module per table that owns its SQL."""
