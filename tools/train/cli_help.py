"""The --help layout shared by the training tools."""
import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the docstring's layout; shows every option's default unless its help already speaks of one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += f" (default: {action.default})"
        return text
