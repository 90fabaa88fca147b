from llmkit.cli import app

app()
