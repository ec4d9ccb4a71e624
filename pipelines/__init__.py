"""End-to-end pipelines composed from dedup's stages: definitions a data team copies and changes.

Each is a module with a `pipeline(...)` function (call it from Python) and a typer command (run the file)."""
