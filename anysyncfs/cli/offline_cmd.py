"""(being written)"""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                space_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pass
