"""The embedded default corpus: procedurally generated two-speaker dialogs (see README.md)."""

from data_builders.synthetic_dialogs.synthetic_dialogs_dataset_builder import (
    SyntheticDialogs, SyntheticDialogsConfig)
