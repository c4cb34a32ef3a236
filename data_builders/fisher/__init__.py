"""Fisher English Part 1 (see data_builders/README.md)."""

from data_builders.fisher.fisher_dataset_builder import Fisher
