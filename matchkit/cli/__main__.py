"""``python -m matchkit.cli``."""

from matchkit.cli.commands import main

if __name__ == "__main__":
    main()
