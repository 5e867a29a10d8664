"""Writes bash and zsh completion for vmsnap, generated from its parser.

usage: python tools/completion.py OUTDIR
       -> OUTDIR/vmsnap (bash-completion) and OUTDIR/_vmsnap (zsh, for fpath)

Run at build time (make completion, the Debian package): shtab is a build
tool here, vmsnap itself does not depend on it.  The parser is read from the
source tree (vmsnap_native.cli.build_parser), so the completion always has
the options of the vmsnap it ships with.
"""

import argparse
import os
import sys

import shtab

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from vmsnap_native import agents  # noqa: E402
from vmsnap_native.cli import build_parser  # noqa: E402

# what each option's value is, for the shell to offer the right words
FILES = {"--config", "--log-file", "--metrics-file", "--freeze-at"}
DIRECTORIES = {"--mount"}
# `run`'s snapshot command, the words after `--`: both shells offer command
# names there.  zsh needs an action for this positional in any case: without
# one it lists `--dry-run` for `run --dry` instead of inserting it.
SNAPSHOT_COMMAND = {"zsh": "_command_names -e", "bash": "_shtab_vmsnap_compgen_commands"}
# defined here, not as a shtab preamble (shtab 1.7 leaves those out); compgen
# -c names a command once per PATH directory that has it
BASH_FUNCTIONS = """
_shtab_vmsnap_compgen_commands() {
  compgen -c -- "$1" | sort -u
}
"""
# zsh's _arguments ends a command's options at `--` only with -S, as
# argparse does: without it, the words after `--` are not the snapshot
# command to zsh.  Each command's branch of the case (not the top level,
# which would take the `--` away from the command)
ZSH_ARGUMENTS = ") _arguments -C -s "
ZSH_ARGUMENTS_ENDING_AT_DASHDASH = ") _arguments -C -s -S "


def _annotate(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _annotate(sub)
        elif FILES.intersection(action.option_strings):
            action.complete = shtab.FILE
        elif DIRECTORIES.intersection(action.option_strings):
            action.complete = shtab.DIRECTORY
        elif action.dest == "agent":
            action.choices = list(agents.AGENTS)
        elif action.dest == "snapshot_cmd":
            action.complete = SNAPSHOT_COMMAND


def _zsh(text: str) -> str:
    """shtab's zsh completion, with `--` ending each command's options."""
    if ZSH_ARGUMENTS not in text:
        raise SystemExit("tools/completion.py: shtab's zsh output has no %r any more: "
                         "see ZSH_ARGUMENTS" % ZSH_ARGUMENTS)
    return text.replace(ZSH_ARGUMENTS, ZSH_ARGUMENTS_ENDING_AT_DASHDASH)


def main(argv) -> int:
    if len(argv) != 2:
        sys.stderr.write(__doc__)
        return 2
    out = argv[1]
    os.makedirs(out, exist_ok=True)
    parser = build_parser()
    _annotate(parser)
    for shell, name in (("bash", "vmsnap"), ("zsh", "_vmsnap")):
        text = shtab.complete(parser, shell=shell)
        if shell == "zsh":
            text = _zsh(text)
        else:
            text = text.rstrip("\n") + "\n" + BASH_FUNCTIONS
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
