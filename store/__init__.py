"""SQLModel tables and the queries over them; the only place SQL is written."""
