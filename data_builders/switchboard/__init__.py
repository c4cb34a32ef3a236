"""Switchboard-1 Release 2 with the ms98 word alignments (see data_builders/README.md)."""

from data_builders.switchboard.switchboard_dataset_builder import Switchboard, SwitchboardConfig
