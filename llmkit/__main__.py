"""The `llmkit` command, also as `python -m llmkit` (how the processes of a launched run start)."""

from llmkit.runtime import run_command


def main() -> None:
    run_command(command_line)


def command_line() -> None:
    # Imported here, inside run_command: its exit handler is registered before those of the
    # libraries the command line imports, so it runs after theirs.
    from llmkit.cli import app

    app()


if __name__ == "__main__":
    main()
