from carbonflow.cli import app

app(prog_name="carbonflow")
