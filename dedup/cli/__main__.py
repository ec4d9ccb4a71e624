from dedup.cli import app

app()
