"""Typer commands: parse arguments, call the library, render results. No algorithms live here."""
